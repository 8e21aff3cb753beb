"""What goes into a shard's Batch API jobs and what comes out: requests, answers, failures, go-online,
the outcome of a collect, and reading result lines (file and inline) back by key and hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Generic

from google.genai import types
from pydantic import BaseModel

from vlmprobe.teacher.answers import response_from_json
from vlmprobe.teacher.batch.ledger import GONE
from vlmprobe.teacher.results import Schema
from vlmprobe.teacher.usage import Usage


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch: ``key`` is ours (unique within the shard, e.g. a failure key);
    the rest is what :meth:`~vlmprobe.teacher.client.Teacher.generate` takes."""

    key: str
    prompt: str
    schema: type[BaseModel]
    images: tuple[tuple[bytes, str], ...] = ()
    kind: str | None = None
    temperature: float = 0.2
    max_output_tokens: int | None = None


@dataclass
class Prepared:
    request: BatchRequest
    body: dict[str, Any]
    sha256: str

    @property
    def wire_key(self) -> str:
        return f"{self.request.key}#{self.sha256[:16]}"


@dataclass
class BatchAnswer(Generic[Schema]):
    """A request answered by a job: the parsed answer, its tokens, the job (display name) and
    Gemini's ``responseId``."""

    key: str
    parsed: Schema
    usage: Usage
    job: str
    response_id: str | None = None


@dataclass
class BatchFailure:
    """A request that failed for good (an error row): a content verdict or a 400 about it."""

    key: str
    reason: str
    message: str
    usage: Usage
    job: str


@dataclass
class GoOnline:
    """A request the batch did not answer in time or in its resubmissions: send it online.
    ``reason`` is the last thing that went wrong (``deadline``, ``job_expired``, ``http_503``,
    ``schema_mismatch``, ``finish_max_tokens``...); ``jobs`` how many jobs it was in."""

    key: str
    reason: str
    jobs: int


@dataclass
class BatchStatus:
    """Where a shard's jobs stand. ``ready``: :meth:`BatchClient.collect` has work (every job ended,
    the deadline passed, or an intent has no job yet); ``jobs``: display name → state."""

    jobs: dict[str, str]
    ready: bool
    all_ended: bool
    deadline_at: float | None
    deadline_passed: bool
    poll_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (for a trigger event or XCom)."""
        return {"jobs": dict(self.jobs), "ready": self.ready, "all_ended": self.all_ended,
                "deadline_at": self.deadline_at, "deadline_passed": self.deadline_passed, "poll_s": self.poll_s}


@dataclass
class BatchOutcome:
    """What a collect found, for every key asked: an answer, a failure, go online, or pending.

    ``usage`` sums every billed response of the shard's jobs (used or not); ``cost_usd`` is its
    batch price (None when the model has no batch price) and ``standard_cost_usd`` the same tokens
    at standard. ``jobs`` summarises each job; ``collected_now`` names those read by this call
    (count their cost once, e.g. into the run's budget).
    """

    answers: dict[str, BatchAnswer[Any]] = field(default_factory=dict)
    failures: dict[str, BatchFailure] = field(default_factory=dict)
    go_online: dict[str, GoOnline] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    standard_cost_usd: float | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    collected_now: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every key has an answer, a failure or go-online: nothing waits on a job."""
        return not self.pending


# -- reading results -----------------------------------------------------------------------------

def state_of(job: types.BatchJob | None) -> str:
    if job is None:
        return GONE
    state = job.state
    return str(getattr(state, "name", None) or state or "JOB_STATE_UNSPECIFIED")


def config_of(body: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentConfig (as a dict google-genai accepts) of a request body we wrote."""
    generation = body.get("generationConfig") or {}
    config: dict[str, Any] = {}
    names = {"responseMimeType": "response_mime_type", "responseJsonSchema": "response_json_schema",
             "temperature": "temperature", "maxOutputTokens": "max_output_tokens",
             "mediaResolution": "media_resolution"}
    for wire, name in names.items():
        if wire in generation:
            config[name] = generation[wire]
    if "thinkingConfig" in generation:
        config["thinking_config"] = generation["thinkingConfig"]  # snake_case, as request_body wrote it
    return config


def matched_line(raw: bytes, entry: dict[str, Any]) -> dict[str, Any] | None:
    """A result-file line as ``{"key", "sha256", "response"|"error"}`` when its key names a
    request of the job with that hash; None otherwise (or when it is not a result line)."""
    try:
        line = json.loads(raw)
        key, prefix = str(line["key"]).rsplit("#", 1)
    except (ValueError, KeyError, TypeError):
        return None
    sha = entry["keys"].get(key)
    if sha is None or not prefix or not sha.startswith(prefix):
        return None
    if isinstance(line.get("response"), dict):
        return {"key": key, "sha256": sha, "response": line["response"]}
    if isinstance(line.get("error"), dict):
        return {"key": key, "sha256": sha, "error": line["error"]}
    return None


def inline_lines(responses: list[types.InlinedResponse], entry: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """An inline job's responses as result lines, trusted only if each carries the metadata (key and
    hash) of a distinct request of the job: else none is kept and all count as unmatched."""
    lines, seen = [], set()
    for item in responses:
        meta = item.metadata or {}
        key, sha = meta.get("key"), meta.get("sha256")
        if key is None or key in seen or entry["keys"].get(key) != sha:
            return [], len(responses)
        seen.add(key)
        if item.response is not None:
            lines.append({"key": key, "sha256": sha,
                          "sdk_response": item.response.model_dump(mode="json", exclude_none=True)})
        else:
            error = item.error
            lines.append({"key": key, "sha256": sha, "error": {"code": error.code if error else 0,
                                                                 "message": error.message if error else ""}})
    return lines, 0


def response_of(line: dict[str, Any]) -> types.GenerateContentResponse | None:
    """The response of a result line (None for an error line)."""
    if "response" in line:
        return response_from_json(line["response"])
    if "sdk_response" in line:
        return types.GenerateContentResponse.model_validate(line["sdk_response"])
    return None


def job_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("display_name", "name", "mode", "state", "request_count", "answered",
                                      "failed", "unmatched", "usage", "cost_usd", "error", "cancelled_at")}


