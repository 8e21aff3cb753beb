"""Step 3 against the Gemini simulator: items, error rows, pacing modes, reruns."""

from __future__ import annotations

import json

import pytest

from vlmprobe.config import QAConfig, SampleConfig
from vlmprobe.contracts import QAShardSpan, ShardPlan
from vlmprobe.errors import InputError
from vlmprobe.io import JsonlWriter, exists, iter_jsonl, list_files, read_json, write_json
from vlmprobe.qa.items import clean_items
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys
from vlmprobe.teacher.schemas import QAPair
from fakes import RUN_DATE, crash_qa_shard_on, fake_probe


def _setup(tmp_path, demo_parquet, embed=False):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:3": 4})
    # one failure points past the end of its file: it must come out as an error row
    with JsonlWriter(lay.probe_rank(1)) as w:
        w.write({"id": "ghost", "failure_key": "size:big", "image": {"uri": list_files(demo_parquet, ".parquet")[0],
                                                                       "row": 5000},
                 "question": "q", "answer": "a", "prediction": "b", "factor": {"completion": "c"}})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2, embed_images=embed))
    return lay


@pytest.mark.parametrize("no_async", [False, True])
def test_shard_writes_items_and_error_rows(tmp_path, demo_parquet, gemini_sim, no_async):
    lay = _setup(tmp_path, demo_parquet)
    plan = read_json(lay.shard_plan)
    total_items = 0
    for shard in plan["shards"]:
        out = run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=shard["shard_index"],
                                 concurrency=4, batch_size=3, no_async=no_async))
        items = list(iter_jsonl(lay.qa_shard(shard["shard_index"])))
        errors = list(iter_jsonl(lay.qa_errors(shard["shard_index"])))
        stats = read_json(lay.qa_stats(shard["shard_index"]))
        c = stats["counts"]
        assert c["failures"] == shard["count"] == c["failures_with_items"] + c["errors"]
        assert out["counts"]["items"] == len(items) == c["items"]
        assert len(errors) == c["errors"]
        total_items += len(items)
        for it in items:
            assert it["answer_type"] in ("yes_no", "multiple_choice", "open")
            if it["answer_type"] == "multiple_choice":
                assert it["answer"] in it["choices"]
            if it["answer_type"] == "yes_no":
                assert it["answer"] in ("yes", "no")
            assert it["failure_id"] and it["image"]["uri"].endswith(".parquet")
    assert total_items > 0
    # the checks of each answer type above ran on items of that type
    assert {"multiple_choice", "yes_no"} <= {it["answer_type"] for s in plan["shards"]
                                            for it in iter_jsonl(lay.qa_shard(s["shard_index"]))}
    all_errors = [e for s in plan["shards"] for e in iter_jsonl(lay.qa_errors(s["shard_index"]))]
    assert any(e["id"] == "ghost" and e["reason"] == "image_unreadable" for e in all_errors)


def test_retries_through_faults_and_gives_up_with_a_reason(tmp_path, demo_parquet, monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    lay = _setup(tmp_path, demo_parquet, embed=True)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with GeminiSimulator(port=0, rate_429=0.3, retry_delay_s=0.01, rate_503=0.2, rate_malformed=0.2, seed=5) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        cfg = dict(output_uri=str(tmp_path), run_date=RUN_DATE, concurrency=8)
        run_shard(QAConfig(shard_index=0, max_attempts=8, **cfg))
        faults = sim.stats()["by_status"]
    stats = read_json(lay.qa_stats(0))
    assert stats["counts"]["failures_with_items"] == stats["counts"]["failures"]  # the retries got through
    assert stats["teacher"]["retries"] > 0 and faults.get("429", 0) > 0
    with GeminiSimulator(port=0, rate_503=1.0, seed=5) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        run_shard(QAConfig(shard_index=0, max_attempts=2, **cfg))
    errors = list(iter_jsonl(lay.qa_errors(0)))
    assert len(errors) == read_json(lay.shard_plan)["shards"][0]["count"]
    assert {e["reason"] for e in errors} == {"teacher_http_503"}
    assert list(iter_jsonl(lay.qa_shard(0))) == []  # the rerun replaced the earlier items


def test_unknown_shard_is_refused_and_removes_nothing(tmp_path, demo_parquet, gemini_sim):
    lay = _setup(tmp_path, demo_parquet)
    write_json(lay.manifest, {"earlier": "publish"})
    with pytest.raises(InputError, match="shard 7 does not exist"):
        run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=7))
    assert exists(lay.manifest)  # a typo'd shard index invalidates nothing


def test_clean_items_keeps_consistent_pairs():
    items = [
        QAPair(answer_type="yes_no", choices=[], question="Is it red?", answer="Yes.", rationale="r"),
        QAPair(answer_type="yes_no", choices=[], question="Is it red?", answer="maybe", rationale="r"),
        QAPair(answer_type="multiple_choice", choices=["red", "blue"], question="Color?", answer="Blue", rationale="r"),
        QAPair(answer_type="multiple_choice", choices=["red", "blue"], question="Color?", answer="green", rationale="r"),
        QAPair(answer_type="open", choices=["x"], question="How many?", answer="3", rationale="r"),
    ]
    kept, dropped = clean_items(items)
    assert [(k["answer_type"], k["answer"], k["choices"]) for k in kept] == [
        ("yes_no", "yes", ["yes", "no"]), ("multiple_choice", "blue", ["red", "blue"]), ("open", "3", [])]
    assert len(dropped) == 2


def _one_shard(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:3": 4})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    return lay


def _ok_bodies(log: list[dict]) -> list[str]:
    return [e["sha256"] for e in log if e["status"] == 200 and e["outcome"] == "ok"]


def test_a_crashed_shard_resumes_from_its_journal_without_asking_again(tmp_path, demo_parquet, monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    lay = _one_shard(tmp_path, demo_parquet)
    shard = read_json(lay.shard_plan)["shards"][0]
    assert shard["count"] == 9
    cfg = dict(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, batch_size=2, concurrency=2)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with GeminiSimulator(port=0, seed=2) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        undo = crash_qa_shard_on(monkeypatch, 5)
        with pytest.raises(RuntimeError, match="pod evicted"):
            run_shard(QAConfig(**cfg))
        assert not exists(lay.qa_shard(0)) and not exists(lay.qa_stats(0))  # nothing half-written
        first = sim.request_log()
        undo()
        resumed = run_shard(QAConfig(**cfg))
        second = sim.request_log()[len(first):]
    c = resumed["counts"]
    assert 2 <= c["resumed"] <= 4  # what finished before the crash was not asked again...
    again = set(_ok_bodies(first)) & {e["sha256"] for e in second}
    assert len(again) <= 2  # ...beyond the requests in flight at the crash (concurrency 2)
    assert len(second) == shard["count"] - c["resumed"]  # one request per failure left (no faults here)
    assert c["failures"] == shard["count"] == c["failures_with_items"] + c["errors"]
    items = list(iter_jsonl(lay.qa_shard(0)))
    assert len(items) == c["items"] and len({i["id"] for i in items}) == len(items)  # nothing twice
    assert not (tmp_path / RUN_DATE / "qa" / "_journal" / "shard-00000").exists()  # cleared once complete


def test_a_journal_made_for_other_settings_is_discarded(tmp_path, demo_parquet, monkeypatch, caplog):
    from vlmprobe.sim import GeminiSimulator

    lay = _one_shard(tmp_path, demo_parquet)
    count = read_json(lay.shard_plan)["shards"][0]["count"]
    cfg = dict(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, batch_size=1, concurrency=1)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with GeminiSimulator(port=0, seed=2) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        undo = crash_qa_shard_on(monkeypatch, 4)
        with pytest.raises(RuntimeError, match="pod evicted"):
            run_shard(QAConfig(**cfg))
        undo()
        before = sim.stats()["requests"]
        fresh = run_shard(QAConfig(**{**cfg, "max_items": 2}))  # other items per failure: another job
        asked = sim.stats()["requests"] - before
    assert "discarding the resume journal of shard 0" in caplog.text
    assert fresh["counts"]["resumed"] == 0 and asked == count


def test_budget_rows_are_asked_again_by_a_rerun_with_more_budget(tmp_path, demo_parquet, monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    lay = _one_shard(tmp_path, demo_parquet)
    count = read_json(lay.shard_plan)["shards"][0]["count"]
    cfg = dict(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, concurrency=1, no_async=True)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with GeminiSimulator(port=0, seed=3) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        capped = run_shard(QAConfig(max_cost_usd=1e-9, **cfg))  # the first answer spends the budget
        reasons = [e["reason"] for e in iter_jsonl(lay.qa_errors(0))]
        assert reasons == ["limited_budget"] * (count - 1) and len(sim.request_log()) == 1
        assert capped["counts"]["failures_with_items"] == 1 and capped["counts"]["limited"] == count - 1
        assert (tmp_path / RUN_DATE / "qa" / "_journal" / "shard-00000").exists()  # kept for the rerun
        done = run_shard(QAConfig(max_cost_usd=10.0, **cfg))
        log = sim.request_log()
    assert len(log) == count and len(set(_ok_bodies(log))) == count  # the budget rows only, each once
    assert done["counts"]["resumed"] == 1 and done["counts"]["failures_with_items"] == count
    assert not (tmp_path / RUN_DATE / "qa" / "_journal" / "shard-00000").exists()


def test_qa_never_starts_requests_its_reservation_cannot_pay_for(tmp_path, demo_parquet, monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    lay = _one_shard(tmp_path, demo_parquet)
    plan = ShardPlan.read(lay.shard_plan)
    count = plan.shards[0].count
    plan.model_copy(update={"qa_reserved_requests": 3}).write(lay.shard_plan)  # the night kept 3 for QA
    cfg = QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, concurrency=1, no_async=True)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with GeminiSimulator(port=0, seed=3) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        out = run_shard(cfg)
        sent = len(sim.request_log())
    assert sent == 3  # not one request beyond the reservation
    reasons = [e["reason"] for e in iter_jsonl(lay.qa_errors(0))]
    assert reasons == ["limited_daily_quota"] * (count - 3)
    c = out["counts"]
    assert c["failures_with_items"] == 3 and c["limited"] == c["errors"] == count - 3


def test_records_qa_cannot_use_are_error_rows_naming_file_and_record(tmp_path, demo_parquet, gemini_sim):
    lay = _setup(tmp_path, demo_parquet)
    plan = ShardPlan.read(lay.shard_plan)
    # a hand-made plan over a failures file with a record that has no failure_key
    good = next(iter_jsonl(lay.sampled_failures()))
    records = [good, {k: v for k, v in good.items() if k != "failure_key"}, {**good, "id": "other"}]
    path = tmp_path / "hand" / "failures.jsonl"
    path.parent.mkdir()
    lines = [json.dumps(r).encode() + b"\n" for r in records]
    path.write_bytes(b"".join(lines))
    ShardPlan(**{**dict(plan), "failures_uri": str(path), "num_shards": 1, "shards": [QAShardSpan(
        shard_index=0, start=0, stop=3, count=3, byte_start=0, byte_stop=len(b"".join(lines)), estimated_tokens=0)]}
              ).write(lay.shard_plan)
    out = run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, concurrency=2))
    (err,) = list(iter_jsonl(lay.qa_errors(0)))
    assert err["reason"] == "bad_record" and err["file"] == str(path)
    assert f"{path}, record 2: no 'failure_key'" in err["detail"]
    assert out["counts"]["failures"] == 3 == out["counts"]["failures_with_items"] + out["counts"]["errors"]
