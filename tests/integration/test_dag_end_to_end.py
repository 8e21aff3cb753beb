"""The whole DAG with `airflow dags test` on SQLite, pods in local mode, the Gemini simulator.

The tested run is the night of 2026-11-26 (logical date 2026-11-26T02:00): its data interval
starts on 2026-11-25, its run date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from vlmprobe.io import iter_jsonl, read_json
from fakes import SIM_PLAN

pytestmark = pytest.mark.slow
LOGICAL_DATE = "2026-11-26T02:00:00+00:00"
RUN_DATE = "2026-11-25"
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # the repository (operators/) first; a caller's own path (a worktree's src/) kept after it
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "VLMPROBE_POD_MODE": "local",
        # Airflow 3.3.2's `dags test` cannot finish a successful run of a DAG with a DeadlineAlert
        # (dag.test() hands update_state the alerts' dicts where the scheduler has their ids);
        # the deadline is exercised by the `make up` test, under a real scheduler.
        "VLMPROBE_RUN_DEADLINE_HOURS": "0",
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


def _dags_test(env, conf):
    cmd = [AIRFLOW, "dags", "test", "vlm_failure_pipeline", LOGICAL_DATE, "-c", json.dumps(conf)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc, proc.stdout + proc.stderr


def _lines_with(logs: str, text: str) -> list[str]:
    return [line for line in logs.splitlines() if text in line]


def test_bad_conf_is_refused_before_any_task_runs(airflow_env, tmp_path):
    proc, logs = _dags_test(airflow_env, {"failure_batch_size": -1, "output_uri": str(tmp_path)})
    assert proc.returncode != 0
    assert "ParamValidationError" in logs
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_a_typo_in_the_conf_is_refused_before_the_probe_starts(airflow_env, tmp_path, demo_parquet):
    proc, logs = _dags_test(airflow_env, {"samples_per_kye": 5, "input_uri": demo_parquet,
                                          "output_uri": str(tmp_path)})
    assert proc.returncode != 0
    assert "unknown conf key 'samples_per_kye' (did you mean 'samples_per_key'?)" in logs
    assert not _lines_with(logs, "local pod mode:")  # the probe's command never started
    assert not any(tmp_path.iterdir())


def test_missing_input_fails_the_probe_without_retry_or_pod(airflow_env, tmp_path):
    missing = tmp_path / "vqa" / "{run_date}"
    proc, logs = _dags_test(airflow_env, {"input_uri": str(missing), "output_uri": str(tmp_path / "out"),
                                          "target_model": str(tmp_path / "model")})  # local: no revision to pin
    assert proc.returncode != 0
    assert f"preflight for run date {RUN_DATE}: input {tmp_path}/vqa/{RUN_DATE} " in logs
    assert not _lines_with(logs, "local pod mode:")  # no pod command started
    # failed for good on its first try: a retry would be marked up_for_retry (and wait 5 minutes here)
    assert "new_state=failed" in logs and "up_for_retry" not in logs.lower()
    assert not (tmp_path / "out").exists()


def test_a_failing_probe_puts_its_cause_at_error_in_the_task_log(airflow_env, tmp_path, demo_parquet, tiny_llava):
    # three ranks, one sampled file of two row groups: every rank refuses (exit 2, not retried)
    # after the preflight passed
    conf = {"input_uri": demo_parquet, "output_uri": str(tmp_path), "target_model": tiny_llava,
            "nproc_per_node": 3, "parquet_sample_size": 1}
    proc, logs = _dags_test({**airflow_env, "GEMINI_API_KEY": "e2e-key"}, conf)
    assert proc.returncode != 0
    # the task log's records (timestamped), not the exception's message repeating the line
    cause = [line for line in _lines_with(logs, "vlmprobe probe: error: ") if line[:4].isdigit()]
    assert cause and all("3 ranks but the sampled files hold only 2 readable row group(s)" in line for line in cause), cause
    # the task log's own level (structlog's "[error    ]"), not INFO with the pod's "ERROR" inside
    assert all("[error" in line.split("vlmprobe probe: error")[0] for line in cause), cause
    # the task's failure message names the cause, and there is no retry (exit code 2)
    assert any("AirflowFailException" in line and "readable row group(s)" in line for line in logs.splitlines())
    assert "new_state=failed" in logs and "up_for_retry" not in logs.lower()


def _asset_events(env) -> list[dict]:
    code = ("import json\n"
            "from sqlalchemy import select\n"
            "from airflow.models.asset import AssetEvent, AssetModel\n"
            "from airflow.utils.session import create_session\n"
            "with create_session() as s:\n"
            "    rows = s.execute(select(AssetModel.name, AssetEvent.extra).join(AssetModel,"
            " AssetEvent.asset_id == AssetModel.id)).all()\n"
            "print(json.dumps([{'name': n, 'extra': e} for n, e in rows]))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_whole_dag_in_local_pod_mode(airflow_env, tmp_path, demo_parquet, tiny_llava, monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    conf = {"input_uri": demo_parquet, "output_uri": str(tmp_path), "target_model": tiny_llava,
            "nproc_per_node": 2, "failure_batch_size": 6, "parquet_sample_size": 4, "samples_per_key": 2,
            "num_shards": 3, "concurrency": 4, "batch_size": 5, "error_output_format": "json",
            "qa_target_check": "on", "max_new_tokens": 4, **SIM_PLAN}
    with GeminiSimulator(port=0, latency_ms=5, rate_429=0.05, rate_503=0.05, rate_malformed=0.05, seed=11) as sim:
        env = {**airflow_env, "GEMINI_API_KEY": "e2e-secret-value-1234", "VLMPROBE_GEMINI_BASE_URL": sim.base_url}
        proc, logs = _dags_test(env, conf)
    assert proc.returncode == 0, logs[-4000:]
    assert "e2e-secret-value-1234" not in logs  # the key never reaches the task logs
    assert "preflight passed for run date 2026-11-25" in logs
    # online mode: the batch tasks skip without a pod, the shards run as they always did
    assert "qa_mode is online: no Batch API job for this shard" in logs
    assert not _lines_with(logs, "--qa-phase submit")

    m = read_json(str(tmp_path / RUN_DATE / "manifest.json"))
    assert m["run_date"] == RUN_DATE
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
    # the teacher per step, from the ranks' and shards' stats; the run's totals add them up
    t = m["teacher"]
    for step in ("probe", "qa"):
        assert t[step]["requests"] >= t[step]["succeeded"] > 0 and t[step]["prompt_tokens"] > 0
        assert {"retries", "rate_limited", "thinking_tokens", "cached_tokens", "estimated_cost_usd"} <= set(t[step])
    assert t["run"]["requests"] == t["probe"]["requests"] + t["qa"]["requests"]
    assert t["all_attempts"]["run"]["requests"] >= t["run"]["requests"]
    assert m["probe"]["input"]["rows_read"] == 48 and m["probe"]["bound_by"]["bound"] in ("target", "input", "teacher")
    # every QA item was put to the tiny target (qa_target_check=on), and the manifest says how many it failed
    assert qc["items_checked"] == qc["items"] and m["qa"]["target_check"]["items_target_failed"] == sum(
        1 for it in items if it["target_correct"] is False)
    assert all(isinstance(it["target_answer"], str) for it in items)
    assert m["checks"]["qa"]["teacher_error_rate"] <= m["checks"]["max_error_rate"]
    assert (tmp_path / RUN_DATE / "sample" / "failures.json").exists()
    assert not [p for p in (tmp_path / RUN_DATE).iterdir() if p.name.startswith("_preflight")]

    # publish's Asset event carries the manifest's counts
    (event,) = [e for e in _asset_events(airflow_env) if e["name"] == "vlmprobe_qa_dataset"]
    assert event["extra"]["run_date"] == RUN_DATE and event["extra"]["qa_items"] == qc["items"]
    assert event["extra"]["counts"] == {"probe": pc, "sample": sc, "qa": qc}
    assert event["extra"]["qa_items_target_failed"] == m["qa"]["target_check"]["items_target_failed"]
    assert event["extra"]["teacher"]["requests"] == t["run"]["requests"]
    # publish wrote the run report next to the manifest, and the event names it
    report = tmp_path / RUN_DATE / "report.html"
    assert m["report"]["uri"] == str(report) == event["extra"]["report_uri"]
    assert report.read_text().startswith("<!DOCTYPE html>") and m["report"]["thumbnails"] > 0

    # the QA items as a dataset (issue 17): every item loads with its image, a card, the provenance
    import datasets
    from PIL import Image

    from vlmprobe.io import list_files

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / RUN_DATE / "qa" / "parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == qc["items"] == m["dataset"]["rows"] and len(m["outputs"]["qa_parquet"]) == 3
    assert all(isinstance(img, Image.Image) for img in ds["image"])
    assert sorted(ds["id"]) == sorted(it["id"] for it in items)
    assert (tmp_path / RUN_DATE / "README.md").read_text().startswith("---\nlicense: other\n")
    p = m["provenance"]
    assert p["code"]["version"] and p["code"]["git_commit"] and p["probe_code"] == p["code"]
    files = {f["uri"]: f for f in p["input_files"]}
    assert set(files) == set(list_files(demo_parquet, ".parquet"))
    assert all(f["size"] == os.path.getsize(u) and f["mtime"] for u, f in files.items())
    assert p["conf"] == conf and p["template_version"] == "v1" and p["prompts_version"]
    images = sorted((w["step"], w["map_index"], w["image_id"]) for w in p["worker_images"])
    assert images == [("probe", -1, "local"), ("qa", 0, "local"), ("qa", 1, "local"), ("qa", 2, "local")]


def test_whole_dag_with_qa_in_batch_mode(airflow_env, tmp_path, demo_parquet, tiny_llava):
    from vlmprobe.sim import GeminiSimulator

    conf = {"input_uri": demo_parquet, "output_uri": str(tmp_path), "target_model": tiny_llava,
            "nproc_per_node": 2, "failure_batch_size": 6, "parquet_sample_size": 4, "samples_per_key": 2,
            "num_shards": 2, "concurrency": 4, "qa_mode": "batch", "batch_poll_s": 0.5, **SIM_PLAN}
    with GeminiSimulator(port=0, latency_ms=5, rate_503=0.05, batch_pending_s=1, batch_running_s=1,
                         batch_error_rate=0.1, seed=11) as sim:
        env = {**airflow_env, "GEMINI_API_KEY": "e2e-batch-secret-5678", "VLMPROBE_GEMINI_BASE_URL": sim.base_url}
        proc, logs = _dags_test(env, conf)
        batch = sim.batch_stats()
    assert proc.returncode == 0, logs[-4000:]
    assert "e2e-batch-secret-5678" not in logs
    m = read_json(str(tmp_path / RUN_DATE / "manifest.json"))
    shards = len(m["qa"]["shards"])
    # one job per shard, submitted by qa.submit, waited for by qa.wait in the (inline) triggerer
    assert shards == 2 and batch["jobs_created"] == shards and batch["files_uploaded"] == shards
    assert len(_lines_with(logs, "--qa-phase submit")) == shards and _lines_with(logs, "waiting in the triggerer")
    qc = m["qa"]["counts"]
    assert qc["failures"] == m["sample"]["counts"]["sampled"] == qc["failures_with_items"] + qc["errors"]
    assert qc["items"] > 0
    # the manifest shows QA per mode: batch at half of standard; what the jobs did not answer, online
    qa = m["teacher_modes"]["qa"]
    assert qa["by_mode"]["batch"]["requests"] > 0
    batch_mode = qa["by_mode"]["batch"]
    assert batch_mode["estimated_cost_usd"] * 2 == pytest.approx(batch_mode["standard_cost_usd"], rel=1e-3)
    assert m["teacher"]["qa"]["estimated_cost_usd"] == pytest.approx(qa["estimated_cost_usd"])
    assert qa["saving_usd"] > 0 and set(m["teacher_modes"]["probe"]["by_mode"]) == {"standard"}
