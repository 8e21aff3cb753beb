"""A shard's Batch API ledger: its format, reading and writing it, and what a waiter watches in it.

The ledger (``version`` 1) is one JSON file per shard, written through :mod:`vlmprobe.io` (local
paths, ``gs://``, ``s3://``)::

    {"version": 1, "model": "gemini-2.5-flash", "display_prefix": "vlmprobe-2026-12-01-qa-shard-00003",
     "started_at": 1764547200.0, "inline_ok": true,
     "jobs": [{"display_name": "vlmprobe-2026-12-01-qa-shard-00003-j00-3f2a9c0d1e4b", "mode": "file",
               "request_count": 2, "requests_sha256": "...", "keys": {"k1": "<sha256>", "k2": "<sha256>"},
               "intent_at": ..., "input_file": "files/...", "name": "batches/...", "created_at": ...,
               "state": "JOB_STATE_SUCCEEDED", "error": null, "results_uri": "....results.jsonl",
               "collected_at": ..., "answered": 2, "failed": 0, "unmatched": 0, "usage": {...},
               "cost_usd": 0.0001, "cancelled_at": null}]}

A job's results, once read, are kept next to the ledger (``results_uri``, lines ``{"key",
"sha256", "response"|"error"}``), so a later collect never downloads them again.

No google-genai here: the Airflow side (the DAG's wait for a shard's jobs, :func:`jobs_to_watch`)
reads the ledger without the SDK. States are google-genai's ``JOB_STATE_*`` names (it maps
``BATCH_STATE_*`` to them); the Batch API's own ``BATCH_STATE_*`` names map with :func:`job_state`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from vlmprobe.errors import VlmprobeError

API_KEY_ENV = "GEMINI_API_KEY"
BASE_URL_ENV = "GEMINI_BASE_URL"
LEDGER_VERSION = 1
INLINE_LIMIT_BYTES = 20_000_000  # Gemini's limit on an inline batch request
UNSUBMITTED = "UNSUBMITTED"  # a ledger intent whose job is not (yet) known to exist
GONE = "GONE"  # a job Gemini no longer knows (404): deleted, or its results with it
NOT_CREATED = "NOT_CREATED"  # an intent dropped before its job was created (its requests changed)
ENDED = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
                   "JOB_STATE_PARTIALLY_SUCCEEDED", GONE})
JOB_REASONS = {"JOB_STATE_FAILED": "job_failed", "JOB_STATE_EXPIRED": "job_expired",
                "JOB_STATE_CANCELLED": "job_cancelled", GONE: "job_gone"}


class BatchError(VlmprobeError):
    """A Batch API call failed after its retries; the ledger keeps every job: a rerun continues."""

    exit_code = 1


def display_prefix(run_date: str, step: str, shard: int) -> str:
    """The deterministic start of a shard's job names: ``vlmprobe-{run_date}-{step}-shard-{NNNNN}``."""
    return f"vlmprobe-{run_date}-{step}-shard-{shard:05d}"


def job_state(value: str) -> str:
    """A job state as the ledger keeps it: ``BATCH_STATE_X`` (the REST API's name) → ``JOB_STATE_X``."""
    return "JOB_STATE_" + value.removeprefix("BATCH_STATE_") if value.startswith("BATCH_STATE_") else value


# -- the file ------------------------------------------------------------------------------------

def new_ledger(model: str, prefix: str) -> dict[str, Any]:
    return {"version": LEDGER_VERSION, "model": model, "display_prefix": prefix, "started_at": None,
            "inline_ok": True, "jobs": []}


def read_ledger(uri: str) -> dict[str, Any] | None:
    """The ledger at ``uri`` (None when there is none); BatchError for a version this code does not read."""
    from vlmprobe.io import exists, read_json

    if not exists(uri):
        return None
    ledger = read_json(uri)
    if ledger.get("version") != LEDGER_VERSION:
        raise BatchError(f"{uri}: ledger version {ledger.get('version')!r}, expected {LEDGER_VERSION}")
    return ledger


def load_ledger(uri: str, model: str, prefix: str) -> dict[str, Any]:
    """The ledger of this shard and model at ``uri`` (a new one when there is none); BatchError when
    the file belongs to another shard or model."""
    ledger = read_ledger(uri)
    if ledger is None:
        return new_ledger(model, prefix)
    if ledger.get("display_prefix") != prefix or ledger.get("model") != model:
        raise BatchError(f"{uri} belongs to {ledger.get('display_prefix')!r} on "
                         f"{ledger.get('model')!r}, not {prefix!r} on {model!r}")
    return ledger


def save_ledger(uri: str, ledger: dict[str, Any]) -> None:
    from vlmprobe.io import write_json

    write_json(uri, ledger)


def results_uri(ledger_uri: str, display_name: str) -> str:
    """Where a job's read results are kept: next to the ledger."""
    base = ledger_uri[:-5] if ledger_uri.endswith(".json") else ledger_uri
    return f"{base}.{display_name}.results.jsonl"


def deadline_at(ledger: dict[str, Any], deadline_s: float) -> float | None:
    """The epoch second past which what the batch has not answered goes online (None before the first intent)."""
    return None if ledger.get("started_at") is None else ledger["started_at"] + deadline_s


def past_deadline(ledger: dict[str, Any], deadline_s: float) -> bool:
    deadline = deadline_at(ledger, deadline_s)
    return deadline is not None and time.time() >= deadline


def new_job_entry(ledger: dict[str, Any], prefix: str, keys: dict[str, str], inline: bool) -> dict[str, Any]:
    """The intent of a job for ``keys`` (key → request hash, sorted by key): its display name is
    ``{prefix}-jNN-{hash of the keys and hashes}``, deterministic for the job's number and requests."""
    digest = hashlib.sha256("\n".join(f"{k}\t{v}" for k, v in keys.items()).encode()).hexdigest()
    display_name = f"{prefix}-j{len(ledger['jobs']):02d}-{digest[:12]}"
    return {"display_name": display_name, "mode": "inline" if inline else "file", "request_count": len(keys),
            "requests_sha256": digest, "keys": keys, "intent_at": time.time(), "input_file": None,
            "name": None, "created_at": None, "state": UNSUBMITTED, "error": None, "results_uri": None,
            "collected_at": None, "answered": 0, "failed": 0, "unmatched": 0, "usage": None,
            "cost_usd": None, "cancelled_at": None}


# -- what a waiter watches ------------------------------------------------------------------------

@dataclass(frozen=True)
class Watch:
    """What the shard's collect waits on, from its ledger: the jobs still running (their names),
    the deadline (epoch s, None without a job), and whether an intent has no job yet (then
    collect has work now: it finds or creates that job)."""

    jobs: tuple[str, ...]
    deadline_at: float | None
    unresolved: bool

    @property
    def ready(self) -> bool:
        """Nothing to wait for: every job ended (or none exists), the deadline passed, or an intent waits on collect."""
        return not self.jobs or self.unresolved or (self.deadline_at is not None and time.time() >= self.deadline_at)


def jobs_to_watch(uri: str, deadline_h: float) -> Watch:
    """The :class:`Watch` of the ledger at ``uri`` (no ledger: nothing to wait for). Reads the file only."""
    ledger = read_ledger(uri)
    if ledger is None:
        return Watch((), None, False)
    live = [e for e in ledger["jobs"] if e["state"] != NOT_CREATED]
    running = tuple(e["name"] for e in live
                    if e["name"] and e["state"] not in ENDED and e.get("cancelled_at") is None)
    unresolved = any(e["name"] is None for e in live)
    return Watch(running, deadline_at(ledger, deadline_h * 3600.0), unresolved)
