"""The Batch API for one shard: submit once, find the job again after a crash, collect by key and hash.

Gemini's Batch API answers the same requests as ``generateContent`` at half price, within 24 h
(usually much less; a job pending or running for 48 h expires without results). What it does not
give, this module adds:

- **Creation is not idempotent** (a retried task would submit and pay twice): a durable
  **ledger** per shard (a JSON file at ``ledger_uri``, written through :mod:`vlmprobe.io`, so local
  paths, ``gs://`` and ``s3://`` work) records each job's *intent* (deterministic display name,
  request count, keys and request hashes) **before** the job is created, and its name after. A
  rerun finds its job by the ledger, or, when a kill fell between the creation and the record, by
  ``batches.list`` and the display name; it creates another only when neither knows it.
- **Results are matched by our key and the request's hash, never by position.** File mode (the
  default): each JSONL line is ``{"key": "{key}#{sha256[:16]}", "request": ...}``; the result
  file's lines (``{"key", "response"|"error"}``, which google-genai downloads but does not parse)
  are read back by that key and checked against the hash recorded for the job and the hash of
  the request asked now; a line that matches nothing is dropped (counted as ``unmatched``).
  Inline mode (``inline_max_bytes`` > 0, off by default: users report Gemini not echoing inline
  ``metadata`` and returning inline responses out of order, python-genai #2008, #1909) is used
  for small jobs only, and a job's inline answers are trusted only if every response carries
  the ``metadata`` (key and hash) of a distinct request of the job; otherwise none of them is,
  its requests are sent again, and the shard uses file mode from then on.
- **Only what failed is sent again**: a request that got a retryable error (429, 408, 5xx), no
  result, an unusable answer (bad JSON, schema mismatch: the same check as online,
  :func:`~vlmprobe.teacher.answers.parsed_or_reject`), or whose job failed, expired or was
  cancelled, goes into a new job with the others like it, at most ``max_resubmits`` times and
  only before the deadline (``deadline_h`` from the first job's intent). Past that it comes back
  as **go online**, for the caller to send through the online
  :class:`~vlmprobe.teacher.client.Teacher` at its tier; a cut-off answer (MAX_TOKENS) goes
  online at once (the online path retries it with a larger max_output_tokens). A content verdict
  (safety, a blocked prompt) or a 400 about the request is a **failure**: an error row, never
  resent. Jobs the shard no longer needs (past the deadline, or whose requests were all answered
  elsewhere) are cancelled.
- **Cost from what was served**: every billed response (used or not) is summed like online
  usage and priced at batch prices (:mod:`vlmprobe.teacher.pricing`), next to what the same
  tokens cost at standard.

A FAILED job's reason is dropped by google-genai's converter (``BatchJob.error`` stays None): it is
read from the raw Operation (``error``) through the same client, best effort. google-genai maps
``BATCH_STATE_*`` to ``JOB_STATE_*`` (``_transformers.t_job_state``); the ledger keeps the latter.

Use it as an async context manager (one google-genai client per process: pass ``client=`` to
share the online Teacher's, :attr:`~vlmprobe.teacher.client.Teacher.genai_client`). From a
deferrable task: :meth:`BatchClient.submit` in the pod, :meth:`BatchClient.poll_once` in the
trigger until ``status.ready``, :meth:`BatchClient.collect` in the pod again (``outcome.pending``:
defer once more). From the CLI: :meth:`BatchClient.run` or :func:`run_batch`. Every method is safe
to rerun: the ledger makes each one continue where the last stopped. One process writes a
shard's ledger at a time (the shard's task).

The package: :mod:`~vlmprobe.teacher.batch.ledger` (the ledger file and what a waiter watches in
it, without google-genai: the Airflow side reads it), :mod:`~vlmprobe.teacher.batch.results`
(requests, answers, outcomes, result lines), :mod:`~vlmprobe.teacher.batch.client` (the client).
Names are imported lazily, so ``vlmprobe.teacher.batch.ledger`` loads without the SDK.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "API_KEY_ENV": "ledger", "BASE_URL_ENV": "ledger", "ENDED": "ledger", "GONE": "ledger",
    "INLINE_LIMIT_BYTES": "ledger", "LEDGER_VERSION": "ledger", "UNSUBMITTED": "ledger", "BatchError": "ledger",
    "display_prefix": "ledger", "jobs_to_watch": "ledger",
    "BatchAnswer": "results", "BatchFailure": "results", "BatchOutcome": "results", "BatchRequest": "results",
    "BatchStatus": "results", "GoOnline": "results",
    "BatchClient": "client", "run_batch": "client",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
