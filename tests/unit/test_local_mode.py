"""Local pod mode: the pod spec's command and environment, run as a subprocess of the worker."""

from __future__ import annotations

import pendulum
import pytest

from operators import DeploymentSettings, GpuPodOperator
from podrender import offline_context

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
SECRET = "sk-local-test-secret-value"


def _op(dag, cmds, arguments, task_id="local_probe"):
    op = GpuPodOperator(task_id=task_id, settings=DeploymentSettings(pod_mode="local"), gpus=2,
                        cmds=cmds, arguments=arguments)
    ctx = offline_context(dag, op, RUN)
    op.render_template_fields(ctx)
    return op, ctx


def test_local_command_is_the_pod_command_with_secret_from_worker_env(dag, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    op, ctx = _op(dag, ["vlmprobe"], ["publish", "--run-date", "{{ ds }}"])
    argv, env = op.local_command(ctx)
    assert argv == ["vlmprobe", "publish", "--run-date", "2026-11-25"]
    assert env["GEMINI_API_KEY"] == SECRET and env["VLMPROBE_XCOM_FILE"] == "/airflow/xcom/return.json"


def test_missing_secret_is_a_clear_error(dag, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    op, ctx = _op(dag, ["true"], [])
    with pytest.raises(AirflowException, match="set GEMINI_API_KEY in the worker's environment"):
        op.local_command(ctx)


def test_execute_streams_logs_returns_xcom_and_never_logs_the_secret(dag, monkeypatch, capfd):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    script = ("import json, os; print('hello from the pod'); "
              "open(os.environ['VLMPROBE_XCOM_FILE'], 'w').write(json.dumps({'ok': len(os.environ['GEMINI_API_KEY'])}))")
    import sys

    op, ctx = _op(dag, [sys.executable], ["-c", script])
    result = op.execute(ctx)
    logs = "".join(capfd.readouterr())  # Airflow's structlog writes the task log to stdout
    assert result == {"ok": len(SECRET)}
    assert "hello from the pod" in logs
    assert SECRET not in logs


def test_failing_command_fails_the_task(dag, monkeypatch):
    import sys

    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    op, ctx = _op(dag, [sys.executable], ["-c", "raise SystemExit(3)"])
    with pytest.raises(AirflowException, match="exited with code 3"):
        op.execute(ctx)
