"""The DAG: structure, dates, params, parse cost, refusal of bad conf, hooks for preflight and alerts."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pendulum
import pytest

from conftest import REPO

UTC = "UTC"


def _core_timetable(dag):
    from airflow.serialization.encoders import coerce_to_core_timetable

    return coerce_to_core_timetable(dag.timetable)


def test_structure(dag):
    assert dag.dag_id == "vlm_failure_pipeline"
    assert set(dag.task_ids) == {"probe", "sample_keys", "qa.submit", "qa.wait", "qa.generate", "publish"}
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "probe" in dag.doc_md and "run date is D−1" in dag.doc_md
    assert dag.get_task("sample_keys").upstream_task_ids == {"probe"}
    # the group: submit >> wait >> generate (batch mode); in online mode the first two skip
    # (each task reads its shard index from sample_keys' XCom: sample_keys is upstream of each)
    assert dag.get_task("qa.submit").upstream_task_ids == {"sample_keys"}
    assert dag.get_task("qa.wait").upstream_task_ids == {"qa.submit", "sample_keys"}
    assert dag.get_task("qa.generate").upstream_task_ids == {"qa.wait", "sample_keys"}
    assert dag.get_task("qa.generate").trigger_rule == "none_failed"
    assert dag.get_task("publish").upstream_task_ids == {"qa.generate"}
    assert dag.get_task("publish").trigger_rule == "none_failed"
    assert "qa" in dag.task_group.children


def test_the_0200_run_of_2026_11_26_has_run_date_2026_11_25(dag):
    from airflow.timetables.base import DataInterval, TimeRestriction

    from podrender import render_task
    from vlmprobe.rundate import run_date_of

    timetable = _core_timetable(dag)
    assert type(timetable).__name__ == "CronDataIntervalTimetable"
    assert timetable.summary == "0 2 * * *"
    after_25th = DataInterval(pendulum.datetime(2026, 11, 24, 2, tz=UTC), pendulum.datetime(2026, 11, 25, 2, tz=UTC))
    info = timetable.next_dagrun_info(last_automated_data_interval=after_25th,
                                      restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True))
    assert info.run_after == pendulum.datetime(2026, 11, 26, 2, tz=UTC)
    assert run_date_of(info.data_interval.start) == "2026-11-25"
    # ... and that is what the pods are told: a scheduled run's logical date is its interval start
    task, _ = render_task(dag, "probe", info.data_interval.start)
    assert task.arguments[task.arguments.index("--run-date") + 1] == "2026-11-25"


def test_catchup_off_the_first_unpause_schedules_only_the_latest_interval(dag):
    from airflow.timetables.base import TimeRestriction

    now = pendulum.now(UTC)
    info = _core_timetable(dag).next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup))
    # with catchup on, this would be the interval starting at start_date (2026-11-01)
    assert now - pendulum.duration(days=1) < info.data_interval.end <= now + pendulum.duration(days=1)


@pytest.mark.parametrize("run_after,expected", [
    (pendulum.datetime(2026, 11, 26, 9, 30, tz=UTC), "2026-11-25"),
    (pendulum.datetime(2026, 11, 26, 2, 0, tz=UTC), "2026-11-25"),
    (pendulum.datetime(2026, 11, 26, 1, 59, tz=UTC), "2026-11-24"),  # day 25 is complete only at 02:00 on the 26th
    (pendulum.datetime(2026, 12, 1, 0, 0, tz="Europe/Paris"), "2026-11-29"),  # 23:00 UTC on the 30th
])
def test_manual_runs_get_the_interval_airflow_infers(dag, run_after, expected):
    from podrender import render_task
    from vlmprobe.rundate import run_date_of

    # with a logical date, Airflow gives the run this interval; without one we infer the same
    assert run_date_of(_core_timetable(dag).infer_manual_data_interval(run_after=run_after).start) == expected
    assert run_date_of(None, None, run_after) == expected
    task, ctx = render_task(dag, "probe", None)  # no logical date: run_after is 2026-11-26 09:30 in podrender
    assert task.arguments[task.arguments.index("--run-date") + 1] == "2026-11-25"


def test_params_are_typed_bounded_described(dag):
    expected = {"nproc_per_node", "failure_batch_size", "parquet_sample_size", "num_shards", "concurrency",
                "batch_size", "request_delay", "no_async", "error_output_format", "embed_images",
                "samples_per_key", "input_uri", "output_uri", "target_model", "gemini_model", "seed"}
    expected |= {"teacher_rpm", "teacher_tpm", "teacher_rpd", "teacher_retry_window_s", "max_error_rate",
                 "thinking_budget", "teacher_image_max_side", "max_cost_usd"}  # teacher
    expected |= {"max_new_tokens", "qa_target_check", "qa_keep"}  # target (issue 9)
    expected |= {"min_per_key", "max_per_category"}  # data (issue 8)
    expected |= {"preset"}  # the seed's presets (issue 17)
    expected |= {"teacher_project", "expected_error_rate", "target_images_per_s", "probe_wall_factor",
                 "probe_min_tail_s", "teacher_latency_s", "teacher_batch_enqueued_tokens"}  # the night's plan
    expected |= {"target_revision", "force"}  # the target's pinned commit, rerunning a finished probe (issue 15)
    expected |= {"teacher_service_tier", "qa_mode", "batch_deadline_h", "batch_poll_s",  # tiers (issue 16)
                 "teacher_media_resolution_factor", "teacher_media_resolution_verify", "teacher_media_resolution_qa"}
    params = dag.params
    assert set(params.keys()) == expected
    for name in params.keys():
        p = params.get_param(name)
        assert p.description, name
        assert p.schema.get("section"), name
        t = p.schema["type"]
        if t in ("integer", "number"):
            assert "minimum" in p.schema and "maximum" in p.schema, name
        elif t == "string":
            assert "enum" in p.schema or p.schema.get("minLength") == 1 or "pattern" in p.schema, name
    assert params.get_param("error_output_format").schema["enum"] == ["jsonl", "json"]
    assert "{run_date}" in params.get_param("input_uri").description


@pytest.mark.parametrize("conf", [
    {"failure_batch_size": -1},
    {"error_output_format": "xml"},
    {"nproc_per_node": 0},
    {"request_delay": "fast"},
    {"input_uri": ""},
    {"input_uri": "data/input"},  # relative: pods and workers share no working directory
    {"input_uri": "http://example.com/data"},
    {"input_uri": "gs://bucket/vqa/{date}"},  # the only placeholder is {run_date}
    {"input_uri": "file://relative/path"},
    {"output_uri": "/data/out/{run_date}"},  # the run date is appended already
    {"output_uri": "hdfs://cluster/out"},
])
def test_bad_conf_is_refused_at_trigger_time(dag, conf):
    from airflow.sdk.exceptions import ParamValidationError

    from podrender import resolve_params

    with pytest.raises(ParamValidationError):
        resolve_params(dag, dag.get_task("probe"), conf)


@pytest.mark.parametrize("conf", [
    {"nproc_per_node": 2, "embed_images": True},
    {"input_uri": "gs://bucket/vqa/{run_date}/parquet", "output_uri": "s3://bucket/out"},
    {"input_uri": "file:///data/in", "output_uri": "/data/out"},
])
def test_good_conf_is_accepted(dag, conf):
    from podrender import resolve_params

    params = resolve_params(dag, dag.get_task("probe"), conf)
    assert all(params[k] == v for k, v in conf.items())


def test_probe_runs_the_preflight_before_its_pod(dag):
    from vlmprobe.preflight import preflight

    assert dag.get_task("probe").preflight is preflight


def test_probe_pod_starts_its_ranks_through_the_launcher(dag):
    from podrender import render_task

    task, _ = render_task(dag, "probe", pendulum.datetime(2026, 11, 25, 2, tz=UTC), {"nproc_per_node": 4})
    assert task.cmds == ["vlmprobe"]
    assert task.arguments[:2] == ["probe", "--nproc_per_node=4"]  # not bare torchrun: it would exit 1 for 2


def test_failures_alert_and_publish_feeds_the_asset(dag):
    from vlmprobe.alerts import FailureWebhook
    from vlmprobe.lineage import QA_DATASET

    for task_id in dag.task_ids:
        callbacks = dag.get_task(task_id).on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(isinstance(c, FailureWebhook) for c in callbacks), task_id
    assert QA_DATASET in dag.get_task("publish").outlets
    (deadline,) = dag.deadline
    assert deadline.interval == pendulum.duration(hours=8)
    assert deadline.callback.path == "vlmprobe.alerts.deadline_missed"


PARSE_PROBE = r"""
import importlib.util, json, sys
sys.path.insert(0, {repo!r})
spec = importlib.util.spec_from_file_location("vlm_failure_pipeline", {path!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") or m.startswith("google.genai"))
print(json.dumps({{"heavy": heavy}}))
"""


def test_parsing_imports_no_ml_stack():
    # Parse time itself is measured by bench/bench_dag_parse.py, not asserted here.
    code = PARSE_PROBE.format(repo=str(REPO), path=str(REPO / "dags" / "vlm_failure_pipeline.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["heavy"] == []


def _parse(monkeypatch, **env):
    from airflow.dag_processing.dagbag import DagBag

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return DagBag(dag_folder=str(REPO / "dags" / "vlm_failure_pipeline.py"))


def test_deployment_param_defaults_and_deadline_from_env(monkeypatch):
    bag = _parse(monkeypatch, VLMPROBE_PARAM_DEFAULTS=json.dumps({"nproc_per_node": 2, "target_model": "/m/tiny"}),
                 VLMPROBE_RUN_DEADLINE_HOURS="0")
    assert not bag.import_errors, bag.import_errors
    d = bag.dags["vlm_failure_pipeline"]
    assert d.params["nproc_per_node"] == 2 and d.params["target_model"] == "/m/tiny"
    assert d.get_task("probe").pool_slots == 2  # the probe's GPUs at the deployment's default
    assert not d.deadline


def test_a_typo_in_the_deployment_defaults_is_an_import_error(monkeypatch):
    bag = _parse(monkeypatch, VLMPROBE_PARAM_DEFAULTS='{"samples_per_kye": 5}')
    (error,) = bag.import_errors.values()
    assert "samples_per_kye" in error and "did you mean 'samples_per_key'" in error


def test_run_date_macro_is_the_light_tasks_rule(dag):
    from vlmprobe.rundate import run_date_of_dag_run

    args = dag.get_task("probe").arguments
    template = args[args.index("--run-date") + 1]
    env = dag.get_template_env()
    # a manual run with logical date 2026-11-26T02:00: Airflow gives it the interval starting on the 25th
    run = types.SimpleNamespace(data_interval_start=pendulum.datetime(2026, 11, 25, 2, tz=UTC),
                                logical_date=pendulum.datetime(2026, 11, 26, 2, tz=UTC), run_after=None)
    assert env.from_string(template).render(dag_run=run) == run_date_of_dag_run(run) == "2026-11-25"
