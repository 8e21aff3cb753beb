"""GpuPodOperator: a KubernetesPodOperator for vlmprobe's GPU steps, with a local pod mode.

The pod spec is a pure function of the task's rendered templates (params, run date, shard),
the run's type and the deployment settings:

- GPUs requested == limited, the GPU toleration, CPU and memory requests == limits from the
  settings (the probe's per GPU, times its GPU count at render time), a memory-backed
  ``/dev/shm``, the shared data volume and ``GEMINI_API_KEY`` from a Kubernetes Secret
  (``secretKeyRef``, never a plain value); ``HF_HUB_OFFLINE=1``: the target's pinned revision
  is staged once on the data volume and loaded from there (``vlmprobe.vlm.staging``);
- Pod Security Standards "restricted": a numeric non-root user, the shared group as fsGroup,
  no privilege escalation, every capability dropped, seccomp ``RuntimeDefault``, a read-only
  root filesystem with writable emptyDirs for ``/tmp`` and the caches; no XCom sidecar (the
  steps hand over files, never XComs), no service account token;
- every ``$`` of command, args and env values escaped, so no conf value can expand a
  ``$(VAR)`` of the pod's environment (:mod:`operators.policy`);
- the PriorityClass of the run's type (backfill below scheduled and manual runs) and an
  ``activeDeadlineSeconds`` of the task's execution timeout.

Before anything is built the conf is checked against the deployment's allowed URI prefixes
and target endpoints, then the optional ``preflight`` callable runs; either failing fails the
task without a retry (a store's 403 included; a preflight's storage timeout is retried). In
cluster mode the pod is deferred to the triggerer (no worker slot held while it runs). A pod that exits 2, 3 or 4 (bad input or config, teacher unusable,
daily quota spent: see ``vlmprobe.errors``) fails the task without a retry; other failures
are retried. The failure message names the pod's last ERROR line.

After the pod ran, its container's ``imageID`` (the image's digest) goes to the task's XCom
``worker_image`` for the run's provenance ("local" in local pod mode).

Local pod mode (``VLMPROBE_POD_MODE=local``) builds the very same pod spec and runs its
container's command, arguments and environment as a subprocess of the worker (``$$`` undone
as Kubernetes would), relaying its output to the task log. Secret-backed variables come from
the worker's own environment. ``make demo`` and the end-to-end tests use it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, Literal

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.providers.cncf.kubernetes.utils.container import get_container_termination_message
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager, PodPhase
from kubernetes.client import models as k8s

from operators.policy import ConfPolicyError, check_conf_policy, escape_dollars, expand_like_kubernetes
from operators.pod_logs import PodLogRelay, RelayingPodManager, VlmprobePodTrigger, logger_emit
from operators.settings import DeploymentSettings, multiply_quantity

try:  # Airflow 3 task SDK
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
except ImportError:  # pragma: no cover
    from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException

GPU_RESOURCE = "nvidia.com/gpu"
GEMINI_KEY_ENV = "GEMINI_API_KEY"
STEP_POD_LABEL = "app.kubernetes.io/name"
STEP_POD_LABEL_VALUE = "vlmprobe-step"  # the chart's NetworkPolicy selects pods by this label
SCRATCH_DIR = "/tmp"
CACHE_DIR = "/var/cache/vlmprobe"
# Exit codes of a vlmprobe step (CONTRACTS.md); 2, 3 and 4 are deterministic: never retried.
EXIT_MEANINGS = {
    1: "runtime failure",
    2: "bad usage, config or input",
    3: "teacher unusable",
    4: "teacher daily quota exhausted",
}
NO_RETRY_EXIT_CODES = frozenset({2, 3, 4})
# XCom key of the image a step's pod ran (publish records it in the manifest's provenance).
WORKER_IMAGE_XCOM = "worker_image"
# Env vars that describe the pod's own filesystem; local pod mode keeps the worker's values.
POD_FILESYSTEM_ENV = frozenset({"HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                                "HF_HOME", "MPLCONFIGDIR"})
# Log lines read back from a failed pod to name its last error.
FAILURE_LOG_TAIL_LINES = 2000
# The policy scanner's (checkov, `make test`) checks these pods do not meet, each with the reason,
# as in-place suppressions on the pod itself.
POLICY_SCAN_SKIPS = {
    "CKV_K8S_8": "a batch pod: it exits when its step ends; there is no service to probe for liveness",
    "CKV_K8S_9": "a batch pod: nothing connects to it, so there is nothing to be ready for",
    "CKV_K8S_15": "IfNotPresent with immutable release tags: a multi-GB CUDA image is pulled once per node",
    "CKV_K8S_35": "GEMINI_API_KEY comes from a secretKeyRef as google-genai reads it; it is never logged",
    "CKV_K8S_43": "the image is pinned by an immutable release tag set in the Helm values",
}


def container_image_id(pod: k8s.V1Pod | None, container_name: str) -> str | None:
    """The imageID the kubelet reports for a container (the image's registry digest), or None."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    for status in statuses:
        if status.name == container_name and status.image_id:
            return status.image_id
    return None


def container_exit_code(pod: k8s.V1Pod | None, container_name: str) -> tuple[int | None, str | None]:
    """(exit code, reason) of a terminated container in a pod's status, or (None, None)."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    for status in statuses:
        if status.name == container_name and status.state and status.state.terminated:
            return status.state.terminated.exit_code, status.state.terminated.reason
    return None, None


class GpuPodOperator(KubernetesPodOperator):
    """Run one vlmprobe step in a pod that asks for ``gpus`` GPUs (a number or a template).

    :param gpus: GPUs requested and limited (``nvidia.com/gpu``); 0 for a CPU-only pod.
    :param step: ``"probe"``: CPU and memory are the settings' per-GPU values times the GPU
        count; ``"qa"``: the settings' per-pod QA values.
    :param settings: deployment settings; read from ``VLMPROBE_*`` variables when omitted.
    :param cpu: CPU request and limit of the pod, overriding ``step``'s, e.g. ``"16"``.
    :param memory: memory request and limit of the pod, overriding ``step``'s, e.g. ``"64Gi"``.
    :param preflight: called with the task context before the pod is built, in both modes;
        ``AirflowFailException``, ``ValueError``, ``FileNotFoundError`` and a store's refusal (a
        403, :mod:`vlmprobe.io.access`) fail the task without a retry, with the exception's
        message; any other exception (a storage timeout) is retried as the task's retries allow.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "gpus")

    def __init__(
        self,
        *,
        gpus: int | str = 1,
        step: Literal["probe", "qa"] = "qa",
        settings: DeploymentSettings | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        preflight: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if step not in ("probe", "qa"):
            raise ValueError(f"step must be 'probe' or 'qa', got {step!r}")
        s = settings or DeploymentSettings.from_env()
        self.settings = s
        self.gpus = gpus
        self.step = step
        self.cpu = cpu
        self.memory = memory
        self.preflight = preflight
        cluster = s.pod_mode == "cluster"
        env = [
            k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            # The root filesystem is read-only: home, caches and compilers' scratch go to emptyDirs;
            # model weights to the shared volume, so ranks and nightly runs download them once.
            k8s.V1EnvVar(name="HOME", value=SCRATCH_DIR),
            k8s.V1EnvVar(name="XDG_CACHE_HOME", value=CACHE_DIR),
            k8s.V1EnvVar(name="TRITON_CACHE_DIR", value=f"{CACHE_DIR}/triton"),
            k8s.V1EnvVar(name="TORCHINDUCTOR_CACHE_DIR", value=f"{CACHE_DIR}/torchinductor"),
            k8s.V1EnvVar(name="MPLCONFIGDIR", value=f"{CACHE_DIR}/matplotlib"),
            k8s.V1EnvVar(name="HF_HOME", value=f"{s.data_mount.rstrip('/')}/hf-cache"),
            # The target loads from its revision staged under HF_HOME (vlmprobe.vlm.staging); no pod
            # asks the hub what a name means at start. Local pod mode sets it too.
            k8s.V1EnvVar(name="HF_HUB_OFFLINE", value="1"),
        ]
        if s.gemini_base_url:
            env.append(k8s.V1EnvVar(name="GEMINI_BASE_URL", value=s.gemini_base_url))
        env.extend(kwargs.pop("env_vars", None) or [])
        seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
        defaults: dict[str, Any] = dict(
            namespace=s.namespace,
            image=s.worker_image,
            image_pull_policy=s.image_pull_policy,
            service_account_name=s.service_account,
            automount_service_account_token=False,  # the steps never call the Kubernetes API
            node_selector=s.node_selector or None,
            volumes=[
                k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=s.data_pvc)),
                # NCCL and DataLoader workers need far more shared memory than the default 64 MiB.
                k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                              size_limit=s.shm_size)),
                k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=s.scratch_size)),
                k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=s.scratch_size)),
            ],
            volume_mounts=[
                k8s.V1VolumeMount(name="data", mount_path=s.data_mount),
                k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
                k8s.V1VolumeMount(name="tmp", mount_path=SCRATCH_DIR),
                k8s.V1VolumeMount(name="cache", mount_path=CACHE_DIR),
            ],
            env_vars=env,
            # One group on the shared volume for every step (the Airflow components carry it too):
            # the steps write group-writable files (vlmprobe.shared_volume) in setgid folders.
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=s.run_as_user, run_as_group=s.fs_group,
                fs_group=s.fs_group, supplemental_groups=[s.fs_group],
                # A large volume is not re-chowned at every pod start once its root is right.
                fs_group_change_policy="OnRootMismatch", seccomp_profile=seccomp),
            container_security_context=k8s.V1SecurityContext(
                run_as_non_root=True, run_as_user=s.run_as_user, run_as_group=s.fs_group,
                allow_privilege_escalation=False, privileged=False, read_only_root_filesystem=True,
                capabilities=k8s.V1Capabilities(drop=["ALL"]), seccomp_profile=seccomp),
            secrets=[Secret("env", GEMINI_KEY_ENV, s.gemini_secret, s.gemini_secret_key)],
            annotations={f"checkov.io/skip{i}": f"{check}={why}"
                         for i, (check, why) in enumerate(sorted(POLICY_SCAN_SKIPS.items()), start=1)},
            labels={STEP_POD_LABEL: STEP_POD_LABEL_VALUE, "app.kubernetes.io/part-of": "vlmprobe",
                    "app.kubernetes.io/component": kwargs["task_id"]},
            pool=s.gpu_pool,
            # Pool slots count GPUs, so a backfill cannot hold more GPUs than the pool has. A
            # templated GPU count is only known at run time: give pool_slots for it explicitly.
            pool_slots=max(int(gpus), 1) if str(gpus).isdigit() else 1,
            # Steps hand over files (sample_keys reads them), never XComs: no sidecar, no pods/exec.
            do_xcom_push=False,
            get_logs=True,
            log_events_on_failure=True,
            # Failed pods stay for `kubectl logs/describe`; the kubelet keeps the log tail in the
            # pod status too, which names the error even when the log is gone.
            termination_message_policy="FallbackToLogsOnError",
            on_finish_action="delete_succeeded_pod",
            durable=True,  # a restarted worker reattaches to the running pod instead of starting another
            # Long GPU pods wait in the triggerer, not in a worker slot; it fetches their logs.
            deferrable=cluster and s.deferrable,
            logging_interval=s.pod_log_interval or None,
            # GPU nodes often come from an autoscaler: give scheduling and image pulls time.
            startup_timeout_seconds=1800,
            schedule_timeout_seconds=1800,
        )
        defaults.update(kwargs)
        super().__init__(**defaults)
        self._local_proc: subprocess.Popen | None = None

    # -- the pod -------------------------------------------------------------------------------
    def _gpu_count(self) -> int:
        text = str(self.gpus).strip()
        if not text.isdigit():
            raise AirflowFailException(f"task {self.task_id}: gpus must render to a whole number, got {text!r}")
        return int(text)

    def _resources(self, gpus: int) -> k8s.V1ResourceRequirements:
        s = self.settings
        if self.step == "probe":
            per = max(gpus, 1)
            cpu = self.cpu or multiply_quantity(s.probe_cpu_per_gpu, per)
            memory = self.memory or multiply_quantity(s.probe_memory_per_gpu, per)
        else:
            cpu, memory = self.cpu or s.qa_cpu, self.memory or s.qa_memory
        # requests == limits: Guaranteed QoS, so a GPU pod is the last one a node evicts.
        amounts = {"cpu": cpu, "memory": memory}
        if gpus:
            amounts[GPU_RESOURCE] = str(gpus)
        return k8s.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))

    def _priority_class(self, context: Any) -> str | None:
        if self.priority_class_name:
            return self.priority_class_name
        run = context.get("dag_run") if context else None
        run_type = getattr(run, "run_type", None)
        run_type = str(getattr(run_type, "value", run_type) or "")
        if run_type == "backfill" and self.settings.backfill_priority_class:
            return self.settings.backfill_priority_class
        return self.settings.priority_class or None

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        gpus = self._gpu_count()
        base = next(c for c in pod.spec.containers if c.name == self.base_container_name)
        base.resources = self._resources(gpus)
        if gpus:
            toleration = k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
            pod.spec.tolerations = [*(pod.spec.tolerations or []), toleration]
        pod.spec.priority_class_name = self._priority_class(context)
        if pod.spec.active_deadline_seconds is None and self.execution_timeout is not None:
            # A pod can never outlive its task, even when nobody is left to delete it.
            pod.spec.active_deadline_seconds = int(self.execution_timeout.total_seconds())
        # Conf values reach the pod as rendered text: make every `$(VAR)` in it inert.
        for container in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            container.command = [escape_dollars(str(a)) for a in container.command] if container.command else None
            container.args = [escape_dollars(str(a)) for a in container.args] if container.args else None
            # New objects: the provider's pod shares its V1EnvVar objects with the operator.
            container.env = [k8s.V1EnvVar(name=var.name, value=escape_dollars(var.value)) if var.value is not None
                             else var for var in container.env or []] or None
        return pod

    # -- execution -----------------------------------------------------------------------------
    def execute(self, context: Any) -> Any:
        self._check_conf(context)
        self._run_preflight(context)
        if self.settings.pod_mode == "local":
            return self.execute_local(context)
        return super().execute(context)

    def _check_conf(self, context: Any) -> None:
        try:
            check_conf_policy(context.get("params") or {},
                              allowed_uri_prefixes=self.settings.allowed_uri_prefixes,
                              allowed_target_endpoints=self.settings.allowed_target_endpoints)
        except ConfPolicyError as e:
            raise AirflowFailException(f"conf refused before the pod started: {e}") from e

    def _run_preflight(self, context: Any) -> None:
        if self.preflight is None:
            return
        try:
            self.preflight(context)
        except (ValueError, FileNotFoundError) as e:  # deterministic, like a step's exit code 2
            raise AirflowFailException(f"preflight: {e}") from e
        except OSError as e:
            # A store refusing this worker (403: identity not bound) fails the same way every time.
            from vlmprobe.io.access import access_denied

            denied = access_denied(e)
            if denied is None:
                raise
            raise AirflowFailException(f"preflight: {denied}") from e
        # AirflowFailException passes as it is; anything else (a storage timeout, a 503) too, and
        # the task's retry applies

    def _step_failure(self, where: str, code: int | None, cause: str | None, reason: str | None = None,
                      fallback: str = "") -> AirflowException:
        """The exception a failed step ends the task with: no retry for exit codes 2, 3, 4."""
        if code is None:
            message = f"{where} failed" + (f": {fallback}" if fallback else "")
        else:
            meaning = EXIT_MEANINGS.get(code) or (reason if reason not in (None, "Error") else None)
            message = f"{where} exited with code {code}" + (f" ({meaning})" if meaning else "")
        if cause:
            message += f"; last error: {cause}"
        if code in NO_RETRY_EXIT_CODES:
            return AirflowFailException(f"{message}. Not retried: the same input fails the same way.")
        return AirflowException(message)

    # -- cluster mode: logs, failures, the trigger ------------------------------------------------
    @cached_property
    def pod_manager(self) -> PodManager:
        return RelayingPodManager(kube_client=self.client, callbacks=self.callbacks,
                                  relay=PodLogRelay(logger_emit(self.log)))

    def defer(self, *, trigger, method_name, kwargs=None, timeout=None):
        # The provider builds its own trigger; ours only changes how pod lines are logged.
        if type(trigger) is KubernetesPodTrigger:
            trigger = VlmprobePodTrigger(**trigger.serialize()[1])
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def _write_logs(self, pod: k8s.V1Pod, follow: bool = False, since_time: Any = None) -> None:
        """The pod's remaining log lines after the trigger fired, through the relay."""
        since_seconds = None
        if since_time:
            import datetime
            import math

            import pendulum

            if isinstance(since_time, str):
                since_time = pendulum.parse(since_time.replace("Z", "+00:00"))
            since_seconds = math.ceil((datetime.datetime.now(tz=datetime.UTC) - since_time).total_seconds())
        logs = self.client.read_namespaced_pod_log(
            name=pod.metadata.name, namespace=pod.metadata.namespace, container=self.base_container_name,
            follow=follow, timestamps=False, since_seconds=since_seconds, _preload_content=False)
        relay = self.pod_manager.relay
        for raw_line in logs:
            relay.feed(raw_line.decode("utf-8", errors="backslashreplace"))

    def _pod_last_error(self, pod: k8s.V1Pod | None, remote_pod: k8s.V1Pod | None) -> str | None:
        """The failed pod's last ERROR line: from its log tail, else from its termination message."""
        target = pod or remote_pod
        if target is None or target.metadata is None:
            return None
        try:
            text = self.client.read_namespaced_pod_log(
                name=target.metadata.name, namespace=target.metadata.namespace,
                container=self.base_container_name, tail_lines=FAILURE_LOG_TAIL_LINES, timestamps=False)
        except Exception:  # the pod may be gone: the kubelet kept the log tail in its status
            text = get_container_termination_message(remote_pod, self.base_container_name) if remote_pod else None
        return PodLogRelay().feed_all(str(text or "").splitlines()).last_error

    def record_image(self, context: Any, image_id: str) -> None:
        """XCom ``worker_image``: the step, map index, image and imageID, for the run's provenance."""
        ti = (context or {}).get("ti")
        if ti is None or not hasattr(ti, "xcom_push"):
            return
        ti.xcom_push(key=WORKER_IMAGE_XCOM, value={"step": self.step, "map_index": int(getattr(ti, "map_index", -1)),
                                                   "image": str(self.image), "image_id": image_id})

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None) -> None:
        image_id = container_image_id(remote_pod, self.base_container_name)
        if image_id:  # known once the container started, whether the step succeeded or not
            self.record_image(context, image_id)
        try:
            super().cleanup(pod=pod, remote_pod=remote_pod, xcom_result=xcom_result, context=context)
        except (AirflowFailException, AirflowSkipException):
            raise
        except AirflowException as e:
            code, reason = container_exit_code(remote_pod, self.base_container_name)
            name = (pod or remote_pod).metadata.name if (pod or remote_pod) is not None else "?"
            first_line = str(e).splitlines()[0] if str(e) else ""
            raise self._step_failure(f"task {self.task_id}: pod {name}", code,
                                     self._pod_last_error(pod, remote_pod), reason, first_line) from e

    def process_pod_deletion(self, pod: k8s.V1Pod, *, reraise: bool = True) -> bool:
        # A pod still pending or running when its task ends (execution timeout) is abandoned:
        # delete it so it frees its GPUs now. Finished pods follow on_finish_action.
        phase = pod.status.phase if pod is not None and pod.status else None
        if phase in (PodPhase.PENDING, PodPhase.RUNNING):
            try:
                self.log.info("Deleting pod %s, still %s when its task ended", pod.metadata.name, phase)
                self.pod_manager.delete_pod(pod)
                return True
            except Exception:
                if reraise:
                    raise
                self.log.exception("Could not delete pod %s", pod.metadata.name)
                return False
        return super().process_pod_deletion(pod, reraise=reraise)

    # -- local pod mode ------------------------------------------------------------------------
    def local_command(self, context: Any) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) of the pod's main container, as local pod mode runs it.

        The container's env is resolved like the kubelet's: in order, each value expanded with
        the ones before it; secret-backed values come from the worker's environment. Command
        and args are then expanded with it, which undoes the operator's ``$$`` escapes.
        """
        self.name = self._set_name(self.name)
        pod = self.build_pod_request_obj(context, dry_run=True)
        container = next(c for c in pod.spec.containers if c.name == self.base_container_name)
        pod_env: dict[str, str] = {}
        for var in container.env or []:
            ref = var.value_from.secret_key_ref if var.value_from else None
            if ref is not None:
                if not os.environ.get(var.name):
                    raise AirflowFailException(
                        f"{var.name} comes from Secret {ref.name!r} (key {ref.key!r}) in the cluster; in "
                        f"local pod mode set {var.name} in the worker's environment")
                pod_env[var.name] = os.environ[var.name]
                continue
            pod_env[var.name] = expand_like_kubernetes(var.value or "", pod_env.get)
        argv = [expand_like_kubernetes(a, pod_env.get) for a in [*(container.command or []), *(container.args or [])]]
        env = dict(os.environ)
        env.update({k: v for k, v in pod_env.items() if k not in POD_FILESYSTEM_ENV})
        return argv, env

    def execute_local(self, context: Any) -> Any:
        argv, env = self.local_command(context)
        self.log.info("local pod mode: %s", shlex.join(argv))  # argv only: env may hold secrets
        relay = PodLogRelay(logger_emit(self.log))
        with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1, errors="backslashreplace") as proc:
            self._local_proc = proc
            for line in proc.stdout:
                relay.feed(line)
            rc = proc.wait()
        self._local_proc = None
        if rc != 0:
            raise self._step_failure(f"task {self.task_id}: local pod command", rc, relay.last_error)
        self.record_image(context, "local")  # no image ran: the worker's own environment did
        return None

    def on_kill(self) -> None:
        if self._local_proc is not None:
            self._local_proc.terminate()
            return
        super().on_kill()
