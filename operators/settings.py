"""Deployment settings, read from ``VLMPROBE_*`` environment variables at DAG parse time.

The Helm values set them on every Airflow component (see ``helm/``); reading them is cheap
(no Variables, no Connections, no network). Nothing here is secret: the Gemini API key lives
in a Kubernetes Secret named here and reaches pods only through ``secretKeyRef``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

POD_MODES = ("cluster", "local")

# A Kubernetes resource quantity as the settings accept it: a plain or decimal number with an
# optional binary (Ki..Ei), decimal (k..E) or milli (m) suffix.
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")


def check_quantity(name: str, value: str) -> str:
    """``value`` if it is a Kubernetes quantity such as ``8``, ``500m`` or ``32Gi``; else ValueError."""
    if not _QUANTITY.match(value):
        raise ValueError(f"{name} must be a Kubernetes quantity such as 8, 500m or 32Gi, got {value!r}")
    return value


def multiply_quantity(value: str, factor: int) -> str:
    """``value`` times ``factor`` in the same unit: ``multiply_quantity("32Gi", 8) == "256Gi"``."""
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number = Decimal(match["number"]) * factor
    text = format(number.normalize(), "f") if number != number.to_integral() else str(int(number))
    return text + (match["suffix"] or "")


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class DeploymentSettings:
    pod_mode: str = "cluster"
    namespace: str = "vlmprobe"
    worker_image: str = "vlmprobe-worker:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "vlmprobe-worker"
    data_pvc: str = "vlmprobe-data"
    data_mount: str = "/data"
    node_selector: dict[str, str] = field(default_factory=dict)
    gemini_secret: str = "vlmprobe-gemini"
    gemini_secret_key: str = "api-key"
    gemini_base_url: str = ""
    gpu_pool: str = "default_pool"
    qa_gpus: int = 1
    shm_size: str = "32Gi"
    # Pods' PriorityClass for scheduled and manual runs, and for backfill runs (empty: none).
    priority_class: str = ""
    backfill_priority_class: str = ""
    # The user the step pods run as, and the group every step shares on the data volume
    # (pods' fsGroup; the Airflow components carry it as a supplemental group).
    run_as_user: int = 10001
    fs_group: int = 10001
    # Resources: the probe pod gets these per GPU (times its GPU count), a QA pod these per pod.
    probe_cpu_per_gpu: str = "8"
    probe_memory_per_gpu: str = "32Gi"
    qa_cpu: str = "4"
    qa_memory: str = "16Gi"
    # A QA shard's batch submit pod (qa_mode=batch): no GPU, it builds and uploads the shard's requests.
    qa_submit_cpu: str = "1"
    qa_submit_memory: str = "4Gi"
    # Size limit of each writable scratch emptyDir (/tmp and the cache folder).
    scratch_size: str = "20Gi"
    # Cluster mode: wait for pods in the triggerer (no worker slot held), fetching their logs
    # every pod_log_interval seconds (0: only when the pod ends).
    deferrable: bool = True
    pod_log_interval: int = 60
    # What a run's conf may name: URI prefixes for input_uri/output_uri and base URLs for
    # ``openai:`` target endpoints. Empty: anything.
    allowed_uri_prefixes: tuple[str, ...] = ()
    allowed_target_endpoints: tuple[str, ...] = ()
    input_uri: str = ""
    output_uri: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentSettings:
        env = os.environ if env is None else env
        d = cls()

        def get(name: str, default: str) -> str:
            return env.get(f"VLMPROBE_{name}", "") or default

        def whole(name: str, default: int) -> int:
            text = get(name, str(default))
            if not text.isdigit():
                raise ValueError(f"VLMPROBE_{name} must be a whole number, got {text!r}")
            return int(text)

        def quantity(name: str, default: str) -> str:
            return check_quantity(f"VLMPROBE_{name}", get(name, default))

        mode = get("POD_MODE", d.pod_mode)
        if mode not in POD_MODES:
            raise ValueError(f"VLMPROBE_POD_MODE must be one of {POD_MODES}, got {mode!r}")
        try:
            node_selector = json.loads(get("NODE_SELECTOR", "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"VLMPROBE_NODE_SELECTOR must be a JSON object: {e}") from e
        if not isinstance(node_selector, dict):
            raise ValueError("VLMPROBE_NODE_SELECTOR must be a JSON object such as {\"pool\": \"gpu\"}")
        deferrable = get("DEFERRABLE", "true").strip().lower()
        if deferrable not in ("true", "false"):
            raise ValueError(f"VLMPROBE_DEFERRABLE must be true or false, got {deferrable!r}")
        run_as_user = whole("RUN_AS_USER", d.run_as_user)
        if run_as_user == 0:
            raise ValueError("VLMPROBE_RUN_AS_USER must not be 0: step pods never run as root")
        fs_group = get("FS_GROUP", str(d.fs_group))
        if not fs_group.isdigit():
            raise ValueError(f"VLMPROBE_FS_GROUP must be a numeric group id, got {fs_group!r}")
        return cls(
            pod_mode=mode,
            namespace=get("NAMESPACE", d.namespace),
            worker_image=get("WORKER_IMAGE", d.worker_image),
            image_pull_policy=get("IMAGE_PULL_POLICY", d.image_pull_policy),
            service_account=get("SERVICE_ACCOUNT", d.service_account),
            data_pvc=get("DATA_PVC", d.data_pvc),
            data_mount=get("DATA_MOUNT", d.data_mount),
            node_selector={str(k): str(v) for k, v in node_selector.items()},
            gemini_secret=get("GEMINI_SECRET", d.gemini_secret),
            gemini_secret_key=get("GEMINI_SECRET_KEY", d.gemini_secret_key),
            gemini_base_url=get("GEMINI_BASE_URL", d.gemini_base_url),
            gpu_pool=get("GPU_POOL", d.gpu_pool),
            qa_gpus=whole("QA_GPUS", d.qa_gpus),
            shm_size=quantity("SHM_SIZE", d.shm_size),
            priority_class=get("PRIORITY_CLASS", d.priority_class),
            backfill_priority_class=get("BACKFILL_PRIORITY_CLASS", d.backfill_priority_class),
            run_as_user=run_as_user,
            fs_group=int(fs_group),
            probe_cpu_per_gpu=quantity("PROBE_CPU_PER_GPU", d.probe_cpu_per_gpu),
            probe_memory_per_gpu=quantity("PROBE_MEMORY_PER_GPU", d.probe_memory_per_gpu),
            qa_cpu=quantity("QA_CPU", d.qa_cpu),
            qa_memory=quantity("QA_MEMORY", d.qa_memory),
            qa_submit_cpu=quantity("QA_SUBMIT_CPU", d.qa_submit_cpu),
            qa_submit_memory=quantity("QA_SUBMIT_MEMORY", d.qa_submit_memory),
            scratch_size=quantity("SCRATCH_SIZE", d.scratch_size),
            deferrable=deferrable == "true",
            pod_log_interval=whole("POD_LOG_INTERVAL", d.pod_log_interval),
            allowed_uri_prefixes=_split_list(get("ALLOWED_URI_PREFIXES", "")),
            allowed_target_endpoints=_split_list(get("ALLOWED_TARGET_ENDPOINTS", "")),
            input_uri=get("INPUT_URI", d.input_uri),
            output_uri=get("OUTPUT_URI", d.output_uri),
        )
