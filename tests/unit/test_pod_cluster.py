"""Cluster mode without a cluster: deferral, pod log levels, exit codes and cleanup.

The Kubernetes API is replaced by small fakes at the provider's seams (``hook``, ``client``,
``pod_manager``, ``get_or_create_pod``), so what is tested is our operator on the provider's
real code paths (cncf-kubernetes 10.25).
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import logging
import types

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from kubernetes.client import models as k8s

from operators import DeploymentSettings, GpuPodOperator
from operators.pod_logs import (
    PodLogRelay,
    RelayingAsyncPodManager,
    RelayingPodManager,
    VlmprobePodTrigger,
)
from podrender import offline_context

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
LINES = [
    "2026-11-25 02:00:01,000 INFO [vlmprobe.probe] [rank 0] 120/500 images, 4.1 img/s, ETA 00:01:32",
    "2026-11-25 02:00:02,500 WARNING [vlmprobe.teacher] [rank 3] 429 from Gemini, retrying in 2.0 s",
    "2026-11-25 02:00:03,000 ERROR [vlmprobe.probe] [rank 3] rank failed",
    "Traceback (most recent call last):",
    '  File "/opt/venv/lib/python3.11/site-packages/vlmprobe/probe/run.py", line 88, in run',
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "E1125 02:00:04.000000 4242 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1)",
    "[rank0]: 2026-11-25 02:00:05,000 INFO [vlmprobe.probe] [rank 0] stopping",
]
EXPECTED = [
    (logging.INFO, "[vlmprobe.probe] [rank 0] 120/500 images, 4.1 img/s, ETA 00:01:32"),
    (logging.WARNING, "[vlmprobe.teacher] [rank 3] 429 from Gemini, retrying in 2.0 s"),
    (logging.ERROR, "[vlmprobe.probe] [rank 3] rank failed"),
    (logging.ERROR, "Traceback (most recent call last):"),
    (logging.ERROR, '  File "/opt/venv/lib/python3.11/site-packages/vlmprobe/probe/run.py", line 88, in run'),
    (logging.ERROR, "RuntimeError: CUDA error: an illegal memory access was encountered"),
    (logging.ERROR, "torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1)"),
    (logging.INFO, "[vlmprobe.probe] [rank 0] stopping"),
]
LAST_ERROR = "[vlmprobe.probe] [rank 3] rank failed (RuntimeError: CUDA error: an illegal memory access was encountered)"


def _recorder():
    seen = []
    return seen, lambda level, message: seen.append((level, message))


# -- the relay -----------------------------------------------------------------------------------
def test_relay_keeps_levels_drops_timestamps_and_names_the_last_error():
    seen, emit = _recorder()
    relay = PodLogRelay(emit).feed_all([*LINES, "", "   ", "null"])
    assert seen == EXPECTED
    assert relay.last_error == LAST_ERROR


def test_relay_lines_without_a_level_start_at_info_and_cli_errors_are_errors():
    seen, emit = _recorder()
    relay = PodLogRelay(emit).feed_all(["W1125 torch compile cache miss", "vlmprobe probe: error: no parquet in /data/x"])
    assert seen == [(logging.INFO, "W1125 torch compile cache miss"),
                    (logging.ERROR, "vlmprobe probe: error: no parquet in /data/x")]
    assert relay.last_error == "vlmprobe probe: error: no parquet in /data/x"
    assert PodLogRelay().feed_all(LINES[:2]).last_error is None


def test_sync_pod_manager_relays_each_container_line():
    seen, emit = _recorder()
    manager = RelayingPodManager(kube_client=None, relay=PodLogRelay(emit))
    manager._log_message("\n".join(LINES[:3]), "base", True, None)
    assert seen == EXPECTED[:3]


def test_triggerer_pod_manager_relays_kubelet_lines_up_to_the_current_second():
    seen, emit = _recorder()
    manager = RelayingAsyncPodManager(async_hook=None, relay=PodLogRelay(emit))
    now = pendulum.datetime(2026, 11, 25, 2, 0, 9, 500000, tz="UTC")
    kubelet = [f"2026-11-25T02:00:0{i}.000000000Z {line}\n" for i, line in enumerate(LINES[:3], start=1)]
    kubelet.append(f"2026-11-25T02:00:09.100000000Z {LINES[7]}\n")  # this second: read by the next fetch
    manager._emit_container_logs(kubelet, now, "base")
    assert seen == EXPECTED[:3]


# -- the operator in cluster mode ------------------------------------------------------------------
class FakeHook:
    is_in_cluster = False

    def get_namespace(self):
        return None

    def get_pod(self, name, namespace):
        raise AssertionError("not expected")


class FakeClient:
    def __init__(self, log_text="", fail=False):
        self.log_text, self.fail, self.calls = log_text, fail, []

    def read_namespaced_pod_log(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise RuntimeError("pod gone")
        if kwargs.get("_preload_content") is False:
            return [line.encode() + b"\n" for line in self.log_text.splitlines()]
        return self.log_text


class FakePodManager:
    def __init__(self, relay=None):
        self.deleted, self.relay = [], relay or PodLogRelay()

    def delete_pod(self, pod):
        self.deleted.append(pod.metadata.name)

    def read_pod(self, pod):
        return pod

    def read_pod_events(self, pod):
        return types.SimpleNamespace(items=[])


def _cluster_op(dag, **kwargs):
    settings = kwargs.pop("settings", DeploymentSettings(pod_mode="cluster", pod_log_interval=30))
    op = GpuPodOperator(task_id="probe", settings=settings, step="probe", gpus=2, cmds=["torchrun"],
                        arguments=["--nproc_per_node=2"], kubernetes_conn_id=None,
                        execution_timeout=datetime.timedelta(hours=12), **kwargs)
    op.__dict__["hook"] = FakeHook()
    ctx = offline_context(dag, op, RUN)
    ctx["ti"].xcom_push = lambda key, value: None
    ctx["ti"].start_date = pendulum.now("UTC")
    op.render_template_fields(ctx)
    return op, ctx


def test_cluster_pods_defer_to_our_trigger(dag, monkeypatch):
    op, ctx = _cluster_op(dag)
    created = []
    monkeypatch.setattr(op, "get_or_create_pod", lambda pod_request_obj, context: created.append(pod_request_obj)
                        or pod_request_obj)
    with pytest.raises(TaskDeferred) as info:
        op.execute(ctx)
    trigger = info.value.trigger
    assert type(trigger) is VlmprobePodTrigger and info.value.method_name == "trigger_reentry"
    assert trigger.logging_interval == 30 and trigger.pod_name == created[0].metadata.name
    # the triggerer imports the trigger by its classpath and rebuilds it from the kwargs
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert isinstance(rebuilt.pod_manager, RelayingAsyncPodManager)


def test_preflight_failure_stops_before_any_pod(dag, monkeypatch):
    def preflight(context):
        raise ValueError("output_uri gs://x is not writable")

    op, ctx = _cluster_op(dag, preflight=preflight)
    monkeypatch.setattr(op, "get_or_create_pod", lambda **kw: pytest.fail("a pod was created"))
    with pytest.raises(AirflowFailException, match="preflight: output_uri gs://x is not writable"):
        op.execute(ctx)


def test_a_transient_preflight_error_is_left_to_the_retries(dag, monkeypatch):
    def preflight(context):
        raise TimeoutError("gs://x: read timed out")

    op, ctx = _cluster_op(dag, preflight=preflight)
    monkeypatch.setattr(op, "get_or_create_pod", lambda **kw: pytest.fail("a pod was created"))
    with pytest.raises(TimeoutError, match="read timed out"):  # not AirflowFailException: retried
        op.execute(ctx)


def test_local_settings_do_not_defer(dag):
    op = GpuPodOperator(task_id="t", settings=DeploymentSettings(pod_mode="local"), cmds=["true"])
    assert op.deferrable is False
    op = GpuPodOperator(task_id="t", settings=DeploymentSettings(pod_mode="cluster", deferrable=False), cmds=["true"])
    assert op.deferrable is False


def test_resumed_task_relays_the_remaining_log_lines(dag):
    op, _ = _cluster_op(dag)
    seen, emit = _recorder()
    op.__dict__["pod_manager"] = FakePodManager(PodLogRelay(emit))
    op.__dict__["client"] = FakeClient("\n".join(LINES[:3]))
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="probe-abc", namespace="vlmprobe"))
    op._write_logs(pod, follow=False, since_time=pendulum.now("UTC").subtract(seconds=30))
    assert seen == EXPECTED[:3]
    assert 29 <= op.client.calls[0]["since_seconds"] <= 32


def _terminated_pod(exit_code, phase="Failed", reason="Error", message=None):
    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code, reason=reason,
                                                                             message=message))
    status = k8s.V1ContainerStatus(name="base", state=state, image="i", image_id="", ready=False, restart_count=0)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="probe-abc", namespace="vlmprobe", labels={}),
                     status=k8s.V1PodStatus(phase=phase, container_statuses=[status]))


def _cleanup(op, pod):
    op.__dict__["pod_manager"] = FakePodManager()
    op.is_istio_enabled = lambda pod: False
    op.patch_already_checked = lambda pod, reraise=True: None
    op.cleanup(pod=pod, remote_pod=pod)


@pytest.mark.parametrize("code", [2, 3, 4])
def test_deterministic_exit_codes_are_not_retried(dag, code):
    op, _ = _cluster_op(dag)
    op.__dict__["client"] = FakeClient("\n".join(LINES[:3]))
    with pytest.raises(AirflowFailException, match=f"pod probe-abc exited with code {code}") as info:
        _cleanup(op, _terminated_pod(code))
    assert "last error: [vlmprobe.probe] [rank 3] rank failed" in str(info.value)


def test_other_exit_codes_are_retried_with_the_last_error(dag):
    op, _ = _cluster_op(dag)
    op.__dict__["client"] = FakeClient("\n".join(LINES))
    with pytest.raises(AirflowException, match="exited with code 1") as info:
        _cleanup(op, _terminated_pod(1))
    assert not isinstance(info.value, AirflowFailException)
    assert LAST_ERROR in str(info.value)


def test_out_of_memory_is_named_and_the_log_tail_comes_from_the_status_when_the_log_is_gone(dag):
    op, _ = _cluster_op(dag)
    op.__dict__["client"] = FakeClient(fail=True)
    pod = _terminated_pod(137, reason="OOMKilled", message="\n".join(LINES[:3]))
    with pytest.raises(AirflowException, match=r"exited with code 137 \(OOMKilled\)") as info:
        _cleanup(op, pod)
    assert "last error: [vlmprobe.probe] [rank 3] rank failed" in str(info.value)


def test_succeeded_pod_is_deleted_and_raises_nothing(dag):
    op, _ = _cluster_op(dag)
    pod = _terminated_pod(0, phase="Succeeded", reason="Completed")
    _cleanup(op, pod)
    assert op.pod_manager.deleted == ["probe-abc"]


def test_a_pod_still_running_when_its_task_ends_is_deleted(dag):
    op, _ = _cluster_op(dag)
    op.__dict__["pod_manager"] = FakePodManager()
    running = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="probe-abc", namespace="vlmprobe"),
                        status=k8s.V1PodStatus(phase="Running"))
    assert op.process_pod_deletion(running) is True and op.pod_manager.deleted == ["probe-abc"]
    failed = _terminated_pod(1)
    assert op.process_pod_deletion(failed) is False  # kept for kubectl logs/describe


def test_trigger_kill_with_a_read_only_role_says_how_to_stop_the_pod(capfd):
    class Forbidden(Exception):
        status = 403

    class Hook:
        async def delete_pod(self, **kwargs):
            raise Forbidden()

    trigger = VlmprobePodTrigger(pod_name="probe-abc", pod_namespace="vlmprobe", base_container_name="base",
                                 trigger_start_time=datetime.datetime.now(tz=datetime.UTC))
    trigger.__dict__["hook"] = Hook()
    asyncio.run(trigger.on_kill())
    out = capfd.readouterr().out  # Airflow's structlog writes to stdout
    assert "[warning" in out and "kubectl -n vlmprobe delete pod probe-abc" in out


def test_the_pods_image_digest_goes_to_xcom_for_the_provenance(dag):
    op, ctx = _cluster_op(dag)
    pushed = {}
    ctx["ti"].xcom_push = lambda key, value: pushed.update({key: value})
    pod = _terminated_pod(0, phase="Succeeded", reason="Completed")
    digest = "docker.io/ml/vlmprobe-worker@sha256:" + "ab" * 32
    pod.status.container_statuses[0].image_id = digest
    op.__dict__["pod_manager"] = FakePodManager()
    op.is_istio_enabled = lambda pod: False
    op.cleanup(pod=pod, remote_pod=pod, context=ctx)
    assert pushed["worker_image"] == {"step": "probe", "map_index": -1, "image": op.image, "image_id": digest}
