"""Local pod mode: the pod spec's command and environment, run as a subprocess of the worker."""

from __future__ import annotations

import re
import sys

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from operators import DeploymentSettings, GpuPodOperator
from podrender import offline_context

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
SECRET = "sk-local-test-secret-value"
# Airflow's task log (structlog, on stdout): "<ts> [error    ] message [logger] loc=..."
TASK_LOG_LINE = re.compile(r"^\S+ \[(?P<level>\w+)\s*\] (?P<message>.*?)\s+\[airflow\.task")


def _op(dag, cmds, arguments, task_id="local_probe", conf=None, **kwargs):
    settings = kwargs.pop("settings", DeploymentSettings(pod_mode="local"))
    op = GpuPodOperator(task_id=task_id, settings=settings, gpus=2, cmds=cmds, arguments=arguments, **kwargs)
    ctx = offline_context(dag, op, RUN, conf)
    op.render_template_fields(ctx)
    return op, ctx


def _task_log(capfd) -> list[tuple[str, str]]:
    out = capfd.readouterr().out
    return [(m["level"], m["message"]) for line in out.splitlines() if (m := TASK_LOG_LINE.match(line))]


def test_local_command_is_the_pod_command_with_secret_from_worker_env(dag, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.setenv("HOME", "/home/airflow")
    op, ctx = _op(dag, ["vlmprobe"], ["publish", "--run-date", "{{ ds }}"])
    argv, env = op.local_command(ctx)
    assert argv == ["vlmprobe", "publish", "--run-date", "2026-11-25"]
    assert env["GEMINI_API_KEY"] == SECRET and env["PYTHONUNBUFFERED"] == "1"
    # no XCom file any more (no sidecar reads it) and the pod's own filesystem layout stays in the pod
    assert "VLMPROBE_XCOM_FILE" not in env
    assert env["HOME"] == "/home/airflow" and "TRITON_CACHE_DIR" not in env


def test_missing_secret_is_a_clear_error_without_retry(dag, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    op, ctx = _op(dag, ["true"], [])
    with pytest.raises(AirflowFailException, match="set GEMINI_API_KEY in the worker's environment"):
        op.local_command(ctx)


def test_dollar_text_reaches_the_process_verbatim(dag, monkeypatch):
    # The pod spec carries "$$(...)" (Kubernetes gives "$(...)" back); local mode undoes it the same way.
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    words = ["$(GEMINI_API_KEY)", "$$(GEMINI_API_KEY)", "a$b", "$", "$(", "${HOME}", "cost: $5"]
    op, ctx = _op(dag, [sys.executable], ["-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *words])
    argv, _ = op.local_command(ctx)
    assert argv[3:] == words
    assert SECRET not in " ".join(argv)


def test_execute_relays_pod_lines_at_their_level_without_the_pod_timestamp(dag, monkeypatch, capfd):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    script = (
        "import os, sys\n"
        "print('2026-11-25 02:00:01,000 INFO [vlmprobe.probe] [rank 0] loaded 12 rows')\n"
        "print('2026-11-25 02:00:02,000 WARNING [vlmprobe.teacher] [rank 0] 429, retrying in 2.0 s')\n"
        "print('2026-11-25 02:00:03,000 ERROR [vlmprobe.probe] [rank 0] record 7 failed')\n"
        "print('Traceback (most recent call last):')\n"
        "print('ValueError: image is empty')\n"
        "print('key length %d' % len(os.environ['GEMINI_API_KEY']))\n"
        "print('null')\n"  # what `vlmprobe` prints for a torchrun rank without a result
    )
    op, ctx = _op(dag, [sys.executable], ["-c", script])
    assert op.execute(ctx) is None  # no XCom: the steps hand over files
    log = _task_log(capfd)
    assert ("info", "[vlmprobe.probe] [rank 0] loaded 12 rows") in log
    assert ("warning", "[vlmprobe.teacher] [rank 0] 429, retrying in 2.0 s") in log
    assert ("error", "[vlmprobe.probe] [rank 0] record 7 failed") in log
    # a traceback continues the ERROR line before it
    assert ("error", "Traceback (most recent call last):") in log and ("error", "ValueError: image is empty") in log
    assert not any("2026-11-25 02:00" in message for _, message in log)  # one timestamp per line
    assert not any(message == "null" for _, message in log)
    assert SECRET not in "".join(message for _, message in log)


@pytest.mark.parametrize("code", [2, 3, 4])
def test_deterministic_exit_codes_fail_without_retry(dag, monkeypatch, code):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    script = (f"print('2026-11-25 02:00:03,000 ERROR [vlmprobe.cli] input folder /data/x does not exist'); "
              f"raise SystemExit({code})")
    op, ctx = _op(dag, [sys.executable], ["-c", script])
    with pytest.raises(AirflowFailException, match=f"exited with code {code}") as info:
        op.execute(ctx)
    assert "last error: [vlmprobe.cli] input folder /data/x does not exist" in str(info.value)


def test_other_failures_are_retried_and_name_the_last_error(dag, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    script = ("print('2026-11-25 02:00:03,000 ERROR [vlmprobe.probe] [rank 1] rank crashed'); "
              "print('RuntimeError: CUDA error: out of memory'); "
              "print('2026-11-25 02:00:04,000 INFO [vlmprobe.probe] [rank 0] shutting down'); raise SystemExit(1)")
    op, ctx = _op(dag, [sys.executable], ["-c", script])
    with pytest.raises(AirflowException, match="exited with code 1") as info:
        op.execute(ctx)
    assert not isinstance(info.value, AirflowFailException)
    assert "rank crashed (RuntimeError: CUDA error: out of memory)" in str(info.value)


def test_preflight_runs_first_and_its_failure_is_not_retried(dag, monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    marker = tmp_path / "ran"
    seen = []

    def preflight(context):
        seen.append(context["params"]["input_uri"])
        raise FileNotFoundError("input folder /data/input/2026-11-25 holds no parquet files")

    op, ctx = _op(dag, [sys.executable], ["-c", f"open({str(marker)!r}, 'w')"], preflight=preflight)
    with pytest.raises(AirflowFailException, match="preflight: input folder .* holds no parquet files"):
        op.execute(ctx)
    assert seen == ["/data/input"] and not marker.exists()


def test_passing_preflight_lets_the_command_run(dag, monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    marker = tmp_path / "ran"
    op, ctx = _op(dag, [sys.executable], ["-c", f"open({str(marker)!r}, 'w')"], preflight=lambda context: None)
    op.execute(ctx)
    assert marker.exists()


def test_conf_outside_the_allowed_prefixes_is_refused_before_the_command(dag, monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    marker = tmp_path / "ran"
    settings = DeploymentSettings(pod_mode="local", allowed_uri_prefixes=("/data", "gs://team-bucket/vqa"))
    op, ctx = _op(dag, [sys.executable], ["-c", f"open({str(marker)!r}, 'w')"], settings=settings,
                  conf={"input_uri": "gs://someone-else/exfil"})
    with pytest.raises(AirflowFailException, match="input_uri 'gs://someone-else/exfil' is outside"):
        op.execute(ctx)
    assert not marker.exists()


def test_env_values_are_escaped_once_however_often_the_pod_is_built(dag, monkeypatch):
    from kubernetes.client import models as k8s

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    op, ctx = _op(dag, ["true"], [], env_vars=[k8s.V1EnvVar(name="PRICE", value="$5 $(GEMINI_API_KEY)")])
    for _ in range(3):
        pod = op.build_pod_request_obj(ctx, dry_run=True)
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["PRICE"] == "$$5 $$(GEMINI_API_KEY)"
    _, local_env = op.local_command(ctx)
    assert local_env["PRICE"] == "$5 $(GEMINI_API_KEY)"


def test_a_local_pod_records_local_as_its_image(dag, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    op, ctx = _op(dag, ["true"], [])
    pushed = {}
    ctx["ti"].xcom_push = lambda key, value: pushed.update({key: value})
    op.execute(ctx)
    assert pushed["worker_image"]["image_id"] == "local" and pushed["worker_image"]["step"] == "qa"
