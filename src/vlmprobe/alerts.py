"""Alerts: a webhook post when a task fails for good, and when a run misses its deadline.

The webhook's URL lives in an Airflow Connection (:data:`ALERTS_CONN_ID`, ``vlmprobe_alerts``),
looked up only when there is something to send — never at DAG parse time. No connection: no
alert, and nothing fails. Any JSON webhook works; the payload's ``text`` is what Slack-style
incoming webhooks show::

    airflow connections add vlmprobe_alerts --conn-type http \\
        --conn-host 'https://hooks.example.com/services/T000/B000/XXXX'

(``--conn-extra '{"webhook_url": "https://…"}'`` works too.) A failed post is logged, never
raised: an alert must not change a task's outcome.

- :class:`FailureWebhook` — the DAG's ``on_failure_callback`` (runs in the task's process, after
  the last try): run date, task, map index, try, error and the task log's URL.
- :func:`deadline_missed` — the ``AsyncCallback`` of the DAG's ``DeadlineAlert`` (runs in the
  triggerer): a run still not finished ``VLMPROBE_RUN_DEADLINE_HOURS`` after it was queued.
  Airflow (3.3.2) prunes a run's deadlines only when the run succeeds, so a run that failed
  earlier still reaches its deadline: that run's failing task has posted already, and the
  deadline posts nothing more (a failed run that was cleared is running again, and does post).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import urllib.request
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseNotifier

from vlmprobe.rundate import run_date_of, run_date_of_dag_run

log = logging.getLogger("vlmprobe.alerts")

ALERTS_CONN_ID = "vlmprobe_alerts"
DEADLINE_ENV = "VLMPROBE_RUN_DEADLINE_HOURS"
DEFAULT_DEADLINE_HOURS = 8.0  # queued at 02:00 UTC → must be done by 10:00 UTC
POST_TIMEOUT_S = 10.0


def deadline_hours(env: Mapping[str, str] | None = None) -> float:
    """Hours a run may take from being queued, from ``VLMPROBE_RUN_DEADLINE_HOURS``; 0 = no deadline."""
    raw = (os.environ if env is None else env).get(DEADLINE_ENV, "").strip()
    if not raw:
        return DEFAULT_DEADLINE_HOURS
    try:
        hours = float(raw)
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV} must be a number of hours (0 turns the deadline off), got {raw!r}") from None
    if hours < 0:
        raise ValueError(f"{DEADLINE_ENV} must not be negative, got {raw!r}")
    return hours


def webhook_url(conn: Any) -> str | None:
    """The URL a connection names: ``extra.webhook_url``, a host that is a whole URL, or host+port+path."""
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    if extra.get("webhook_url"):
        return str(extra["webhook_url"])
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" in host:
        return host
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "https"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.lstrip('/')}" if conn.schema else ""
    return f"{scheme}://{host}{port}{path}"


def _not_found_errors() -> tuple[type[BaseException], ...]:
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    return AirflowNotFoundException, AirflowRuntimeError


def lookup_webhook(conn_id: str = ALERTS_CONN_ID) -> str | None:
    """The webhook URL of connection ``conn_id``, or None when there is no such connection."""
    from airflow.sdk import BaseHook

    try:
        return webhook_url(BaseHook.get_connection(conn_id))
    except _not_found_errors():
        return None


async def alookup_webhook(conn_id: str = ALERTS_CONN_ID) -> str | None:
    """:func:`lookup_webhook` for the triggerer's event loop."""
    from airflow.sdk import BaseHook

    try:
        return webhook_url(await BaseHook.aget_connection(conn_id))
    except _not_found_errors():
        return None


def post_json(url: str, payload: Mapping[str, Any], timeout_s: float = POST_TIMEOUT_S) -> bool:
    """POST ``payload`` as JSON; True on a 2xx answer. Failures are logged, never raised.

    The URL is a secret (a Slack-style webhook carries its token in the path): no message names it.
    """
    body = json.dumps(payload, default=str).encode()
    try:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            ok = 200 <= resp.status < 300
    except Exception as e:  # an alert must never fail the task it reports on
        log.warning("alert webhook post failed: %s: %s", type(e).__name__, str(e).replace(url, "<webhook URL>"))
        return False
    if not ok:
        log.warning("alert webhook answered HTTP %s", resp.status)
    return ok


def failure_payload(context: Mapping[str, Any]) -> dict[str, Any]:
    """What a failed task's alert says: run date, task (and map index), try, error, log URL."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    try:
        run_date = run_date_of_dag_run(dag_run)
    except ValueError:
        run_date = None
    task_id = getattr(ti, "task_id", None)
    map_index = getattr(ti, "map_index", -1)
    if map_index is None:
        map_index = -1
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None)
    try:
        log_url = getattr(ti, "log_url", None)
    except Exception:  # needs Airflow's config; the alert goes out without it
        log_url = None
    error = context.get("exception")
    error_text = " ".join(str(error).split())[:500] if error is not None else None
    task = f"{task_id}[{map_index}]" if map_index >= 0 else f"{task_id}"
    text = f"{dag_id}: task {task} failed for run date {run_date} (run {run_id})"
    if error_text:
        text += f": {error_text}"
    if log_url:
        text += f" — log: {log_url}"
    return {"text": text, "event": "task_failed", "dag_id": dag_id, "run_id": run_id, "run_date": run_date,
            "task_id": task_id, "map_index": map_index, "try_number": getattr(ti, "try_number", None),
            "error": error_text, "log_url": log_url}


class FailureWebhook(BaseNotifier):
    """``on_failure_callback``: post :func:`failure_payload` to the ``vlmprobe_alerts`` webhook.

    Off (a debug line, nothing else) when the connection does not exist.
    """

    def __init__(self, conn_id: str = ALERTS_CONN_ID) -> None:
        super().__init__()
        self.conn_id = conn_id

    def notify(self, context: Mapping[str, Any]) -> None:
        url = lookup_webhook(self.conn_id)
        if not url:
            log.debug("no %s connection: failure alert not sent", self.conn_id)
            return
        payload = failure_payload(context)
        if post_json(url, payload):
            log.info("failure alert sent: %s", payload["text"])


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def deadline_payload(context: Mapping[str, Any]) -> dict[str, Any]:
    """What a missed deadline's alert says; ``context`` is the scheduler's (``dag_run`` as JSON)."""
    run = context.get("dag_run") or {}
    try:
        run_date = run_date_of(_parse_time(run.get("data_interval_start")), _parse_time(run.get("logical_date")),
                               _parse_time(run.get("run_after")))
    except ValueError:
        run_date = None
    deadline = (context.get("deadline") or {}).get("deadline_time")
    text = (f"{run.get('dag_id')}: run {run.get('dag_run_id')} for run date {run_date} has not finished by "
            f"its deadline {deadline} (state {run.get('state')})")
    return {"text": text, "event": "deadline_missed", "dag_id": run.get("dag_id"), "run_id": run.get("dag_run_id"),
            "run_date": run_date, "deadline": str(deadline) if deadline else None, "state": run.get("state")}


async def deadline_missed(context: Mapping[str, Any] | None = None, conn_id: str = ALERTS_CONN_ID) -> None:
    """``AsyncCallback`` of the DAG's deadline: post :func:`deadline_payload` to the webhook."""
    payload = deadline_payload(context or {})
    if payload["state"] == "failed":  # its failing task has alerted already (see the module docstring)
        log.info("%s: not posted, the run failed before its deadline and its task alerted", payload["text"])
        return
    log.warning("%s", payload["text"])
    url = await alookup_webhook(conn_id)
    if url:
        await asyncio.to_thread(post_json, url, payload)


def deadline_alert(hours: float | None = None) -> Any:
    """The DAG's ``DeadlineAlert`` (None when the deadline is off): runs must end ``hours`` after queueing."""
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    hours = deadline_hours() if hours is None else hours
    if hours <= 0:
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=dt.timedelta(hours=hours),
                         callback=AsyncCallback(deadline_missed), name="vlmprobe run deadline")
