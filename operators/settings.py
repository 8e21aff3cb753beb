"""Deployment settings, read from ``VLMPROBE_*`` environment variables at DAG parse time.

The Helm values set them on every Airflow component (see ``helm/``); reading them is cheap
(no Variables, no Connections, no network). Nothing here is secret: the Gemini API key lives
in a Kubernetes Secret named here and reaches pods only through ``secretKeyRef``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

POD_MODES = ("cluster", "local")


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
    priority_class: str = ""
    fs_group: int = 10001
    input_uri: str = ""
    output_uri: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentSettings:
        env = os.environ if env is None else env
        d = cls()

        def get(name: str, default: str) -> str:
            return env.get(f"VLMPROBE_{name}", "") or default

        mode = get("POD_MODE", d.pod_mode)
        if mode not in POD_MODES:
            raise ValueError(f"VLMPROBE_POD_MODE must be one of {POD_MODES}, got {mode!r}")
        try:
            node_selector = json.loads(get("NODE_SELECTOR", "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"VLMPROBE_NODE_SELECTOR must be a JSON object: {e}") from e
        if not isinstance(node_selector, dict):
            raise ValueError("VLMPROBE_NODE_SELECTOR must be a JSON object such as {\"pool\": \"gpu\"}")
        qa_gpus = get("QA_GPUS", str(d.qa_gpus))
        if not qa_gpus.isdigit():
            raise ValueError(f"VLMPROBE_QA_GPUS must be a whole number, got {qa_gpus!r}")
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
            qa_gpus=int(qa_gpus),
            shm_size=get("SHM_SIZE", d.shm_size),
            priority_class=get("PRIORITY_CLASS", d.priority_class),
            fs_group=int(fs_group),
            input_uri=get("INPUT_URI", d.input_uri),
            output_uri=get("OUTPUT_URI", d.output_uri),
        )
