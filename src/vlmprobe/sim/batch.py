"""The Batch API, as google-genai 3.6.1 calls it (``client.batches.create/get/list/cancel/delete``).

Routes:

- ``POST /{v}/models/{model}:batchGenerateContent`` with ``{"batch": {"displayName", "inputConfig":
  {"fileName": "files/..."}}}`` (a JSONL file of ``{"key", "request"}`` lines, uploaded through
  :mod:`vlmprobe.sim.files`) or ``"inputConfig": {"requests": {"requests": [{"request",
  "metadata"}]}}`` (inline): a new job, answered with its Operation (``name`` ``batches/{id}``,
  the batch in ``metadata``, state ``BATCH_STATE_PENDING``);
- ``GET /{v}/batches/{id}``, ``GET /{v}/batches`` (``{"operations": [...]}``, one page),
  ``POST /{v}/batches/{id}:cancel``, ``DELETE /{v}/batches/{id}``.

A dead key (the simulator's ``fail``: invalid_key, 401, 403) refuses every call, get, list and
cancel included; an unknown model (404) refuses only the create. A job's state follows the clock,
read when it is asked for: ``BATCH_STATE_PENDING`` for ``batch_pending_s``,
``BATCH_STATE_RUNNING`` for ``batch_running_s``, then it ends: the first
``batch_expire`` jobs created end ``EXPIRED`` and the next ``batch_fail`` ``FAILED`` (with a
top-level ``error``), both without results; the others ``SUCCEEDED``. ``batch_stay_pending``
keeps every job pending until it is cancelled (``CANCELLED``). When a job succeeds, each of its
requests gets, from an RNG of its own (seed, job number, request index): an error
(``batch_error_rate``: 429, 500 or 503), or the simulator's fault plan drawn at its rates
(a 429 or 503 becomes an error, a cut-off, safety or blocked answer is written as such), or the
answer generateContent gives the same body (:func:`vlmprobe.sim.generate.answer_body`), with
``usageMetadata`` and ``responseId`` ``batch-{sha256 of the request body, 32 hex}``. Results go
to a JSONL file (``output.responsesFile``, lines ``{"key", "response"|"error"}``) for file input,
or inline (``output.inlinedResponses.inlinedResponses``, each with the request's ``metadata``
unless ``batch_inline_metadata`` is off); ``batch_shuffle`` returns them out of order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmprobe.sim import faults
from vlmprobe.sim.files import now_iso
from vlmprobe.sim.generate import answer_body
from vlmprobe.sim.protocol import google_error, lookup
from vlmprobe.sim.request import BadRequest, read_prompt

if TYPE_CHECKING:
    from vlmprobe.sim.server import GeminiSimulator

logger = logging.getLogger(__name__)

CREATE_PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):batchGenerateContent$")
LIST_PATH = re.compile(r"^/(v1beta|v1)/batches$")
JOB_PATH = re.compile(r"^/(v1beta|v1)/batches/([^/:]+)$")
CANCEL_PATH = re.compile(r"^/(v1beta|v1)/batches/([^/:]+):cancel$")

ENDED = frozenset({"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"})
_ERRORS = ((429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
           (500, "INTERNAL", "An internal error has occurred."),
           (503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


@dataclass
class _Request:
    key: Any  # the file line's key, or the inline request's metadata
    body: Any
    sha256: str


@dataclass
class Job:
    """One batch job: its input, its clock and, once ended, its output."""

    job_id: str
    number: int  # 0-based, in creation order (decides expiry and failure)
    display_name: str
    model: str
    inline: bool
    requests: list[_Request]
    started: float = field(default_factory=time.monotonic)
    create_time: str = field(default_factory=now_iso)
    update_time: str = ""
    end_time: str | None = None
    state: str = "BATCH_STATE_PENDING"
    cancelled: bool = False
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    succeeded: int = 0
    failed: int = 0

    @property
    def name(self) -> str:
        return f"batches/{self.job_id}"

    def operation(self) -> dict[str, Any]:
        """The job as the API returns it: an Operation whose ``metadata`` is the batch."""
        count = len(self.requests)
        done = self.state in ENDED
        batch: dict[str, Any] = {
            "@type": _BATCH_TYPE, "name": self.name, "model": f"models/{self.model}",
            "displayName": self.display_name, "createTime": self.create_time,
            "updateTime": self.update_time or self.create_time, "state": self.state,
            "batchStats": {"requestCount": str(count), "successfulRequestCount": str(self.succeeded),
                           "failedRequestCount": str(self.failed),
                           "pendingRequestCount": str(0 if done else count)},
        }
        if self.end_time:
            batch["endTime"] = self.end_time
        if self.output is not None:
            batch["output"] = self.output
        op: dict[str, Any] = {"name": self.name, "metadata": batch, "done": done}
        if self.error is not None:
            op["error"] = self.error
        return op


class BatchStore:
    """The simulator's batch jobs, the log of every request they ran, and their counters (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self._log: list[dict[str, Any]] = []
        self.created = 0
        self.cancels = 0
        self.answered = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.thinking_tokens = 0

    def log_entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(entry) for entry in self._log]

    def snapshot(self, sim: GeminiSimulator) -> dict[str, Any]:
        with self.lock:
            states: dict[str, int] = {}
            for job in self.jobs.values():
                _refresh(sim, job)
                states[job.state] = states.get(job.state, 0) + 1
            return {"jobs_created": self.created, "jobs_by_state": states, "cancels": self.cancels,
                    "requests_answered": self.answered, "requests_failed": self.errors,
                    "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                    "thinking_tokens": self.thinking_tokens, "files_uploaded": sim.files.uploads}


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _bad(message: str) -> tuple[int, Any]:
    return 400, google_error(400, "INVALID_ARGUMENT", message)


def _read_input(sim: GeminiSimulator, batch: dict[str, Any]) -> tuple[bool, list[_Request]] | str:
    """(inline?, the requests) of a create body's ``inputConfig``, or what is wrong with it."""
    config = lookup(batch, "inputConfig")
    if not isinstance(config, dict):
        return "* GenerateContentBatch.input_config: input_config is required"
    file_name = lookup(config, "fileName")
    if isinstance(file_name, str):
        stored = sim.files.get(file_name)
        if stored is None:
            return f"File {file_name} not found."
        requests = []
        for number, line in enumerate(stored.data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                return f"{file_name}: line {number} is not JSON."
            if not isinstance(item, dict) or "request" not in item:
                return f"{file_name}: line {number} has no request."
            requests.append(_Request(item.get("key"), item["request"], _digest(item["request"])))
        return False, requests
    inline = lookup(config, "requests")
    items = inline.get("requests") if isinstance(inline, dict) else None
    if not isinstance(items, list):
        return "* GenerateContentBatch.input_config: file_name or requests is required"
    return True, [_Request(item.get("metadata"), item.get("request"), _digest(item.get("request")))
                  for item in items if isinstance(item, dict)]


def create_job(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``POST .../models/{model}:batchGenerateContent``: a new job, pending."""
    model = match.group(2)
    if sim.fail is not None:
        return faults.fail_error(sim.fail, model, api_key)
    if sim.models is not None and model not in sim.models:
        return faults.fail_error("404", model, api_key)
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        return _bad("Invalid JSON payload received.")
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        return _bad("* BatchGenerateContentRequest.batch: batch is required")
    display_name = lookup(batch, "displayName")
    if not isinstance(display_name, str) or not display_name:
        return _bad("* GenerateContentBatch.display_name: display_name is required")
    read = _read_input(sim, batch)
    if isinstance(read, str):
        return _bad(read)
    inline, requests = read
    with sim.batches.lock:
        job = Job(uuid.uuid4().hex[:12], sim.batches.created, display_name, model, inline, requests)
        sim.batches.created += 1
        sim.batches.jobs[job.job_id] = job
        return 200, job.operation()


def _job(sim: GeminiSimulator, job_id: str) -> Job | None:
    return sim.batches.jobs.get(job_id)


def _not_found(job_id: str) -> tuple[int, Any]:
    return 404, google_error(404, "NOT_FOUND", f"Batch batches/{job_id} not found.")


def _key_refused(sim: GeminiSimulator, api_key: str) -> tuple[int, Any] | None:
    """A dead key (``fail`` invalid_key, 401 or 403) refuses every call, reads included; None otherwise."""
    if sim.fail in ("invalid_key", "401", "403"):
        return faults.fail_error(sim.fail, "batches", api_key)
    return None


def _on_job(sim: GeminiSimulator, match: re.Match[str], api_key: str,
            act: Callable[[Job], tuple[int, Any]]) -> tuple[int, Any]:
    """``act`` on the job the path names, its state brought up to the clock, with the store's lock
    held; a refused key or an unknown job answers as Gemini does."""
    if (refused := _key_refused(sim, api_key)) is not None:
        return refused
    with sim.batches.lock:
        job = _job(sim, match.group(2))
        if job is None:
            return _not_found(match.group(2))
        _refresh(sim, job)
        return act(job)


def get_job(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``GET .../batches/{id}``: the job, its state brought up to the clock."""
    return _on_job(sim, match, api_key, lambda job: (200, job.operation()))


def list_jobs(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``GET .../batches``: every job, in one page, newest first."""
    if (refused := _key_refused(sim, api_key)) is not None:
        return refused
    with sim.batches.lock:
        jobs = list(sim.batches.jobs.values())[::-1]
        for job in jobs:
            _refresh(sim, job)
        return 200, {"operations": [job.operation() for job in jobs]}


def cancel_job(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``POST .../batches/{id}:cancel``: a job not yet ended ends CANCELLED, without results."""
    def cancel(job: Job) -> tuple[int, Any]:
        sim.batches.cancels += 1
        if job.state not in ENDED:
            job.cancelled = True
            _refresh(sim, job)
        return 200, {}

    return _on_job(sim, match, api_key, cancel)


def delete_job(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``DELETE .../batches/{id}``: the job is forgotten."""
    with sim.batches.lock:
        if sim.batches.jobs.pop(match.group(2), None) is None:
            return _not_found(match.group(2))
        return 200, {}


def _refresh(sim: GeminiSimulator, job: Job) -> None:
    """Bring ``job``'s state up to the clock (call with the store's lock held)."""
    if job.state in ENDED:
        return
    if job.cancelled:
        _end(job, "BATCH_STATE_CANCELLED")
        return
    elapsed = time.monotonic() - job.started
    if sim.batch_stay_pending or elapsed < sim.batch_pending_s:
        state = "BATCH_STATE_PENDING"
    elif elapsed < sim.batch_pending_s + sim.batch_running_s:
        state = "BATCH_STATE_RUNNING"
    elif job.number < sim.batch_expire:
        _end(job, "BATCH_STATE_EXPIRED")
        return
    elif job.number < sim.batch_expire + sim.batch_fail:
        job.error = {"code": 13, "message": "Simulated batch failure: the job could not be run."}
        _end(job, "BATCH_STATE_FAILED")
        return
    else:
        _run(sim, job)
        _end(job, "BATCH_STATE_SUCCEEDED")
        return
    if state != job.state:
        job.state, job.update_time = state, now_iso()


def _end(job: Job, state: str) -> None:
    job.state = state
    job.update_time = job.end_time = now_iso()


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "status": status}


def _run(sim: GeminiSimulator, job: Job) -> None:
    """Answer every request of ``job`` and write its output (shuffled when asked)."""
    results = []
    for index, request in enumerate(job.requests):
        rng = random.Random(f"batch:{sim.seed}:{job.number}:{index}")
        outcome, result = _answer(sim, job, request, rng)
        if "error" in result:
            job.failed += 1
            sim.batches.errors += 1
        else:
            job.succeeded += 1
            sim.batches.answered += 1
        sim.batches._log.append({"job": job.name, "display_name": job.display_name, "index": index,
                                 "key": request.key, "sha256": request.sha256, "outcome": outcome})
        results.append((request, result))
    if sim.batch_shuffle:
        random.Random(f"batch-shuffle:{sim.seed}:{job.number}").shuffle(results)
    if job.inline:
        items = []
        for request, result in results:
            if sim.batch_inline_metadata and request.key is not None:
                result = {**result, "metadata": request.key}
            items.append(result)
        job.output = {"inlinedResponses": {"inlinedResponses": items}}
        return
    lines = "".join(json.dumps({"key": request.key, **result}) + "\n" for request, result in results)
    stored = sim.files.add(lines.encode(), "application/jsonl", f"{job.job_id}-responses")
    job.output = {"responsesFile": f"files/{stored.file_id}"}


def _answer(sim: GeminiSimulator, job: Job, request: _Request, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The outcome and the result (``{"response": ...}`` or ``{"error": ...}``) of one request of a job."""
    if rng.random() < sim.batch_error_rate:
        code, status, message = rng.choice(_ERRORS)
        return f"error_{code}", {"error": _error(code, status, message)}
    fault = faults.draw_fault(rng, sim.fault_rates())
    try:
        prompt, media = read_prompt(request.body, job.model)
    except BadRequest as e:
        return "bad_request", {"error": _error(400, "INVALID_ARGUMENT", str(e))}
    prompt_tokens = math.ceil(len(prompt) / 4) + media
    if fault in ("429", "503", "non_json"):
        code = 500 if fault == "non_json" else int(fault)
        status = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(code, "INTERNAL")
        return f"error_{code}", {"error": _error(code, status, f"Simulated {fault} inside a batch.")}
    response_id = f"batch-{request.sha256[:32]}"
    if fault == "blocked":
        sim.batches.prompt_tokens += prompt_tokens
        return "blocked", {"response": {"promptFeedback": {"blockReason": "SAFETY"},
                                        "usageMetadata": {"promptTokenCount": prompt_tokens,
                                                          "totalTokenCount": prompt_tokens},
                                        "modelVersion": job.model, "responseId": response_id}}
    payload, outcome, output_tokens, thoughts = answer_body(sim, request.body, prompt, prompt_tokens, job.model,
                                                            rng, fault, response_id)
    sim.batches.prompt_tokens += prompt_tokens
    sim.batches.output_tokens += output_tokens
    sim.batches.thinking_tokens += thoughts
    return outcome, {"response": payload}
