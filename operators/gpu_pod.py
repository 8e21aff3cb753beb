"""GpuPodOperator: a KubernetesPodOperator for vlmprobe's GPU steps, with a local pod mode.

The pod spec is a pure function of the task's rendered templates (params, run date, shard)
and the deployment settings: GPUs requested == limited, the GPU toleration, a memory-backed
``/dev/shm``, the data volume, and ``GEMINI_API_KEY`` from a Kubernetes Secret
(``secretKeyRef``, never a plain value).

Local pod mode (``VLMPROBE_POD_MODE=local``) builds the very same pod spec and runs its
container's command, arguments and environment as a subprocess of the worker, streaming its
output to the task log and reading its XCom return file. Secret-backed variables come from the
worker's own environment. ``make demo`` and the end-to-end tests use it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import models as k8s

from operators.settings import DeploymentSettings

GPU_RESOURCE = "nvidia.com/gpu"
XCOM_RETURN_FILE = "/airflow/xcom/return.json"
GEMINI_KEY_ENV = "GEMINI_API_KEY"

try:  # Airflow 3 task SDK
    from airflow.sdk.exceptions import AirflowException
except ImportError:  # pragma: no cover
    from airflow.exceptions import AirflowException


class GpuPodOperator(KubernetesPodOperator):
    """Run one vlmprobe step in a pod that asks for ``gpus`` GPUs (a number or a template).

    :param gpus: GPUs requested and limited (``nvidia.com/gpu``); 0 for a CPU-only pod.
    :param settings: deployment settings; read from ``VLMPROBE_*`` variables when omitted.
    :param memory: optional memory request and limit of the container, e.g. ``"64Gi"``.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "gpus")

    def __init__(
        self,
        *,
        gpus: int | str = 1,
        settings: DeploymentSettings | None = None,
        memory: str | None = None,
        **kwargs: Any,
    ) -> None:
        s = settings or DeploymentSettings.from_env()
        self.settings = s
        self.gpus = gpus
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        uses_gpu = str(gpus) != "0"
        if uses_gpu:
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
        if memory:
            requests["memory"] = limits["memory"] = memory
        env = [k8s.V1EnvVar(name="VLMPROBE_XCOM_FILE", value=XCOM_RETURN_FILE),
               k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1")]
        if s.gemini_base_url:
            env.append(k8s.V1EnvVar(name="GEMINI_BASE_URL", value=s.gemini_base_url))
        env.extend(kwargs.pop("env_vars", None) or [])
        defaults: dict[str, Any] = dict(
            namespace=s.namespace,
            image=s.worker_image,
            image_pull_policy=s.image_pull_policy,
            service_account_name=s.service_account,
            node_selector=s.node_selector or None,
            container_resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
            tolerations=[k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
            if uses_gpu else None,
            volumes=[
                k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=s.data_pvc)),
                # NCCL and DataLoader workers need far more shared memory than the default 64 MiB.
                k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                              size_limit=s.shm_size)),
            ],
            volume_mounts=[
                k8s.V1VolumeMount(name="data", mount_path=s.data_mount),
                k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            ],
            env_vars=env,
            # The worker image runs as a non-root user: let it write to the data volume.
            security_context=k8s.V1PodSecurityContext(fs_group=s.fs_group, run_as_non_root=True),
            priority_class_name=s.priority_class or None,
            secrets=[Secret("env", GEMINI_KEY_ENV, s.gemini_secret, s.gemini_secret_key)],
            labels={"app.kubernetes.io/name": "vlmprobe", "app.kubernetes.io/component": kwargs["task_id"]},
            pool=s.gpu_pool,
            # Pool slots count GPUs, so a backfill cannot hold more GPUs than the pool has. A
            # templated GPU count is only known at run time: give pool_slots for it explicitly.
            pool_slots=max(int(gpus), 1) if str(gpus).isdigit() else 1,
            do_xcom_push=True,
            get_logs=True,
            log_events_on_failure=True,
            on_finish_action="delete_succeeded_pod",
            durable=True,  # a restarted worker reattaches to the running pod instead of starting another
            # GPU nodes often come from an autoscaler: give scheduling and image pulls time.
            startup_timeout_seconds=1800,
            schedule_timeout_seconds=1800,
        )
        defaults.update(kwargs)
        super().__init__(**defaults)
        self._local_proc: subprocess.Popen | None = None

    # -- execution -----------------------------------------------------------------------------
    def execute(self, context: Any) -> Any:
        if self.settings.pod_mode == "local":
            return self.execute_local(context)
        return super().execute(context)

    def local_command(self, context: Any) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) of the pod's main container, as local pod mode runs it."""
        self.name = self._set_name(self.name)
        pod = self.build_pod_request_obj(context, dry_run=True)
        container = next(c for c in pod.spec.containers if c.name == self.base_container_name)
        argv = [*(container.command or []), *(container.args or [])]
        env = dict(os.environ)
        for var in container.env or []:
            ref = var.value_from.secret_key_ref if var.value_from else None
            if ref is not None:
                if not os.environ.get(var.name):
                    raise AirflowException(
                        f"{var.name} comes from Secret {ref.name!r} (key {ref.key!r}) in the cluster; in "
                        f"local pod mode set {var.name} in the worker's environment")
                continue  # already in env, from the worker
            env[var.name] = var.value or ""
        return argv, env

    def execute_local(self, context: Any) -> Any:
        argv, env = self.local_command(context)
        with tempfile.TemporaryDirectory(prefix="vlmprobe-xcom-") as tmp:
            xcom_file = os.path.join(tmp, "return.json")
            env["VLMPROBE_XCOM_FILE"] = xcom_file
            self.log.info("local pod mode: %s", shlex.join(argv))  # argv only: env may hold secrets
            with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1) as proc:
                self._local_proc = proc
                for line in proc.stdout:
                    self.log.info("%s", line.rstrip("\n"))
                rc = proc.wait()
            self._local_proc = None
            if rc != 0:
                raise AirflowException(f"task {self.task_id}: local pod command exited with code {rc}")
            if self.do_xcom_push and os.path.exists(xcom_file):
                with open(xcom_file) as f:
                    return json.load(f)
        return None

    def on_kill(self) -> None:
        if self._local_proc is not None:
            self._local_proc.terminate()
            return
        super().on_kill()
