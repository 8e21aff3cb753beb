"""The DAG: structure, params, parse cost, and refusal of bad conf."""

from __future__ import annotations

import json
import subprocess
import sys

import pendulum
import pytest

from conftest import REPO


def test_structure(dag):
    assert dag.dag_id == "vlm_failure_pipeline"
    assert set(dag.task_ids) == {"probe", "sample_keys", "qa.generate", "publish"}
    assert dag.catchup is True
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 2 * * *"
    assert dag.doc_md and "probe" in dag.doc_md
    assert dag.get_task("sample_keys").upstream_task_ids == {"probe"}
    assert dag.get_task("qa.generate").upstream_task_ids == {"sample_keys"}
    assert dag.get_task("publish").upstream_task_ids == {"qa.generate"}
    assert dag.get_task("publish").trigger_rule == "none_failed"
    assert "qa" in dag.task_group.children


def test_params_are_typed_bounded_described(dag):
    expected = {"nproc_per_node", "failure_batch_size", "parquet_sample_size", "num_shards", "concurrency",
                "batch_size", "request_delay", "no_async", "error_output_format", "embed_images",
                "samples_per_key", "input_uri", "output_uri", "target_model", "gemini_model", "seed",
                "min_per_key", "max_per_category"}
    params = dag.params
    assert set(params.keys()) == expected
    for name in expected:
        p = params.get_param(name)
        assert p.description, name
        assert p.schema.get("section"), name
        t = p.schema["type"]
        if t in ("integer", "number"):
            assert "minimum" in p.schema and "maximum" in p.schema, name
        elif t == "string":
            assert "enum" in p.schema or p.schema.get("minLength") == 1, name
    assert params.get_param("error_output_format").schema["enum"] == ["jsonl", "json"]


@pytest.mark.parametrize("conf", [
    {"failure_batch_size": -1},
    {"error_output_format": "xml"},
    {"nproc_per_node": 0},
    {"request_delay": "fast"},
    {"input_uri": ""},
])
def test_bad_conf_is_refused(dag, conf):
    from airflow.sdk.exceptions import ParamValidationError

    from podrender import resolve_params

    with pytest.raises(ParamValidationError):
        resolve_params(dag, dag.get_task("probe"), conf)


def test_good_conf_is_accepted(dag):
    from podrender import resolve_params

    params = resolve_params(dag, dag.get_task("probe"), {"nproc_per_node": 2, "embed_images": True})
    assert params["nproc_per_node"] == 2 and params["embed_images"] is True


PARSE_PROBE = r"""
import importlib.util, json, sys
sys.path.insert(0, {repo!r})
spec = importlib.util.spec_from_file_location("vlm_failure_pipeline", {path!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") or m.startswith("google.genai"))
print(json.dumps(heavy))
"""


def test_parsing_imports_no_ml_stack():
    # Parse time itself is measured by bench/bench_dag_parse.py, not asserted here.
    code = PARSE_PROBE.format(repo=str(REPO), path=str(REPO / "dags" / "vlm_failure_pipeline.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_run_date_template_for_scheduled_and_manual_runs(dag):
    from podrender import render_task

    task, _ = render_task(dag, "probe", pendulum.datetime(2026, 11, 25, 2, tz="UTC"))
    assert task.arguments[task.arguments.index("--run-date") + 1] == "2026-11-25"
    # a manual run without a logical date falls back to run_after (2026-11-26 in podrender)
    task, _ = render_task(dag, "probe", None)
    assert task.arguments[task.arguments.index("--run-date") + 1] == "2026-11-26"
