"""Alerts: the failure webhook and the deadline callback post to the URL of the vlmprobe_alerts connection."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import logging
import threading
import types

import pendulum
import pytest

from vlmprobe.alerts import (FailureWebhook, deadline_alert, deadline_hours, deadline_missed, failure_payload,
                             post_json, webhook_url)

CONN_ENV = "AIRFLOW_CONN_VLMPROBE_ALERTS"


@pytest.fixture
def webhook():
    """A loopback HTTP server recording the JSON bodies posted to it; ``status`` sets its answer."""
    received: list[dict] = []
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/hooks/T1", received=received, state=state)
    server.shutdown()
    server.server_close()


def _failed_context(map_index=2):
    ti = types.SimpleNamespace(dag_id="vlm_failure_pipeline", task_id="qa.generate", run_id="scheduled__2026-11-25",
                               map_index=map_index, try_number=2,
                               log_url="http://airflow:8080/dags/vlm_failure_pipeline/runs/r/tasks/qa.generate/mapped/2")
    run = types.SimpleNamespace(data_interval_start=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
                                logical_date=pendulum.datetime(2026, 11, 25, 2, tz="UTC"), run_after=None,
                                dag_id="vlm_failure_pipeline", run_id="scheduled__2026-11-25")
    return {"ti": ti, "dag_run": run, "exception": RuntimeError("pod exited with code 1:\nboom")}


def test_failure_alert_posts_run_date_task_and_log_url(webhook, monkeypatch):
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "http", "host": webhook.url}))
    FailureWebhook().notify(_failed_context())
    (body,) = webhook.received
    assert body["run_date"] == "2026-11-25" and body["task_id"] == "qa.generate" and body["map_index"] == 2
    assert body["log_url"].endswith("/tasks/qa.generate/mapped/2") and body["try_number"] == 2
    assert body["error"] == "pod exited with code 1: boom"
    assert body["text"].startswith("vlm_failure_pipeline: task qa.generate[2] failed for run date 2026-11-25")


def test_no_connection_no_alert_and_no_error(webhook, monkeypatch):
    monkeypatch.delenv(CONN_ENV, raising=False)
    FailureWebhook().notify(_failed_context())
    assert webhook.received == []


def test_a_failing_webhook_never_fails_the_task(webhook, monkeypatch, caplog):
    webhook.state["status"] = 500
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "http", "host": webhook.url}))
    FailureWebhook().notify(_failed_context(map_index=-1))
    assert len(webhook.received) == 1 and webhook.received[0]["text"].startswith(
        "vlm_failure_pipeline: task qa.generate failed")
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9/closed"}))
    FailureWebhook().notify(_failed_context())  # connection refused: logged, not raised
    assert "alert webhook post failed" in caplog.text


def test_webhook_url_forms():
    from airflow.sdk import Connection

    assert webhook_url(Connection(conn_id="a", conn_type="http", host="https://hooks.example.com/services/X")) \
        == "https://hooks.example.com/services/X"
    assert webhook_url(Connection(conn_id="a", conn_type="https", host="hooks.example.com", port=8443,
                                  schema="services/X")) == "https://hooks.example.com:8443/services/X"
    assert webhook_url(Connection(conn_id="a", conn_type="http", extra=json.dumps({"webhook_url": "http://h/x"}))) \
        == "http://h/x"
    assert webhook_url(Connection(conn_id="a", conn_type="http")) is None


def test_deadline_missed_posts_the_run_and_its_deadline(webhook, monkeypatch):
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "http", "host": webhook.url}))
    # the context the scheduler hands the callback: the DAG run as the REST API shows it
    context = {"dag_run": {"dag_id": "vlm_failure_pipeline", "dag_run_id": "scheduled__2026-11-25T02:00:00+00:00",
                           "data_interval_start": "2026-11-25T02:00:00Z", "logical_date": "2026-11-25T02:00:00Z",
                           "run_after": "2026-11-26T02:00:00Z", "state": "running"},
               "deadline": {"id": "d1", "deadline_time": dt.datetime(2026, 11, 26, 10, tzinfo=dt.timezone.utc)}}
    asyncio.run(deadline_missed(context=context))
    (body,) = webhook.received
    assert body["event"] == "deadline_missed" and body["run_date"] == "2026-11-25" and body["state"] == "running"
    assert "has not finished by its deadline 2026-11-26 10:00:00+00:00" in body["text"]

    # Airflow keeps a failed run's deadline: the run's failing task has alerted, the deadline stays quiet
    context["dag_run"]["state"] = "failed"
    asyncio.run(deadline_missed(context=context))
    assert len(webhook.received) == 1


def test_deadline_hours_from_the_environment():
    assert deadline_hours({}) == 8.0
    assert deadline_hours({"VLMPROBE_RUN_DEADLINE_HOURS": "5.5"}) == 5.5
    with pytest.raises(ValueError, match="must be a number of hours"):
        deadline_hours({"VLMPROBE_RUN_DEADLINE_HOURS": "10:00"})
    assert deadline_alert(0) is None
    alert = deadline_alert(6)
    assert alert.interval == dt.timedelta(hours=6) and type(alert.reference).__name__ == "DagRunQueuedAtDeadline"


def test_failure_payload_without_a_task_instance_still_says_the_run():
    payload = failure_payload({"dag_run": types.SimpleNamespace(data_interval_start=None, logical_date=None,
                                                                 run_after=pendulum.datetime(2026, 11, 26, 9, tz="UTC"),
                                                                 dag_id="d", run_id="manual__x")})
    assert payload["run_date"] == "2026-11-25" and payload["run_id"] == "manual__x" and payload["task_id"] is None


def test_a_malformed_webhook_url_is_logged_without_its_secret_and_never_raised(caplog):
    url = "hooks.example.com/services/T000/B000/secret-token-42"  # no scheme
    with caplog.at_level(logging.WARNING, logger="vlmprobe.alerts"):
        assert post_json(url, {"text": "x"}) is False
    assert "alert webhook post failed" in caplog.text and "secret-token-42" not in caplog.text
