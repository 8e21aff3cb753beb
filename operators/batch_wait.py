"""The QA batch's Airflow side: a submit pod only in batch mode, and a wait for the shard's job in the triggerer.

``qa_mode=batch`` (:mod:`vlmprobe.qa.batch`) gives each shard of the ``qa`` group three tasks:

- ``qa.submit`` (:class:`BatchSubmitPodOperator`): ``vlmprobe qa --qa-phase submit`` in a CPU pod
  (no GPU, the deployment's ``VLMPROBE_QA_SUBMIT_CPU``/``_MEMORY``, the default pool). It reads the
  shard's images and builds and uploads its requests with the step image, and the API key stays
  where it already is: in the step pods. In online mode the task is skipped before any pod exists.
- ``qa.wait`` (:class:`BatchWaitOperator`): reads the shard's ledger on the worker (which jobs run,
  the deadline), then defers to :class:`BatchJobTrigger` in the triggerer: no pod, no worker slot
  while Gemini works. Skipped in online mode (its upstream is).
- ``qa.generate`` (the shard's GPU pod, ``--qa-phase collect``): collects, checks and writes the shard
  as online mode does. Its trigger rule is ``none_failed``, so in online mode it runs after the two
  skipped tasks exactly as before.

The trigger polls ``GET {base}/v1beta/batches/{id}`` with plain HTTP (``httpx``, which Airflow ships;
the Airflow image has no google-genai) every ``poll_s`` seconds and fires when every job has ended
(or Gemini no longer knows it) or the deadline passed. The API key comes from the triggerer's own
environment (``GEMINI_API_KEY``, set from the Gemini Secret with a ``secretKeyRef``: see
``helm/airflow-values.yaml``): it is never in the trigger's kwargs, its event, XCom, a rendered
template or a log line (error messages are redacted). A refused key fails the task without a retry;
transient errors (429, 5xx, timeouts) are retried at the next poll. Killing the wait leaves the
jobs alone: the shard's collect cancels what it no longer needs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from operators.gpu_pod import GpuPodOperator
from operators.settings import DeploymentSettings

try:  # Airflow 3 task SDK
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
except ImportError:  # pragma: no cover
    from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException

API_KEY_ENV = "GEMINI_API_KEY"
GEMINI_URL = "https://generativelanguage.googleapis.com"
ONLINE_SKIP = "qa_mode is online: no Batch API job for this shard"


class BatchSubmitPodOperator(GpuPodOperator):
    """The shard's batch submit as a step pod; skipped, with no pod, unless ``params.qa_mode`` is batch."""

    def execute(self, context: Any) -> Any:
        if (context.get("params") or {}).get("qa_mode") != "batch":
            raise AirflowSkipException(ONLINE_SKIP)
        return super().execute(context)


class BatchWaitOperator(BaseOperator):
    """Wait, deferred to the triggerer, for the Batch API jobs of one QA shard.

    :param output_uri: the run's ``output_uri`` (templated), where the shard's ledger is.
    :param run_date: the run date (templated).
    :param shard_index: the shard (templated; the mapped group's argument).
    :param qa_mode: ``params.qa_mode`` (templated): anything but ``batch`` skips the task.
    :param deadline_h: ``params.batch_deadline_h`` (templated): the trigger fires at the deadline.
    :param poll_s: ``params.batch_poll_s`` (templated): seconds between two polls.
    :param settings: deployment settings (the Gemini base URL); read from ``VLMPROBE_*`` when omitted.
    """

    template_fields: Sequence[str] = ("output_uri", "run_date", "shard_index", "qa_mode", "deadline_h", "poll_s")
    ui_color = "#e8f4fd"

    def __init__(self, *, output_uri: str, run_date: str, shard_index: Any, qa_mode: str, deadline_h: Any,
                 poll_s: Any, settings: DeploymentSettings | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output_uri = output_uri
        self.run_date = run_date
        self.shard_index = shard_index
        self.qa_mode = qa_mode
        self.deadline_h = deadline_h
        self.poll_s = poll_s
        self.base_url = (settings or DeploymentSettings.from_env()).gemini_base_url or GEMINI_URL

    def execute(self, context: Any) -> Any:
        if str(self.qa_mode) != "batch":
            raise AirflowSkipException(ONLINE_SKIP)
        from vlmprobe.io import RunLayout
        from vlmprobe.teacher.batch.ledger import jobs_to_watch

        ledger = RunLayout(str(self.output_uri), str(self.run_date)).qa_batch_ledger(int(self.shard_index))
        watch = jobs_to_watch(ledger, float(self.deadline_h))
        if watch.ready:
            self.log.info("qa shard %s: nothing to wait for (jobs running: %d, an intent without a job: %s); "
                          "the collect goes on", self.shard_index, len(watch.jobs), watch.unresolved)
            return None
        self.log.info("qa shard %s: waiting in the triggerer for %d Batch API job(s) %s, polled every %s s",
                      self.shard_index, len(watch.jobs), list(watch.jobs), self.poll_s)
        self.defer(trigger=BatchJobTrigger(jobs=list(watch.jobs), base_url=self.base_url,
                                           deadline_at=watch.deadline_at, poll_s=float(self.poll_s)),
                   method_name="execute_complete")
        return None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        event = event or {}
        if event.get("status") == "refused":
            raise AirflowFailException(f"qa shard {self.shard_index}: {event.get('message')}. Not retried.")
        if event.get("status") != "ready":
            raise AirflowException(f"qa shard {self.shard_index}: the wait ended with {event!r}")
        self.log.info("qa shard %s: Batch API jobs %s%s", self.shard_index, event.get("jobs"),
                      "; the deadline passed: the collect cancels what runs and sends it online"
                      if event.get("deadline_passed") else "")


class BatchJobTrigger(BaseTrigger):
    """Polls Batch API jobs until all ended or ``deadline_at`` (epoch s) passed; fires once.

    Events: ``{"status": "ready", "jobs": {name: JOB_STATE_*}, "deadline_passed": bool}``, or
    ``{"status": "refused", "message": ...}`` when Gemini refuses the key (400, 401, 403).
    """

    def __init__(self, jobs: list[str], base_url: str, deadline_at: float | None, poll_s: float) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.base_url = base_url.rstrip("/")
        self.deadline_at = deadline_at
        self.poll_s = poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.{type(self).__name__}",
                {"jobs": self.jobs, "base_url": self.base_url, "deadline_at": self.deadline_at, "poll_s": self.poll_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import httpx

        from vlmprobe.teacher.batch.ledger import ENDED, GONE, job_state
        from vlmprobe.teacher.results import one_line, redact

        key = os.environ.get(API_KEY_ENV)
        if not key:
            yield TriggerEvent({"status": "refused", "message": f"{API_KEY_ENV} is not set in the triggerer's "
                                "environment (helm/airflow-values.yaml: triggerer.env from the Gemini Secret)"})
            return
        states: dict[str, str] = {}
        pending = set(self.jobs)
        async with httpx.AsyncClient(base_url=self.base_url, headers={"x-goog-api-key": key}, timeout=60) as http:
            while True:
                for name in sorted(pending):
                    try:
                        response = await http.get(f"/v1beta/{name}")
                    except httpx.HTTPError as e:  # the next poll tries again
                        self.log.warning("Batch API: could not read %s (%s); trying again", name, type(e).__name__)
                        continue
                    if response.status_code == 404:
                        states[name] = GONE
                    elif response.status_code in (400, 401, 403):
                        message = one_line(redact(response.text, key))
                        yield TriggerEvent({"status": "refused", "message": f"Gemini refused the API key reading "
                                            f"{name}: HTTP {response.status_code}: {message}"})
                        return
                    elif response.status_code != 200:
                        self.log.warning("Batch API: %s answered HTTP %d; trying again", name, response.status_code)
                        continue
                    else:
                        metadata = response.json().get("metadata") or {}
                        states[name] = job_state(str(metadata.get("state") or "JOB_STATE_UNSPECIFIED"))
                    if states[name] in ENDED:
                        pending.discard(name)
                now = time.time()
                past = self.deadline_at is not None and now >= self.deadline_at
                if not pending or past:
                    yield TriggerEvent({"status": "ready", "jobs": dict(sorted(states.items())),
                                        "deadline_passed": bool(pending) and past})
                    return
                wait = self.poll_s if self.deadline_at is None else min(self.poll_s, self.deadline_at - now)
                await asyncio.sleep(max(wait, 0.0))
