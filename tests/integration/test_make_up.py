"""`make up`: a local Airflow a newcomer can trigger; a run with a conf override through the REST API; `make down`.

Runs the Makefile targets as a person would, in a state folder and on a port of its own so a
`make up` of the user's is left alone. Minutes: four Airflow components and a whole DAG run on 2 CPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pendulum
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
DAG_ID = "vlm_failure_pipeline"
RUN_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids(state: Path) -> list[int]:
    return [int(p.read_text()) for p in (state / "pids").glob("*.pid")]


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def local_airflow(tmp_path):
    state, port = tmp_path / "up", _free_port()
    env = {**os.environ, "VLMPROBE_UP_DIR": str(state), "VLMPROBE_UP_PORT": str(port)}
    # the `make up` recipe, minus its install step (the test already runs in the venv it builds)
    up = subprocess.run(["make", "-s", "-o", ".venv/.installed-stamp", "up"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        password = json.loads((state / "secrets.json").read_text())["password"]
        assert f"login: admin / {password}" in up.stdout and f"http://127.0.0.1:{port}" in up.stdout
        yield {"state": state, "base_url": f"http://127.0.0.1:{port}", "password": password}
    finally:
        pids = _pids(state)
        down = subprocess.run(["make", "-s", "down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert pids and not [p for p in pids if _alive(p)]  # every process group it started is gone


def _client(base_url: str, password: str):
    from airflow_client import client

    req = urllib.request.Request(f"{base_url}/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"username": "admin", "password": password}).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        token = json.loads(resp.read())["access_token"]
    return client.ApiClient(client.Configuration(host=base_url, access_token=token))


def test_make_up_trigger_with_override_and_make_down(local_airflow):
    from airflow_client.client.api.asset_api import AssetApi
    from airflow_client.client.api.dag_api import DAGApi
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.api.extra_links_api import ExtraLinksApi
    from airflow_client.client.models.dag_patch_body import DAGPatchBody
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    from vlmprobe.io import read_json
    from vlmprobe.rundate import interval_start_for, run_date_of

    api = _client(local_airflow["base_url"], local_airflow["password"])
    dag = DAGApi(api).get_dag(DAG_ID)
    assert dag.is_paused  # nothing runs until someone asks

    # The logical date of the latest scheduled run: unpausing then schedules nothing more (catchup off,
    # and that interval has its run). A manual run at that time covers the day before it.
    logical_date = interval_start_for(pendulum.now("UTC"))
    run = DagRunApi(api).trigger_dag_run(DAG_ID, TriggerDAGRunPostBody(
        logical_date=logical_date, conf={"samples_per_key": 2, "num_shards": 1}))
    assert run.conf == {"samples_per_key": 2, "num_shards": 1}
    DAGApi(api).patch_dag(DAG_ID, DAGPatchBody(is_paused=False))

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (state := str(DagRunApi(api).get_dag_run(DAG_ID, run.dag_run_id).state.value)) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run still {state} after {RUN_TIMEOUT_S} s"
        time.sleep(5)
    assert state == "success", f"see {local_airflow['state']}/airflow/logs"
    runs = DagRunApi(api).get_dag_runs(DAG_ID).dag_runs
    assert [r.dag_run_id for r in runs] == [run.dag_run_id]  # no scheduled run piled on

    run_date = run_date_of(run.data_interval_start)
    manifest = read_json(str(local_airflow["state"] / "runs" / run_date / "manifest.json"))
    plan = read_json(str(local_airflow["state"] / "runs" / run_date / "sample" / "shards.json"))
    assert plan["samples_per_key"] == 2 and plan["num_shards"] == 1  # the override reached the step
    assert all(v["kept"] <= 2 for v in plan["per_key"].values())
    assert manifest["qa"]["counts"]["items"] > 0

    events = AssetApi(api).get_asset_events(source_dag_id=DAG_ID, source_run_id=run.dag_run_id).asset_events
    (event,) = events
    assert event.extra["run_date"] == run_date and event.extra["counts"]["qa"] == manifest["qa"]["counts"]

    # the publish task links the run's report: the button on the task's page, as the REST API serves it
    report = local_airflow["state"] / "runs" / run_date / "report.html"
    assert manifest["report"]["uri"] == str(report) and report.read_text().startswith("<!DOCTYPE html>")
    links = ExtraLinksApi(api).get_extra_links(DAG_ID, run.dag_run_id, "publish").extra_links
    assert links == {"Run report": report.as_uri()}
