"""The one Gemini client per process: google-genai (async), structured output, our retry policy.

``Teacher`` wraps ``google.genai.Client`` for ``generate_content`` with a pydantic response
schema. Before a request goes out it waits, in this order, for: a slot of the process's
adaptive concurrency (:class:`~vlmprobe.teacher.flow.AdaptiveConcurrency`), the end of any
rate-limit pause, the process's share of the run-wide daily quota, the ``request_delay``
spacing, and its share of the per-minute request and token quotas
(:mod:`vlmprobe.teacher.quota`). Images are downscaled first
(:mod:`vlmprobe.teacher.imageprep`).

Every answer is classified (the SDK's own retries stay off: they ignore RetryInfo):

============================================  =================================================
HTTP 429 (per-minute quota)                   retried no earlier than the server's RetryInfo /
                                              Retry-After (never capped below it); pauses every
                                              new request of the process that long; halves the
                                              concurrency limit (+1 again per ``limit`` answers)
HTTP 429 naming a per-day quota               :class:`~vlmprobe.errors.QuotaExhausted` (exit 4),
                                              ``resets_at`` = next midnight Pacific
HTTP 408, 5xx, timeouts, connection and TLS   retried with exponential backoff and jitter
errors, a 200 that is not JSON
  (``UnknownApiResponseError``, JSONDecodeError)
400 with an ``API_KEY_*`` reason, 401, 403,   :class:`~vlmprobe.errors.TeacherUnusable` (exit 3)
404, 400 FAILED_PRECONDITION                  from this call and, at once, every later one
other 4xx (e.g. 400 INVALID_ARGUMENT about    TeacherError: an error row for that record, no
this request: an unreadable image)            retry
finish SAFETY, RECITATION, BLOCKLIST,         TeacherError at once (``finish_safety``, ...),
PROHIBITED_CONTENT, SPII, IMAGE_*, LANGUAGE;  no retry: the same request gets the same verdict
a prompt blocked (``blocked_safety``, ...)
finish MAX_TOKENS                             one retry with max_output_tokens doubled, then
                                              TeacherError ``finish_max_tokens``
bad JSON or schema mismatch, other finishes   retried, at most ``max_bad_outputs`` such answers
                                              (each is billed)
============================================  =================================================

A request's retries are bounded by time (``RetryPolicy.window_s`` from its first send), not by
a count. A circuit breaker stops the step (:class:`TeacherCircuitOpen`, exit 1) when most of
the last ``breaker_window`` finished requests failed after their retries for reasons waiting
could have fixed (5xx, 429, timeouts, transport, unusable output), naming the commonest reason.
Content verdicts (safety, 400 about one request) and the budget do not count: they are error
rows, which publish weighs against ``max_error_rate``.

Cost: ``thinking_budget`` (0 by default: no thinking where the model allows it; 2.5 Pro cannot
stop thinking and is clamped to its minimum of 128), ``max_output_tokens`` per request kind
(``factor``, ``verify``, ``qa``; thinking counts against it on 2.5 models, so the budget is added
on top), and ``QuotaLimits.max_cost_usd``: once the run's estimated spend (summed over the run's
ledgers) reaches it, new requests raise TeacherError ``budget_reached`` without being sent. A
follow-up request (``follow_up=True``: the verification of a factor already paid for) is not
refused, so no paid answer is thrown away; the overshoot is at most one follow-up per request in
flight.

The API key comes from ``api_key`` or ``GEMINI_API_KEY`` and appears in no message, log or repr
(it is also cut out of server messages that echo it). ``GEMINI_BASE_URL`` points the client
elsewhere, e.g. at :mod:`vlmprobe.sim`.

Usage::

    async with Teacher("gemini-2.5-flash", concurrency=16) as teacher:
        result = await teacher.generate(prompt, QASet, images=[(png_bytes, "image/png")], kind="qa")
        result.parsed, result.usage, result.attempts
"""

from __future__ import annotations

import asyncio
import collections
import copy
import email.utils
import functools
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx
from google import genai
from google.genai import errors, types
from pydantic import BaseModel, ValidationError

from vlmprobe.errors import QuotaExhausted, TeacherUnusable, VlmprobeError
from vlmprobe.teacher.flow import AdaptiveConcurrency
from vlmprobe.teacher.imageprep import image_tokens, prepare_image, text_tokens
from vlmprobe.teacher.pricing import estimate_cost
from vlmprobe.teacher.quota import QuotaLimits, RunQuota, next_pacific_midnight

try:  # google-genai uses aiohttp as its transport when it is installed, else httpx
    import aiohttp

    _AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - depends on the image
    aiohttp = None  # type: ignore[assignment]
    _AIOHTTP_ERRORS = ()

logger = logging.getLogger(__name__)

API_KEY_ENV = "GEMINI_API_KEY"
BASE_URL_ENV = "GEMINI_BASE_URL"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_MAX_OUTPUT_TOKENS: dict[str, int] = {"factor": 1024, "verify": 512, "qa": 2048}
AUTO_CONCURRENCY_MAX = 64
AUTO_CONCURRENCY_NO_RPM = 16
_TYPE = "type.googleapis.com/google.rpc."
# Finish reasons that are a verdict on the content: the same request gets the same answer.
CONTENT_FILTERS = frozenset({
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE",
})
_KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{35}")

Schema = TypeVar("Schema", bound=BaseModel)
Kind = Literal["fatal", "daily", "rate_limited", "transient", "bad_output", "max_tokens", "final"]


class TeacherError(Exception):
    """A request that failed for good: an error row for its record.

    ``reason`` is short and machine-friendly: ``http_429``, ``http_400``, ``schema_mismatch``,
    ``finish_safety``, ``blocked_safety``, ``finish_max_tokens``, ``timeout``, ``transport``,
    ``bad_response``, ``budget_reached``...
    """

    def __init__(self, reason: str, attempts: int, message: str, usage: Usage | None = None) -> None:
        super().__init__(f"{message} (reason={reason}, attempts={attempts})")
        self.reason = reason
        self.attempts = attempts
        self.message = message
        self.usage = usage or Usage()  # tokens billed for the failed attempts


class TeacherCircuitOpen(VlmprobeError):
    """Most recent requests failed after their retries: stop the step (exit 1, worth a later retry)."""

    exit_code = 1


class _RejectedOutput(Exception):
    """A 200 answer that cannot be used: bad JSON, schema mismatch, a block or a bad finish."""

    def __init__(self, reason: str, kind: Kind, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class Classified:
    reason: str  # what went wrong, e.g. "http_503"
    kind: Kind


@dataclass(frozen=True)
class RetryDecision:
    reason: str
    retry: bool
    delay: float  # seconds to wait before the next attempt
    server_delay: bool = False  # the delay is the server's (RetryInfo / Retry-After)


def _details(error: BaseException) -> list[dict[str, Any]]:
    body = getattr(error, "details", None)
    body = body if isinstance(body, dict) else {}
    body = body.get("error", body) if isinstance(body.get("error", body), dict) else body
    return [d for d in body.get("details") or [] if isinstance(d, dict)]


def _error_info_reason(error: BaseException) -> str | None:
    for detail in _details(error):
        if detail.get("@type") == _TYPE + "ErrorInfo" and detail.get("reason"):
            return str(detail["reason"])
    return None


def daily_quota_violation(error: BaseException) -> str | None:
    """The per-day quota a 429 names (its ``quotaId``, e.g. GenerateRequestsPerDayPerProjectPerModel),
    or None when the 429 is about another quota."""
    per_day = re.compile(r"per[_ ]?day|daily", re.I)
    for detail in _details(error):
        if detail.get("@type") == _TYPE + "QuotaFailure":
            for violation in detail.get("violations") or []:
                if not isinstance(violation, dict):
                    continue
                fields = [str(violation.get(k) or "") for k in ("quotaId", "quotaMetric", "subject", "description")]
                if any(per_day.search(f) for f in fields):
                    return next((f for f in fields if f), "per-day quota")
        if detail.get("@type") == _TYPE + "ErrorInfo":
            for value in (detail.get("metadata") or {}).values():
                if per_day.search(str(value)):
                    return str(value)
    return None


@dataclass
class RetryPolicy:
    """When to retry and how long to wait: the only place that decides it.

    ``window_s`` bounds a request's retries in time from its first send. A server-suggested
    delay (RetryInfo, Retry-After, "retry in Ns") is honoured and never shortened; ``jitter``
    lengthens it a little, so a herd of waiters does not return at once. Without one, the
    backoff is exponential from ``base_delay``, capped at ``max_delay``, shortened by jitter.
    ``max_bad_outputs`` bounds the billed 200 answers that could not be used; ``max_attempts``
    (None: unbounded) adds a count bound for debugging.
    """

    window_s: float = 600.0
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.25
    max_bad_outputs: int = 3
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}.")
        if self.window_s < 0 or self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("window_s, base_delay and max_delay must be >= 0 and jitter within [0, 1].")
        if self.max_bad_outputs < 1:
            raise ValueError(f"max_bad_outputs must be >= 1, got {self.max_bad_outputs}.")

    def decide(self, error: BaseException, attempt: int, rng: random.Random | None = None) -> RetryDecision | None:
        """What to do after ``attempt`` (1-based) failed with ``error``, the time window aside.

        Returns None when ``error`` is not a request failure at all (a bug): let it propagate.
        """
        classified = classify(error)
        if classified is None:
            return None
        retryable = classified.kind in ("rate_limited", "transient", "bad_output", "max_tokens")
        if not retryable or (self.max_attempts is not None and attempt >= self.max_attempts):
            return RetryDecision(classified.reason, False, 0.0)
        spread = (rng or random).random() * self.jitter
        suggested = server_delay(error)
        if suggested is not None:
            return RetryDecision(classified.reason, True, suggested * (1 + spread), server_delay=True)
        if classified.kind == "max_tokens":
            return RetryDecision(classified.reason, True, 0.0)
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (1 - spread)
        return RetryDecision(classified.reason, True, delay)


def classify(error: BaseException) -> Classified | None:
    """What kind of failure ``error`` is; None for an exception that is no request failure (a bug)."""
    if isinstance(error, _RejectedOutput):
        return Classified(error.reason, error.kind)
    if isinstance(error, errors.APIError):
        code = int(error.code or 0)
        reason = f"http_{code}"
        status = str(error.status or "")
        if code == 429:
            return Classified(reason, "daily" if daily_quota_violation(error) else "rate_limited")
        if code in (401, 403, 404):
            return Classified(reason, "fatal")
        if code == 400 and ((_error_info_reason(error) or "").startswith("API_KEY_")
                            or "api key not valid" in str(error.message or "").lower()
                            or status == "FAILED_PRECONDITION"):
            return Classified(reason, "fatal")
        return Classified(reason, "transient" if code in RETRYABLE_STATUS or code >= 500 else "final")
    if isinstance(error, (errors.UnknownApiResponseError, json.JSONDecodeError)):
        # A 200 whose body is not JSON: google-genai 3.6.1 raises UnknownApiResponseError when it
        # reads a stream, and lets json.loads's JSONDecodeError through from generate_content.
        return Classified("bad_response", "transient")
    if isinstance(error, (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
        return Classified("timeout", "transient")
    if isinstance(error, (ssl.SSLError, httpx.TransportError, ConnectionError, *_AIOHTTP_ERRORS)):
        return Classified("transport", "transient")
    return None


def server_delay(error: BaseException) -> float | None:
    """Seconds the server asked us to wait: RetryInfo in the error body, else Retry-After, else a
    "retry in Ns" in its message."""
    if not isinstance(error, errors.APIError):
        return None
    for detail in _details(error):
        if detail.get("@type") == _TYPE + "RetryInfo":
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
                return float(delay[:-1])
            if isinstance(delay, dict):  # the protobuf form {"seconds": .., "nanos": ..}
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
    headers = getattr(getattr(error, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    said = re.search(r"retry in (\d+(?:\.\d+)?)\s*s", str(error.message or ""), re.I)
    return float(said.group(1)) if said else None


@dataclass
class Usage:
    """Tokens of one or more answers. ``output_tokens`` includes ``thinking_tokens`` (both are
    billed as output); ``prompt_tokens`` includes ``cached_tokens``."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.output_tokens + other.output_tokens,
                     self.thinking_tokens + other.thinking_tokens, self.cached_tokens + other.cached_tokens)

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "thinking_tokens": self.thinking_tokens, "cached_tokens": self.cached_tokens}


@dataclass
class TeacherResult(Generic[Schema]):
    parsed: Schema
    usage: Usage
    attempts: int


def _usage_of(response: types.GenerateContentResponse) -> Usage:
    meta = response.usage_metadata
    if meta is None:
        return Usage()
    thinking = meta.thoughts_token_count or 0
    return Usage(meta.prompt_token_count or 0, (meta.candidates_token_count or 0) + thinking, thinking,
                 meta.cached_content_token_count or 0)


def _name(value: Any) -> str:
    return str(getattr(value, "name", None) or getattr(value, "value", None) or value)


def _parsed_or_reject(response: types.GenerateContentResponse, schema: type[Schema]) -> Schema:
    """The parsed answer, or _RejectedOutput saying why there is none."""
    candidates = response.candidates or []
    if not candidates:
        block = response.prompt_feedback.block_reason if response.prompt_feedback else None
        if block is not None:
            name = _name(block)
            raise _RejectedOutput(f"blocked_{name.lower()}", "final", f"the prompt was blocked ({name})")
        raise _RejectedOutput("no_candidates", "bad_output", "the answer has no candidates")
    finish = candidates[0].finish_reason
    if finish is not None and _name(finish) != "STOP":
        name = _name(finish)
        if name in CONTENT_FILTERS:
            raise _RejectedOutput(f"finish_{name.lower()}", "final", f"the answer was withheld (finish reason {name})")
        if name == "MAX_TOKENS":
            raise _RejectedOutput("finish_max_tokens", "max_tokens", "the answer was cut off at max_output_tokens")
        raise _RejectedOutput(f"finish_{name.lower()}", "bad_output", f"finish reason {name}")
    # We validate the text ourselves: the SDK's response.parsed is silently None on bad JSON.
    try:
        return schema.model_validate_json(response.text or "")
    except ValidationError as e:
        detail = f"{e.error_count()} validation error(s), first: {e.errors()[0]['msg']}"
    raise _RejectedOutput("schema_mismatch", "bad_output", detail)


@functools.lru_cache(maxsize=64)
def _response_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent as ``response_json_schema``, built once per model class.

    Passing the class as ``response_schema`` makes google-genai rebuild and convert it on every
    call (about 2.7 ms of CPU each, measured with bench/bench_teacher.py).
    """
    return schema.model_json_schema()


def thinking_budget_for(model: str, budget: int | None) -> int | None:
    """The thinking budget to send for ``model``: None sends none (the model's default, or a model
    that does not think). 2.5 Pro cannot turn thinking off: 0 (or less than 128) becomes its
    minimum, 128. 2.5 Flash-Lite thinks with 512 or more, or not at all. -1 asks for dynamic thinking."""
    if budget is None:
        return None
    name = model.strip().lower().removeprefix("models/")
    if name.startswith(("gemini-1.", "gemini-2.0")):
        return None
    if name.startswith("gemini-2.5-pro"):
        return budget if budget == -1 else min(max(budget, 128), 32768)
    if name.startswith("gemini-2.5-flash-lite"):
        return budget if budget in (-1, 0) else min(max(budget, 512), 24576)
    if name.startswith("gemini-2.5-flash"):
        return budget if budget == -1 else min(max(budget, 0), 24576)
    return budget


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Teacher:
    """Gemini with structured output, run-wide quota shares, adaptive concurrency and retries.

    ``concurrency`` bounds requests in flight (the AIMD ceiling); 0 derives it from the
    process's RPM share and the observed latency (Little's law: in flight = rate x latency, x1.5
    headroom, within [2, 64]; 16 without an RPM limit). ``request_delay`` is the minimum time
    between two request starts in this process; ``timeout_s`` bounds one attempt. ``limits`` are
    the run-wide quota and budget, shared with the other processes whose leases are in
    ``quota_folder`` (the run's ``_teacher`` folder; None: alone); ``process`` names this process
    there, stably across attempts, and renews its lease every ``heartbeat_s``.
    ``thinking_budget`` (None: the model's default), ``max_output_tokens`` per request kind and
    ``image_max_side`` (0: no downscaling) bound the bill. The circuit breaker opens when more
    than ``breaker_ratio`` of the last ``breaker_window`` finished requests failed after their
    retries. Use it as an async context manager: it opens one google-genai client and the quota
    lease, and closes both on exit.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        concurrency: int = 16,
        request_delay: float = 0.0,
        retry: RetryPolicy | None = None,
        timeout_s: float = 120.0,
        limits: QuotaLimits | None = None,
        quota_folder: str | None = None,
        process: str | None = None,
        heartbeat_s: float = 5.0,
        thinking_budget: int | None = 0,
        max_output_tokens: Mapping[str, int] | None = None,
        image_max_side: int = 768,
        breaker_window: int = 20,
        breaker_ratio: float = 0.5,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ValueError(
                f"No Gemini API key: set the {API_KEY_ENV} environment variable (any value works with "
                "the simulator) or pass api_key=."
            )
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0 = auto), got {concurrency}.")
        if request_delay < 0 or timeout_s <= 0:
            raise ValueError("request_delay must be >= 0 and timeout_s > 0.")
        if breaker_window < 1 or not 0 < breaker_ratio <= 1:
            raise ValueError("breaker_window must be >= 1 and breaker_ratio within (0, 1].")
        self.model = model
        self.base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
        self.concurrency = concurrency
        self.request_delay = request_delay
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self.limits = limits or QuotaLimits()
        self.quota = RunQuota(self.limits, quota_folder, process or f"{socket.gethostname()}-{os.getpid()}",
                              heartbeat_s=heartbeat_s, ttl_s=max(30.0, 6 * heartbeat_s))
        self.thinking_budget = thinking_budget_for(model, thinking_budget)
        if thinking_budget is not None and self.thinking_budget not in (None, thinking_budget):
            logger.warning("%s: thinking_budget %d is outside what the model allows; sending %d "
                           "(2.5 Pro cannot turn thinking off)", model, thinking_budget, self.thinking_budget)
        self.max_output_tokens = {**DEFAULT_MAX_OUTPUT_TOKENS, **(max_output_tokens or {})}
        self.image_max_side = image_max_side
        self.breaker_window = breaker_window
        self.breaker_ratio = breaker_ratio
        self._api_key = api_key
        self._client: genai.Client | None = None
        self._session: Any = None  # aiohttp.ClientSession when aiohttp is installed
        self._flow = AdaptiveConcurrency(concurrency or AUTO_CONCURRENCY_NO_RPM)
        self._latency = 5.0  # seconds, EWMA of successful answers; a guess until the first one
        self._start_lock: asyncio.Lock | None = None
        self._next_start = 0.0
        self._paused_until = 0.0
        self._paused_s = 0.0
        self._stopped: BaseException | None = None  # the fatal error every call raises from now on
        self._stop_event: asyncio.Event | None = None
        self._recent: collections.deque[str | None] = collections.deque(maxlen=breaker_window)
        self._rng = random.Random()
        self._requests = 0
        self._retries = 0
        self._succeeded = 0
        self._rate_limited = 0
        self._failures: Counter[str] = Counter()  # failed attempts by reason
        self._gave_up: Counter[str] = Counter()  # TeacherErrors raised, by reason
        self._usage = Usage()
        self._cost = 0.0
        self._unpriced_warned = False

    def __repr__(self) -> str:
        return f"Teacher(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    async def __aenter__(self) -> Teacher:
        if self._client is not None:
            raise RuntimeError("This Teacher is already open; make one per process and reuse it.")
        if aiohttp is not None:
            # Our own session: a pool sized to the concurrency, closed by us; the SDK's own
            # subclasses aiohttp.ClientSession, which aiohttp >= 3.14 deprecates with a warning.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency or AUTO_CONCURRENCY_MAX), trust_env=True
            )
        http_options = types.HttpOptions(
            base_url=self.base_url,
            api_version="v1beta",
            timeout=int(self.timeout_s * 1000),  # milliseconds
            # One attempt: our policy retries. Without retry_options the SDK's aiohttp path
            # silently retries connection errors once after sleeping 1-10 s.
            retry_options=types.HttpRetryOptions(attempts=1),
            aiohttp_client=self._session,
        )
        self._client = genai.Client(api_key=self._api_key, vertexai=False, http_options=http_options)
        self._start_lock = asyncio.Lock()
        self._stop_event = asyncio.Event()
        try:
            await self.quota.start()
        except BaseException:
            await self._close_client()
            raise
        self._apply_auto_concurrency()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.quota.stop()
        finally:
            await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        session, self._session = self._session, None
        if client is not None:
            await client.aio.aclose()
            client.close()
        if session is not None:
            await session.close()

    # -- stats --------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """What this process's teacher did, JSON-able (the steps put it in their stats files).

        ``requests`` HTTP requests sent; ``retries`` attempts after a request's first;
        ``rate_limited`` 429 answers; ``succeeded`` / ``failed`` calls of generate;
        ``failures`` failed attempts and ``gave_up`` TeacherErrors, by reason; tokens (output
        includes thinking, prompt includes cached); ``estimated_cost_usd``; ``paused_s`` time
        new requests waited on 429s; ``concurrency_limit`` the AIMD limit now (``concurrency_ceiling``
        its bound, derived when ``concurrency`` is 0); ``quota`` this
        process's share and the run-wide counts it last saw.
        """
        return {
            "requests": self._requests,
            "retries": self._retries,
            "rate_limited": self._rate_limited,
            "succeeded": self._succeeded,
            "failed": sum(self._gave_up.values()),
            "failures": dict(self._failures),
            "gave_up": dict(self._gave_up),
            **self._usage.as_dict(),
            "estimated_cost_usd": round(self._cost, 6),
            "paused_s": round(self._paused_s, 3),
            "concurrency_limit": self._flow.limit,
            "concurrency_ceiling": self._flow.ceiling,
            "concurrency_decreases": self._flow.decreases,
            "quota": self.quota.snapshot(),
        }

    # -- the fatal path -----------------------------------------------------------------------
    def _stop(self, error: BaseException) -> BaseException:
        """Make ``error`` the answer of this call and of every later one; returns the one to raise."""
        if self._stopped is None:
            self._stopped = error
            logger.error("Gemini %s: %s; stopping every request of this process", self.model, error)
            if self._stop_event is not None:
                self._stop_event.set()
        return copy.copy(self._stopped)

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise copy.copy(self._stopped)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake (and raise) at once when the teacher stops."""
        if seconds > 0 and self._stop_event is not None:
            try:
                await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        self._raise_if_stopped()

    def _redact(self, text: str) -> str:
        text = str(text).replace(self._api_key, "[redacted]") if self._api_key else str(text)
        return _KEY_PATTERN.sub("[redacted]", text)

    def _unusable(self, error: errors.APIError) -> TeacherUnusable:
        code, status = int(error.code or 0), str(error.status or "")
        said = _one_line(self._redact(error.message or ""), 200)
        reason = _error_info_reason(error)
        if code == 404:
            text = f"model {self.model!r} not found (HTTP 404 {status}): {said}"
        elif code == 400 and ((reason or "").startswith("API_KEY_") or "api key not valid" in said.lower()):
            text = f"the Gemini API key was rejected ({reason or 'API_KEY_INVALID'}): {said}"
        elif code == 401:
            text = f"the Gemini API key was not accepted (HTTP 401 {status}): {said}"
        elif code == 403:
            text = f"the Gemini API key has no permission for model {self.model!r} (HTTP 403 {status}): {said}"
        else:
            text = f"Gemini refuses this project (HTTP {code} {status}): {said}"
        return TeacherUnusable(_one_line(text, 400))

    def _daily(self, error: errors.APIError) -> QuotaExhausted:
        resets = next_pacific_midnight()
        quota_id = daily_quota_violation(error)
        return QuotaExhausted(_one_line(
            f"the Gemini daily quota is spent ({quota_id}, model {self.model!r}); it resets at "
            f"{resets.isoformat()} (midnight Pacific): rerun then to resume"), resets_at=resets)

    def _record_outcome(self, failure: str | None) -> None:
        """Feed the circuit breaker one finished request: None for a success."""
        self._recent.append(failure)
        failed = [r for r in self._recent if r is not None]
        if len(self._recent) == self.breaker_window and len(failed) > self.breaker_ratio * self.breaker_window:
            reason, count = Counter(failed).most_common(1)[0]
            raise self._stop(TeacherCircuitOpen(
                f"the teacher is failing: {len(failed)} of the last {self.breaker_window} requests failed "
                f"after their retries, mostly {reason} ({count}); stopping the step"))

    # -- pacing -------------------------------------------------------------------------------
    def _apply_auto_concurrency(self) -> None:
        if self.concurrency:
            return
        if not self.limits.rpm:
            self._flow.set_ceiling(AUTO_CONCURRENCY_NO_RPM)
            return
        rate = self.quota.rpm_share / self.limits.period_s  # requests per second
        in_flight = math.ceil(1.5 * rate * self._latency) + 1
        self._flow.set_ceiling(min(AUTO_CONCURRENCY_MAX, max(2, in_flight)))

    def _pause(self, seconds: float) -> None:
        """No new request of this process starts for ``seconds`` (a 429 asked for it)."""
        now = time.monotonic()
        until = now + seconds
        if until > self._paused_until:
            self._paused_s += until - max(self._paused_until, now)
            self._paused_until = until

    async def _wait_for_turn(self, tokens: int) -> None:
        """Wait until this request may go: pause, daily share, spacing, per-minute shares."""
        while True:
            self._raise_if_stopped()
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await self._sleep(pause)
                continue
            try:
                if not self.quota.admit_day():
                    await self._sleep(self.quota.heartbeat_s)  # our part of today's rest is used: ask again
                    continue
            except QuotaExhausted as e:
                raise self._stop(e) from None
            if self.request_delay > 0:
                await self._wait_for_start()
            wait = max(self.quota.requests.reserve(1), self.quota.tokens.reserve(tokens))
            await self._sleep(wait)
            if self._paused_until <= time.monotonic():
                return  # else a 429 came while we waited: wait it out and queue again

    async def _wait_for_start(self) -> None:
        """Space request starts by ``request_delay`` across all tasks of this process."""
        assert self._start_lock is not None
        async with self._start_lock:  # FIFO, so waiters start in arrival order
            now = time.monotonic()
            if now < self._next_start:
                await self._sleep(self._next_start - now)
                now = time.monotonic()
            self._next_start = now + self.request_delay

    # -- one request --------------------------------------------------------------------------
    async def _image_parts(self, images: Sequence[tuple[bytes, str]]) -> tuple[list[Any], int]:
        parts, tokens = [], 0
        for data, mime in images:
            if mime.startswith("image/") and self.image_max_side > 0:
                try:
                    prepared = await asyncio.to_thread(prepare_image, data, mime, self.image_max_side)
                except ValueError as e:  # let Gemini judge it: a 400 becomes this record's error row
                    logger.debug("sending an image as it is: %s", e)
                else:
                    parts.append(types.Part.from_bytes(data=prepared.data, mime_type=prepared.mime))
                    tokens += prepared.tokens
                    continue
            parts.append(types.Part.from_bytes(data=data, mime_type=mime))
            tokens += image_tokens(1, 1)
        return parts, tokens

    def _config(self, schema: type[BaseModel], temperature: float, max_output: int | None) -> types.GenerateContentConfig:
        thinking = None
        if self.thinking_budget is not None:
            thinking = types.ThinkingConfig(thinking_budget=self.thinking_budget)
            if max_output is not None and self.thinking_budget != 0:
                # Thinking counts against max_output_tokens on 2.5 models: give it room on top.
                max_output += self.thinking_budget if self.thinking_budget > 0 else 8192
        return types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=_response_schema(schema),
            temperature=temperature, max_output_tokens=max_output, thinking_config=thinking,
        )

    def _spend(self, usage: Usage) -> None:
        cost = estimate_cost(self.model, usage.prompt_tokens, usage.output_tokens, usage.cached_tokens)
        if cost is None:
            cost = 0.0
            if self.limits.max_cost_usd and not self._unpriced_warned:
                self._unpriced_warned = True
                logger.warning("no price is known for %s: max_cost_usd cannot be enforced", self.model)
        self._usage = self._usage + usage
        self._cost += cost
        self.quota.add_spend(cost, usage.as_dict())

    def _give_up(self, reason: str, attempts: int, detail: str, usage: Usage, counted: bool) -> TeacherError:
        self._gave_up[reason] += 1
        if counted:
            self._record_outcome(reason)  # may raise TeacherCircuitOpen instead
        return TeacherError(reason, attempts, f"Gemini {self.model}: {_one_line(self._redact(detail))}", usage)

    async def generate(
        self,
        prompt: str,
        schema: type[Schema],
        *,
        images: Sequence[tuple[bytes, str]] = (),
        temperature: float = 0.2,
        kind: str | None = None,
        max_output_tokens: int | None = None,
        follow_up: bool = False,
    ) -> TeacherResult[Schema]:
        """Ask for an answer of type ``schema`` about ``prompt`` and ``images`` ((bytes, mime) pairs).

        ``kind`` (``factor``, ``verify``, ``qa``) picks the max_output_tokens unless given.
        ``follow_up`` marks the second request of a unit of work whose first one was paid: the
        budget (``max_cost_usd``) does not refuse it.
        Raises :class:`TeacherError` when this request fails for good (an error row),
        :class:`~vlmprobe.errors.TeacherUnusable`, :class:`~vlmprobe.errors.QuotaExhausted` or
        :class:`TeacherCircuitOpen` when the step must stop (every later call raises it too).
        """
        if self._client is None or self._stop_event is None:
            raise RuntimeError("Use the Teacher as `async with Teacher(...) as teacher:` before generate().")
        self._raise_if_stopped()
        if not follow_up and self.quota.budget_reached():
            self._gave_up["budget_reached"] += 1
            raise TeacherError("budget_reached", 0, (
                f"the run's teacher budget is spent: estimated ${self.quota.spent_usd():.4f} of "
                f"max_cost_usd={self.limits.max_cost_usd:g}"))
        image_parts, image_token_count = await self._image_parts(images)
        contents = [*image_parts, types.Part.from_text(text=prompt)]
        estimate = text_tokens(prompt) + image_token_count
        max_output = max_output_tokens or (self.max_output_tokens.get(kind) if kind else None)
        config = self._config(schema, temperature, max_output)
        usage = Usage()
        attempt = 0
        deadline = math.inf
        bad_outputs = 0
        grown = False
        while True:
            attempt += 1
            response = None
            async with self._flow.slot():
                await self._wait_for_turn(estimate)
                if attempt == 1:
                    deadline = time.monotonic() + self.retry.window_s
                self._requests += 1
                self.quota.count_request()
                sent = time.monotonic()
                try:
                    response = await self._client.aio.models.generate_content(
                        model=self.model, contents=contents, config=config
                    )
                    error: BaseException | None = None
                except Exception as e:
                    error = e
            if response is not None:
                spent = _usage_of(response)
                usage = usage + spent
                self._spend(spent)
                self._latency = 0.8 * self._latency + 0.2 * (time.monotonic() - sent) if self._succeeded else (
                    time.monotonic() - sent)
                self._flow.on_success()
                self._apply_auto_concurrency()
                try:
                    parsed = _parsed_or_reject(response, schema)
                except _RejectedOutput as e:
                    error = e
                else:
                    self._succeeded += 1
                    self._record_outcome(None)
                    return TeacherResult(parsed, usage, attempt)
            assert error is not None
            decision = self.retry.decide(error, attempt, self._rng)
            classified = classify(error)
            if decision is None or classified is None:
                raise error
            self._failures[decision.reason] += 1
            if classified.kind == "fatal":
                assert isinstance(error, errors.APIError)
                raise self._stop(self._unusable(error)) from None
            if classified.kind == "daily":
                assert isinstance(error, errors.APIError)
                raise self._stop(self._daily(error)) from None
            if classified.kind == "rate_limited":
                self._rate_limited += 1
                self._pause(decision.delay if decision.retry else self.retry.base_delay)
                if self._flow.on_rate_limited():
                    logger.info("Gemini %s rate limit (429): new requests wait %.2f s; concurrency limit now %d",
                                self.model, decision.delay, self._flow.limit)
            counted = classified.kind != "final"
            retry = decision.retry
            if classified.kind == "bad_output":
                bad_outputs += 1
                retry = retry and bad_outputs < self.retry.max_bad_outputs
            if classified.kind == "max_tokens":
                retry = retry and not grown
                if retry:
                    grown = True
                    current = config.max_output_tokens or 2 * max(spent.output_tokens, 512)
                    config = config.model_copy(update={"max_output_tokens": 2 * current})
            if retry and time.monotonic() + decision.delay > deadline:
                retry = False  # the request's retry window would end before the next attempt
            if not retry:
                raise self._give_up(decision.reason, attempt, str(error), usage, counted) from error
            self._retries += 1
            logger.info(
                "Gemini %s attempt %d failed (%s); retrying in %.2f s",
                self.model, attempt, decision.reason, decision.delay,
            )
            await self._sleep(decision.delay)
