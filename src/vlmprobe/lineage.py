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

The publish task also links the run's report (:mod:`vlmprobe.report`): :func:`report_linked_task`
is Airflow's ``@task`` whose operator has the extra link "Run report". Airflow 3 computes an
operator's extra links on the worker when the task ends (the task runner's ``finalize`` calls the
link's ``get_link`` and stores the URL as an XCom under the link's ``xcom_key``); the API server,
which never imports this package, reads that XCom back for the UI's button and for
``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links``. The URL is
:func:`vlmprobe.report.link.report_url` of the ``report_uri`` publish returned: empty (no button)
when the report could not be written or the task failed.

Cheap to import (the DAG file does, at parse time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import Asset, BaseOperatorLink
from airflow.sdk.bases.decorator import task_decorator_factory

if TYPE_CHECKING:  # the DAG file imports this module at parse time: no pydantic models loaded for it
    from vlmprobe.contracts import Manifest

QA_DATASET = Asset(name="vlmprobe_qa_dataset", uri="vlmprobe://vlm_failure_pipeline/qa", group="vlmprobe")


def qa_event_extra(manifest: Manifest, manifest_uri: str) -> dict[str, Any]:
    """The Asset event's ``extra`` for a published run: where it is (its manifest and report) and the manifest's counts.

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
        "report_uri": manifest.report.uri if manifest.report is not None else None,  # the run report, when written
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


class RunReportLink(BaseOperatorLink):
    """The "Run report" button of the publish task: the report's URL (:func:`vlmprobe.report.link.report_url`)."""

    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        # called on the worker as the task ends, with the operator that ran (see the module docstring)
        return getattr(operator, "report_link", None) or ""


class ReportLinkedPythonOperator(_PythonDecoratedOperator):
    """``@task``'s operator, plus the "Run report" link to the ``report_uri`` its callable returns."""

    operator_extra_links = (RunReportLink(),)

    def execute(self, context: Any) -> Any:
        result = super().execute(context)
        report_uri = result.get("report_uri") if isinstance(result, dict) else None
        if report_uri:
            from vlmprobe.report.link import report_url

            self.report_link = report_url(report_uri)
        return result


def report_linked_task(python_callable: Any = None, **kwargs: Any) -> Any:
    """``@task(...)`` whose task links the run report its callable returns as ``report_uri`` (the publish task)."""
    return task_decorator_factory(python_callable=python_callable, decorated_operator_class=ReportLinkedPythonOperator,
                                  **kwargs)
