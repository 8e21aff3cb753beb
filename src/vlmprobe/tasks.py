"""The Airflow worker's side of the light steps: one call per ``@task`` of the DAG.

Each function takes the task's params and DAG run, builds the step's typed config and runs it.
Imported inside the task bodies, never at DAG parse time.
"""

from __future__ import annotations

import logging
from typing import Any

from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.rundate import run_date_of
from vlmprobe.shared_volume import share_with_group

log = logging.getLogger("vlmprobe.tasks")


def _run_date(dag_run: Any) -> str:
    return run_date_of(getattr(dag_run, "logical_date", None), getattr(dag_run, "run_after", None))


def _pick(model: type, params: dict[str, Any], **extra: Any) -> Any:
    fields = model.model_fields
    return model.model_validate({**{k: v for k, v in params.items() if k in fields}, **extra})


def sample_keys_task(params: dict[str, Any], dag_run: Any) -> list[str]:
    """Step 2 for a DAG run; returns the shard indexes (as pod-argument strings) to map ``qa`` over.

    The whole plan, with its counts, is in ``sample/shards.json`` and the task log.
    """
    share_with_group()  # steps share one volume (vlmprobe.shared_volume)
    from vlmprobe.sample.run import sample_keys

    plan = sample_keys(_pick(SampleConfig, params, run_date=_run_date(dag_run)))
    log.info("shard plan %s: %s", plan["shard_plan_uri"], plan["counts"])
    return [str(s["shard_index"]) for s in plan["shards"]]


def publish_task(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Step 4 for a DAG run; returns the manifest's URI and the QA item count."""
    share_with_group()  # steps share one volume (vlmprobe.shared_volume)
    from vlmprobe.publish.run import publish

    return publish(_pick(PublishConfig, params, run_date=_run_date(dag_run)))
