"""Publish on fabricated step outputs: the manifest's teacher figures, input accounting, what bound the
probe, the target check; and the run failing on teacher errors or a spent budget."""

from __future__ import annotations

import types

import pendulum
import pytest

from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.contracts import InputAccounting, PipelineSummary, ProbeSuccess, QACounts, ShardPlan, TokenCounts
from vlmprobe.io import JsonlWriter, RunLayout, exists, read_json, write_json
from vlmprobe.io.fs import join
from vlmprobe.params import defaults
from vlmprobe.probe.pipeline import summarize
from vlmprobe.publish.run import RunFailed, publish
from vlmprobe.sample.run import sample_keys
from fakes import RUN_DATE, fake_pipeline, fake_probe, fake_qa_stats, fake_rank, fake_success


def _teacher(requests, retries=0, rate_limited=0, prompt=0, output=0, thinking=0, cached=0, **gave_up):
    return {"requests": requests, "retries": retries, "rate_limited": rate_limited, "succeeded": requests - retries,
            "failed": sum(gave_up.values()), "gave_up": gave_up, "prompt_tokens": prompt, "output_tokens": output,
            "thinking_tokens": thinking, "cached_tokens": cached, "estimated_cost_usd": 0.0, "paused_s": 1.5,
            "quota": {"processes": 2}}


def _run(tmp_path, demo_parquet, *, probe_reasons=None, qa_reasons=(None, None), checked=False) -> RunLayout:
    """probe (2 ranks with teacher stats and pipelines), sample (2 shards) and QA stats, as the steps write them."""
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 6, "count:2": 4})
    success = ProbeSuccess.read(lay.probe_success)
    reasons = probe_reasons or {"teacher_http_503": 1}
    rows = success.counts.rows - 1 + sum(reasons.values())
    ranks = [fake_rank(lay, 0, teacher=_teacher(20, retries=3, rate_limited=2, prompt=10_000, output=2_000,
                                                thinking=500, cached=1_000),
                       pipeline=fake_pipeline(10.0, 2.0, 7.0, "teacher")),
             fake_rank(lay, 1, teacher=_teacher(18, retries=1, prompt=9_000, output=1_500, thinking=300),
                       pipeline=fake_pipeline(9.0, 2.5, 6.0, "teacher"))]
    fake_success(lay, success.failure_files, verified=success.counts.verified, error_reasons=reasons,
                 counts=success.counts.model_copy(update={"errors": sum(reasons.values()), "rows": rows}),
                 input=InputAccounting(files=4, files_lost=1, files_lost_rows_unknown=0, row_groups=7,
                                       row_groups_lost=1, rows_read=rows, rows_lost=12),
                 ranks=ranks, pipeline=PipelineSummary(**summarize([r.pipeline.model_dump() for r in ranks])))
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    for s in ShardPlan.read(lay.shard_plan).shards:
        i, n = s.shard_index, s.count
        errors = qa_reasons[i] or {}
        e = sum(errors.values())
        items = 2 * (n - e)
        with JsonlWriter(lay.qa_shard(i)) as w:
            for k in range(items):
                w.write({"id": f"{i}-{k}"})
        counts = QACounts(failures=n, failures_with_items=n - e, errors=e, items=items, items_generated=items,
                          items_dropped=0, items_checked=items if checked else 0,
                          items_target_failed=items // 2 if checked else 0, items_dropped_target_passed=0,
                          items_check_errors=0, resumed=0)
        fake_qa_stats(lay, i, counts, error_reasons=errors, elapsed_s=1.0 + i, checked=checked,
                      tokens=TokenCounts(prompt_tokens=100, output_tokens=50, thinking_tokens=0, cached_tokens=0),
                      teacher=_teacher(n + 1, retries=1, rate_limited=1, prompt=1_000 * n, output=300 * n,
                                       thinking=10 * n))
    return lay


def test_the_manifest_reports_the_teacher_per_step_input_accounting_and_what_bound_the_probe(tmp_path, demo_parquet):
    lay = _run(tmp_path, demo_parquet, checked=True)
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    m = read_json(lay.manifest)
    t = m["teacher"]
    assert t["probe"]["requests"] == 38 and t["probe"]["retries"] == 4 and t["probe"]["rate_limited"] == 2
    assert (t["probe"]["prompt_tokens"], t["probe"]["output_tokens"], t["probe"]["thinking_tokens"],
            t["probe"]["cached_tokens"]) == (19_000, 3_500, 800, 1_000)
    # cached prompt tokens at the cached rate, thinking (inside output) at the output rate: gemini-2.5-flash
    assert t["probe"]["estimated_cost_usd"] == pytest.approx((18_000 * 0.30 + 1_000 * 0.03 + 3_500 * 2.50) / 1e6)
    assert t["qa"]["requests"] == 10 + 2 and t["qa"]["rate_limited"] == 2 and t["qa"]["thinking_tokens"] == 100
    assert t["run"]["requests"] == 50 and t["run"]["prompt_tokens"] == 29_000
    assert m["tokens"] == {k: t["run"][k] for k in ("prompt_tokens", "output_tokens", "thinking_tokens",
                                                     "cached_tokens")}
    assert m["estimated_cost_usd"] == t["run"]["estimated_cost_usd"] > t["probe"]["estimated_cost_usd"]
    assert t["prices"]["as_of"] and m["probe"]["teacher"] == t["probe"] and m["qa"]["teacher"] == t["qa"]
    # input accounting, what bound the probe, the sample's balance and the target check
    assert {k: m["probe"]["input"][k] for k in ("rows_read", "rows_lost", "files_lost")} == {
        "rows_read": m["probe"]["counts"]["rows"], "rows_lost": 12, "files_lost": 1}
    bound = m["probe"]["bound_by"]
    assert bound["tail_s"] == 0.0 and bound["teacher_wait_s"] > 0  # the device's waits, both shown
    assert bound["bound"] == "teacher" and bound["gpus_for_same_time"] == 1 and bound["busy_fraction"] == pytest.approx(
        4.5 / 20, abs=1e-3)
    assert m["sample"]["keys_per_category"]["color"]["keys"] == 1 and "duplicates" in m["sample"]["counts"]
    assert m["qa"]["target_check"] == {"shards": 2, "items_checked": 20, "items_target_failed": 10,
                                       "target_failed_rate": 0.5, "items_dropped_target_passed": 0}
    assert m["checks"]["probe"]["teacher_error_rows"] == 1 and m["checks"]["qa"]["teacher_error_rate"] == 0.0


def test_every_attempt_is_in_the_bill_from_the_ledgers(tmp_path, demo_parquet):
    lay = _run(tmp_path, demo_parquet)
    ledgers = join(lay.teacher_dir, "ledgers")
    write_json(join(ledgers, "probe-rank-00000.json"), {"requests_by_day": {"2026-11-24": 30, "2026-11-25": 10},
                                                         "cost_usd": 0.25, "usage": {"prompt_tokens": 5}})
    write_json(join(ledgers, "qa-shard-00001.json"), {"requests_by_day": {"2026-11-25": 7}, "cost_usd": 0.125,
                                                       "usage": {"prompt_tokens": 3, "thinking_tokens": 2}})
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    bill = read_json(lay.manifest)["teacher"]["all_attempts"]
    assert bill["probe"]["requests"] == 40 and bill["qa"]["requests"] == 7 and bill["qa"]["thinking_tokens"] == 2
    assert bill["run"]["requests"] == 47 and bill["run"]["estimated_cost_usd"] == pytest.approx(0.375)


def test_too_many_qa_teacher_errors_fail_the_run_and_keep_the_figures_aside(tmp_path, demo_parquet):
    lay = _run(tmp_path, demo_parquet, qa_reasons=({"teacher_http_503": 2, "image_unreadable": 1}, None))
    write_json(lay.manifest, {"stale": True})  # an earlier verdict never survives a new one
    with pytest.raises(RunFailed) as caught:
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert caught.value.exit_code == 2
    assert "qa: 2 of 10 failures (20.0%) ended as teacher error rows, more than max_error_rate 10.0%" in str(
        caught.value)
    assert "teacher_http_503 2" in str(caught.value)
    assert not exists(lay.manifest)
    failed = read_json(lay.manifest_failed)
    assert failed["failed"] and failed["checks"]["qa"]["teacher_error_rows"] == 2  # image_unreadable is not the teacher's
    assert exists(lay.qa_shard(0))  # the outputs stay for inspection
    # a laxer max_error_rate publishes, and the failed verdict goes
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE, max_error_rate=0.25))
    assert exists(lay.manifest) and not exists(lay.manifest_failed)


def test_probe_teacher_errors_count_against_its_rows(tmp_path, demo_parquet):
    lay = _run(tmp_path, demo_parquet, probe_reasons={"teacher_timeout": 3, "teacher_finish_safety": 1,
                                                      "image_unreadable": 5})
    rows = read_json(lay.probe_success)["counts"]["rows"]
    with pytest.raises(RunFailed, match=f"probe: 4 of {rows} rows .* more than max_error_rate 10.0%"):
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE, max_error_rate=0.3))


def test_a_limit_the_plan_foresaw_never_fails_the_run(tmp_path, demo_parquet):
    """QA failures left unasked by the budget or a reservation are reported, not a failure."""
    lay = _run(tmp_path, demo_parquet, qa_reasons=(None, {"limited_budget": 1, "limited_daily_quota": 1}))
    # 2 limited of 10 QA failures: 20 %, above max_error_rate, which counts teacher errors only
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE, max_error_rate=0.15))
    manifest = read_json(lay.manifest)
    assert manifest["checks"]["qa"]["teacher_error_rows"] == 0
    assert manifest["qa"]["error_reasons"] == {"limited_budget": 1, "limited_daily_quota": 1}


def test_the_publish_task_fails_without_retry_and_its_event_carries_the_new_counts(tmp_path, demo_parquet):
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from vlmprobe.lineage import QA_DATASET
    from vlmprobe.tasks import publish_task

    run = types.SimpleNamespace(data_interval_start=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
                                logical_date=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
                                run_after=pendulum.datetime(2026, 11, 26, 2, tz="UTC"), conf={})
    _run(tmp_path, demo_parquet, qa_reasons=({"teacher_http_503": 3}, None), checked=True)
    params = {**defaults(), "output_uri": str(tmp_path)}
    with pytest.raises(AirflowFailException, match="publish: run 2026-11-25 failed: qa: 3 of 10"):
        publish_task(params, run)
    events = OutletEventAccessors()
    out = publish_task({**params, "max_error_rate": 0.5}, run, events)  # the param reaches publish
    extra = events[QA_DATASET].extra
    m = read_json(out["manifest_uri"])
    assert extra["qa_items_target_failed"] == m["qa"]["target_check"]["items_target_failed"] > 0
    assert extra["qa_items_checked"] == m["qa"]["counts"]["items_checked"]
    assert extra["input"]["rows_lost"] == 12 and extra["teacher"]["requests"] == m["teacher"]["run"]["requests"]
