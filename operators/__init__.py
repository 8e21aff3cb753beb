"""vlmprobe's pod operators: GPU pods on Kubernetes, or the same pod run as a local process.

Importable from the repository root (tests, ``make demo``) and from ``/opt/vlmprobe`` in the
Airflow image (``PYTHONPATH``). Cheap to import apart from the cncf.kubernetes provider.
"""

from operators.batch_wait import BatchSubmitPodOperator, BatchWaitOperator
from operators.gpu_pod import GpuPodOperator
from operators.settings import DeploymentSettings

__all__ = ["BatchSubmitPodOperator", "BatchWaitOperator", "DeploymentSettings", "GpuPodOperator"]
