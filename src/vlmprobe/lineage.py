"""The run's QA dataset as an Airflow Asset: ``publish`` emits one event per run.

The event's ``extra`` says which run date it is, where the manifest and the QA files are, and the
manifest's counts, so a downstream DAG scheduled on :data:`QA_DATASET` knows what it got without
reading the manifest first::

    from airflow.sdk import dag, task
    from vlmprobe.lineage import QA_DATASET  # or the same Asset(name=..., uri=...) spelled out

    @dag(schedule=QA_DATASET)
    def train_on_new_qa():
        @task
        def show(triggering_asset_events=None):
            for event in triggering_asset_events[QA_DATASET]:
                print(event.extra["run_date"], event.extra["qa_items"], event.extra["qa_uris"])
        show()

    train_on_new_qa()

Cheap to import (the DAG file does, at parse time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

if TYPE_CHECKING:  # the DAG file imports this module at parse time: no pydantic models loaded for it
    from vlmprobe.contracts import Manifest

QA_DATASET = Asset(name="vlmprobe_qa_dataset", uri="vlmprobe://vlm_failure_pipeline/qa", group="vlmprobe")


def qa_event_extra(manifest: Manifest, manifest_uri: str) -> dict[str, Any]:
    """The Asset event's ``extra`` for a published run: where it is and the manifest's counts.

    Besides the counts of each step: the probe's input accounting (rows read, rows lost, files
    lost), the QA items the target failed (when the target check ran) and the teacher's run
    totals (requests, retries, 429s, tokens, estimated cost).
    """
    qa = manifest.qa
    check = qa.target_check
    teacher = manifest.teacher.run
    return {
        "run_date": manifest.run_date,
        "manifest_uri": manifest_uri,
        "qa_uris": list(manifest.outputs.qa),
        "qa_items": qa.counts.get("items", 0),
        "qa_items_checked": check.items_checked if check is not None else None,
        "qa_items_target_failed": check.items_target_failed if check is not None else None,
        "counts": {"probe": manifest.probe.counts.model_dump(), "sample": manifest.sample.counts.model_dump(),
                   "qa": dict(qa.counts)},
        "input": manifest.probe.input.model_dump(),
        "teacher": {"requests": teacher.requests, "retries": teacher.retries, "rate_limited": teacher.rate_limited,
                    "estimated_cost_usd": teacher.estimated_cost_usd},
        "tokens": manifest.tokens.model_dump(),
        "estimated_cost_usd": manifest.estimated_cost_usd,
        "models": manifest.models.model_dump(),
    }
