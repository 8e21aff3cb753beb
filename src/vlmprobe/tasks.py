"""The Airflow worker's side of the light steps: one call per ``@task`` of the DAG.

Each function takes the task's params and DAG run, checks the conf (unknown keys, URI forms),
builds the step's typed config and runs it. A deterministic failure (a :class:`VlmprobeError`
with exit code 2, 3 or 4, a bad config) becomes ``AirflowFailException``: the task fails without
a retry. Imported inside the task bodies, never at DAG parse time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.errors import DETERMINISTIC_EXIT_CODES, UsageError, exit_code_for
from vlmprobe.io.access import access_denied
from vlmprobe.preflight import check_conf
from vlmprobe.rundate import run_date_of_dag_run
from vlmprobe.shared_volume import share_with_group

log = logging.getLogger("vlmprobe.tasks")


@contextlib.contextmanager
def fail_without_retry(step: str) -> Iterator[None]:
    """Fail the task without a retry on a deterministic failure (exit code 2, 3 or 4 in the CLI's terms).

    ``AirflowFailException`` carries the step and the message; anything else propagates as it is
    and the task's retries apply.
    """
    try:
        yield
    except Exception as e:
        e = access_denied(e) or e  # a store's 403: deterministic, one line with the URI and identity
        code, _ = exit_code_for(e)
        if code not in DETERMINISTIC_EXIT_CODES:
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{step}: {' '.join(str(e).split())}") from e


def _pick(model: type, params: Mapping[str, Any], **extra: Any) -> Any:
    fields = model.model_fields
    try:
        return model.model_validate({**{k: v for k, v in params.items() if k in fields}, **extra})
    except ValidationError as e:
        raise UsageError(f"invalid params for {model.__name__}: {e}") from e


def sample_keys_task(params: Mapping[str, Any], dag_run: Any) -> list[str]:
    """Step 2 for a DAG run; returns the shard indexes (as pod-argument strings) to map ``qa`` over.

    The whole plan, with its counts, is in ``sample/shards.json`` and the task log.
    """
    share_with_group()  # steps share one volume (vlmprobe.shared_volume)
    from vlmprobe.sample.run import sample_keys

    with fail_without_retry("sample_keys"):
        check_conf(params, getattr(dag_run, "conf", None))
        plan = sample_keys(_pick(SampleConfig, params, run_date=run_date_of_dag_run(dag_run)))
    log.info("shard plan %s: %s", plan["shard_plan_uri"], plan["counts"])
    return [str(s["shard_index"]) for s in plan["shards"]]


def publish_task(params: Mapping[str, Any], dag_run: Any, outlet_events: Any = None) -> dict[str, Any]:
    """Step 4 for a DAG run; returns the manifest's URI and the QA item count.

    With ``outlet_events`` (the task's context), the run's :data:`~vlmprobe.lineage.QA_DATASET`
    event carries where the dataset is and the manifest's counts.
    """
    share_with_group()  # steps share one volume (vlmprobe.shared_volume)
    from vlmprobe.contracts import Manifest
    from vlmprobe.publish.run import publish

    with fail_without_retry("publish"):
        check_conf(params, getattr(dag_run, "conf", None))
        result = publish(_pick(PublishConfig, params, run_date=run_date_of_dag_run(dag_run)))
    if outlet_events is not None:
        from vlmprobe.lineage import QA_DATASET, qa_event_extra

        extra = qa_event_extra(Manifest.read(result["manifest_uri"]), result["manifest_uri"])
        outlet_events[QA_DATASET].extra = extra
        log.info("asset %s: run date %s, %d QA items", QA_DATASET.name, extra["run_date"], extra["qa_items"])
    return result
