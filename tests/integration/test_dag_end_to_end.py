"""The whole DAG with `airflow dags test` on SQLite, pods in local mode, the Gemini simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from vlmprobe.io import iter_jsonl, read_json

pytestmark = pytest.mark.slow
RUN_DATE = "2026-11-25"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "VLMPROBE_POD_MODE": "local",
    }
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    return env


def _dags_test(env, conf):
    cmd = [str(Path(sys.executable).parent / "airflow"), "dags", "test", "vlm_failure_pipeline", RUN_DATE,
           "-c", json.dumps(conf)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_bad_conf_is_refused_before_any_task_runs(airflow_env, tmp_path):
    proc = _dags_test(airflow_env, {"failure_batch_size": -1, "output_uri": str(tmp_path)})
    assert proc.returncode != 0
    assert "ParamValidationError" in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_whole_dag_in_local_pod_mode(airflow_env, tmp_path, demo_parquet, tiny_llava):
    from vlmprobe.sim.server import GeminiSimulator

    conf = {"input_uri": demo_parquet, "output_uri": str(tmp_path), "target_model": tiny_llava,
            "nproc_per_node": 2, "failure_batch_size": 6, "parquet_sample_size": 4, "samples_per_key": 2,
            "num_shards": 3, "concurrency": 4, "batch_size": 5, "error_output_format": "json"}
    with GeminiSimulator(port=0, latency_ms=5, rate_429=0.05, rate_503=0.05, rate_malformed=0.05, seed=11) as sim:
        env = {**airflow_env, "GEMINI_API_KEY": "e2e-secret-value-1234", "VLMPROBE_GEMINI_BASE_URL": sim.base_url}
        proc = _dags_test(env, conf)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:]
    assert "e2e-secret-value-1234" not in logs  # the key never reaches the task logs

    m = read_json(str(tmp_path / RUN_DATE / "manifest.json"))
    pc, sc, qc = m["probe"]["counts"], m["sample"]["counts"], m["qa"]["counts"]
    # every probed row is a pass, a verified failure, a rejected factor or an error row
    assert pc["rows"] == 48 == pc["passed"] + pc["verified"] + pc["rejected"] + pc["errors"]
    # every verified failure was sampled, capped, or an error row
    assert sc["input_failures"] == pc["verified"] == sc["sampled"] + sc["over_cap"] + sc["errors"]
    # every sampled failure yields QA items or an error row
    assert qc["failures"] == sc["sampled"] == qc["failures_with_items"] + qc["errors"]
    items = [it for uri in m["outputs"]["qa"] for it in iter_jsonl(uri)]
    assert len(items) == qc["items"] > 0 and len(m["qa"]["shards"]) == 3
    assert m["tokens"]["prompt_tokens"] > 0 and m["estimated_cost_usd"] > 0
    assert (tmp_path / RUN_DATE / "sample" / "failures.json").exists()
