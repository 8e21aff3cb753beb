"""The QA batch in the DAG: a CPU submit pod only in batch mode, a wait that defers to the triggerer
with no secret in its kwargs, the trigger against the simulator (ready, deadline, refused key)."""

from __future__ import annotations

import asyncio
import copy
import json

import pendulum
import pytest
from pydantic import BaseModel

from operators.batch_wait import BatchJobTrigger, BatchSubmitPodOperator, BatchWaitOperator
from podrender import offline_context, render_pod
from vlmprobe.io import RunLayout, write_json
from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.batch import BatchClient, BatchRequest, display_prefix
from vlmprobe.teacher.retry import RetryPolicy

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
SECRET = "triggerer-secret-key-5512"


def _main(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def test_the_submit_pod_has_no_gpu_the_default_pool_and_the_key_from_its_secret(dag):
    _, pod = render_pod(dag, "qa.submit", RUN, {"qa_mode": "batch"}, {"shard_index": "3"})
    main = _main(pod)
    assert main["resources"]["requests"] == main["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert not any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"].get("tolerations") or [])
    args = main["args"]
    assert args[:5] == ["qa", "--shard-index", "3", "--qa-phase", "submit"]
    assert args[args.index("--qa-mode") + 1] == "batch"
    key = next(e for e in main["env"] if e["name"] == "GEMINI_API_KEY")
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["name"]
    task = dag.get_task("qa.submit")
    assert task.pool == "default_pool" and task.pool_slots == 1
    _, generate = render_pod(dag, "qa.generate", RUN, {}, {"shard_index": "3"})
    assert _main(generate)["args"][:5] == ["qa", "--shard-index", "3", "--qa-phase", "collect"]


def test_online_mode_skips_the_submit_before_any_pod(dag, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from operators.gpu_pod import GpuPodOperator

    def no_pod(self, context):
        raise AssertionError("a pod was started in online mode")

    monkeypatch.setattr(GpuPodOperator, "execute", no_pod)
    task = dag.get_task("qa.submit")
    with pytest.raises(AirflowSkipException, match="online"):
        BatchSubmitPodOperator.execute(task, {"params": {"qa_mode": "online"}})


def _wait(dag, tmp_path, **conf):
    task = copy.deepcopy(dag.get_task("qa.wait"))
    task.shard_index = "3"  # the mapped group's argument
    ctx = offline_context(dag, task, RUN, {"output_uri": str(tmp_path), **conf})
    task.render_template_fields(ctx)
    return task, ctx


def test_the_wait_renders_its_params_and_skips_in_online_mode(dag, tmp_path):
    from airflow.sdk.exceptions import AirflowSkipException

    task, ctx = _wait(dag, tmp_path, batch_deadline_h=2.5, batch_poll_s=7)
    assert (task.output_uri, task.run_date, task.shard_index, task.qa_mode) == (str(tmp_path), "2026-11-25", "3",
                                                                                "online")
    assert float(task.deadline_h) == 2.5 and float(task.poll_s) == 7
    with pytest.raises(AirflowSkipException):
        task.execute(ctx)


def _ledger(tmp_path, jobs: list[dict], started_at: float) -> None:
    uri = RunLayout(str(tmp_path), "2026-11-25").qa_batch_ledger(3)
    write_json(uri, {"version": 1, "model": "gemini-2.5-flash", "display_prefix": display_prefix("2026-11-25", "qa", 3),
                     "started_at": started_at, "inline_ok": True, "jobs": jobs})


def _job(name, state, cancelled_at=None):
    return {"display_name": f"d-{name}", "name": name, "state": state, "cancelled_at": cancelled_at, "keys": {}}


def test_the_wait_defers_on_running_jobs_with_no_secret_and_returns_when_nothing_runs(dag, tmp_path, monkeypatch):
    import time

    from airflow.sdk.exceptions import TaskDeferred

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    task, ctx = _wait(dag, tmp_path, qa_mode="batch", batch_deadline_h=2)
    assert task.execute(ctx) is None  # no ledger: the submit had nothing to send
    now = time.time()
    _ledger(tmp_path, [_job("batches/a", "JOB_STATE_SUCCEEDED"), _job("batches/b", "JOB_STATE_RUNNING"),
                       _job("batches/c", "JOB_STATE_PENDING", cancelled_at=now)], now)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchJobTrigger) and deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "operators.batch_wait.BatchJobTrigger" and kwargs["jobs"] == ["batches/b"]
    assert kwargs["deadline_at"] == pytest.approx(now + 2 * 3600)
    assert SECRET not in json.dumps(kwargs) and SECRET not in repr(trigger)
    # an intent without a job, or a deadline already passed: the collect has work now
    _ledger(tmp_path, [_job("batches/b", "JOB_STATE_RUNNING"), _job(None, "UNSUBMITTED")], now)
    assert task.execute(ctx) is None
    _ledger(tmp_path, [_job("batches/b", "JOB_STATE_RUNNING")], now - 3 * 3600)
    assert task.execute(ctx) is None


class Echo(BaseModel):
    text: str


def _submit(sim, tmp_path) -> str:
    async def go():
        async with BatchClient("gemini-2.5-flash", ledger_uri=str(tmp_path / "ledger.json"),
                               display_prefix=display_prefix("2026-11-25", "qa", 0), api_key="k",
                               base_url=sim.base_url, retry=RetryPolicy(base_delay=0.001, window_s=5)) as batch:
            status = await batch.submit([BatchRequest(f"k{i}", f"word{i}", Echo) for i in range(3)])
        return json.loads((tmp_path / "ledger.json").read_text())["jobs"][0]["name"], status

    name, _ = asyncio.run(go())
    return name


def _events(trigger: BatchJobTrigger) -> list:
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def test_the_trigger_fires_once_every_job_ended(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with GeminiSimulator(port=0, batch_pending_s=0.3, batch_running_s=0.2) as sim:
        name = _submit(sim, tmp_path)
        (event,) = _events(BatchJobTrigger([name], sim.base_url, None, 0.05))
    assert event.payload == {"status": "ready", "jobs": {name: "JOB_STATE_SUCCEEDED"}, "deadline_passed": False}
    assert SECRET not in caplog.text


def test_the_trigger_fires_at_the_deadline_of_a_job_that_stays_pending(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with GeminiSimulator(port=0, batch_stay_pending=True) as sim:
        name = _submit(sim, tmp_path)
        started = time.monotonic()
        (event,) = _events(BatchJobTrigger([name], sim.base_url, time.time() + 0.5, 30.0))
    assert time.monotonic() - started < 5
    assert event.payload == {"status": "ready", "jobs": {name: "JOB_STATE_PENDING"}, "deadline_passed": True}


@pytest.mark.parametrize("fail,env", [("403", SECRET), ("invalid_key", SECRET), (None, None)])
def test_a_refused_or_missing_key_fails_the_wait_without_a_retry(dag, tmp_path, monkeypatch, fail, env):
    from airflow.sdk.exceptions import AirflowFailException

    if env is None:
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("GEMINI_API_KEY", env)
    with GeminiSimulator(port=0, fail=fail) as sim:
        (event,) = _events(BatchJobTrigger(["batches/x"], sim.base_url, None, 0.05))
    assert event.payload["status"] == "refused" and SECRET not in json.dumps(event.payload)
    task, ctx = _wait(dag, tmp_path, qa_mode="batch")
    with pytest.raises(AirflowFailException, match="Not retried"):
        task.execute_complete(ctx, event.payload)
    assert task.execute_complete(ctx, {"status": "ready", "jobs": {}, "deadline_passed": False}) is None


def test_the_wait_operator_is_importable_without_google_genai():
    import subprocess
    import sys

    code = ("import sys; sys.modules['google.genai'] = None; import operators.batch_wait as w; "
            "import vlmprobe.teacher.batch.ledger as l; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    assert BatchWaitOperator.template_fields == ("output_uri", "run_date", "shard_index", "qa_mode", "deadline_h",
                                                 "poll_s")
