"""The teacher's retry policy, the one place that decides it, and the reading of Gemini's errors.

Every failed attempt is classified (google-genai's own retries stay off: they ignore RetryInfo):

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
a count (:class:`RequestRetries`). The service tier sets the scale of time (:data:`TIER_TIMING`):
a flex answer takes minutes (Google's target is 1 to 15 min) and a flex request may be shed
under load, answered 503 UNAVAILABLE (the cookbook's ``Inference_tiers.ipynb``: "Flex is
sheddable and fails with 503 errors"), which the table above already retries like any 503; so
flex gets attempts of 20 min and a retry window of an hour at least, a longer default backoff,
and a concurrency sized by Little's law for latencies of minutes (:meth:`TierTiming.policy`,
:meth:`TierTiming.timeout`). A :class:`CircuitBreaker` says when to stop the step: most of
the last requests failed after their retries for reasons waiting could have fixed. What the
server says is read from the error body's ``details`` (google.rpc RetryInfo, QuotaFailure,
ErrorInfo), then the Retry-After header, then the message. The pauses, the concurrency and the
stop that act on these verdicts are the client's (:class:`~vlmprobe.teacher.client.Teacher`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import json
import math
import random
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
from google.genai import errors

from vlmprobe.errors import QuotaExhausted, TeacherUnusable
from vlmprobe.teacher.answers import RejectedOutput
from vlmprobe.teacher.quota import next_pacific_midnight
from vlmprobe.teacher.results import Kind, TeacherCircuitOpen, one_line, redact

try:  # google-genai uses aiohttp as its transport when it is installed, else httpx
    import aiohttp

    _AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - depends on the image
    _AIOHTTP_ERRORS = ()

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TYPE = "type.googleapis.com/google.rpc."


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


def error_info_reason(error: BaseException) -> str | None:
    """The ``reason`` of the error's google.rpc ErrorInfo (e.g. API_KEY_INVALID), if it has one."""
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


class RequestRetries:
    """One request's retries under ``policy``: its time window from the first send, its unusable
    answers (at most ``max_bad_outputs``) and its one retry with a larger max_output_tokens."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.deadline = math.inf
        self.bad_outputs = 0
        self.grown = False

    def start(self) -> None:
        """The first attempt is being sent: the retry window starts now."""
        self.deadline = time.monotonic() + self.policy.window_s

    def again(self, kind: Kind, decision: RetryDecision) -> bool:
        """Whether the request tries again after a failed attempt of ``kind`` that ``decision``
        judged; a ``max_tokens`` retry that this allows must double max_output_tokens."""
        retry = decision.retry
        if kind == "bad_output":
            self.bad_outputs += 1
            retry = retry and self.bad_outputs < self.policy.max_bad_outputs
        if kind == "max_tokens":
            retry = retry and not self.grown
            self.grown = self.grown or retry
        if retry and time.monotonic() + decision.delay > self.deadline:
            retry = False  # the request's retry window would end before the next attempt
        return retry


class CircuitBreaker:
    """Opens when more than ``ratio`` of the last ``window`` finished requests failed after their
    retries (content verdicts and the budget are not fed to it: they are error rows)."""

    def __init__(self, window: int, ratio: float) -> None:
        self.window = window
        self.ratio = ratio
        self._recent: collections.deque[str | None] = collections.deque(maxlen=window)

    def record(self, failure: str | None) -> TeacherCircuitOpen | None:
        """One finished request (its failure reason; None for a success); the error to stop the
        step with once the breaker opens, else None."""
        self._recent.append(failure)
        failed = [r for r in self._recent if r is not None]
        if len(self._recent) == self.window and len(failed) > self.ratio * self.window:
            reason, count = collections.Counter(failed).most_common(1)[0]
            return TeacherCircuitOpen(
                f"the teacher is failing: {len(failed)} of the last {self.window} requests failed "
                f"after their retries, mostly {reason} ({count}); stopping the step")
        return None


@dataclass(frozen=True)
class TierTiming:
    """The time scale of one service tier: what its requests wait for and how many are in flight.

    ``timeout_s`` is one attempt's default timeout and ``min_timeout_s`` a floor under an explicit
    one; ``window_s`` / ``min_window_s`` the same for a request's retry window; ``base_delay`` and
    ``max_delay`` the backoff of the tier's default policy; ``expected_latency_s`` the latency guessed before the
    first answer, and ``max_concurrency`` / ``no_rpm_concurrency`` the automatic concurrency's cap
    with an RPM limit and its value without one (Little's law: a rate R at latency L needs R x L
    requests in flight).
    """

    timeout_s: float
    min_timeout_s: float
    window_s: float
    min_window_s: float
    base_delay: float
    max_delay: float
    expected_latency_s: float
    max_concurrency: int
    no_rpm_concurrency: int

    def timeout(self, given: float | None) -> float:
        """One attempt's timeout: ``given`` (None: the tier's default), never below the tier's floor."""
        return max(self.timeout_s if given is None else given, self.min_timeout_s)

    def policy(self, given: RetryPolicy | None) -> RetryPolicy:
        """``given`` with its window raised to the tier's floor; None: the tier's default policy
        (its window and backoff; a shed flex request is then retried like any 503, from 5 s)."""
        if given is None:
            return RetryPolicy(window_s=self.window_s, base_delay=self.base_delay, max_delay=self.max_delay)
        if given.window_s >= self.min_window_s:
            return given
        return dataclasses.replace(given, window_s=self.min_window_s)


# Standard and priority answer in seconds; the standard row keeps the client's behaviour from before
# the tiers (RetryPolicy()'s defaults, no floors). Flex: attempts of 20 min (above the 15-min
# target; Google asks for client timeouts of "600s+ for Flex wait queues"), retries for an hour, a
# default backoff from 5 s (a shed request meets a busy pool), a first latency guess of 5 min, and
# up to 512 requests in flight (at 5 min each, about 100 requests a minute: raise ``concurrency``
# for more).
TIER_TIMING: dict[str, TierTiming] = {
    "standard": TierTiming(120.0, 0.0, 600.0, 0.0, 0.5, 30.0, 5.0, 64, 16),
    "priority": TierTiming(120.0, 0.0, 600.0, 0.0, 0.5, 30.0, 5.0, 64, 16),
    "flex": TierTiming(1200.0, 1200.0, 3600.0, 3600.0, 5.0, 120.0, 300.0, 512, 128),
}


def tier_timing(tier: str) -> TierTiming:
    """The :class:`TierTiming` of an online tier (standard, flex or priority)."""
    try:
        return TIER_TIMING[tier]
    except KeyError:
        raise ValueError(f"service_tier must be one of {', '.join(TIER_TIMING)}, got {tier!r}.") from None


def classify(error: BaseException) -> Classified | None:
    """What kind of failure ``error`` is; None for an exception that is no request failure (a bug)."""
    if isinstance(error, RejectedOutput):
        return Classified(error.reason, error.kind)
    if isinstance(error, errors.APIError):
        code = int(error.code or 0)
        reason = f"http_{code}"
        status = str(error.status or "")
        if code == 429:
            return Classified(reason, "daily" if daily_quota_violation(error) else "rate_limited")
        if code in (401, 403, 404):
            return Classified(reason, "fatal")
        if code == 400 and ((error_info_reason(error) or "").startswith("API_KEY_")
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


def unusable_error(error: errors.APIError, model: str, api_key: str | None) -> TeacherUnusable:
    """The error for a ``fatal`` answer: which of key, model or project Gemini refuses, on one
    line and without the key."""
    code, status = int(error.code or 0), str(error.status or "")
    said = one_line(redact(error.message or "", api_key), 200)
    reason = error_info_reason(error)
    if code == 404:
        text = f"model {model!r} not found (HTTP 404 {status}): {said}"
    elif code == 400 and ((reason or "").startswith("API_KEY_") or "api key not valid" in said.lower()):
        text = f"the Gemini API key was rejected ({reason or 'API_KEY_INVALID'}): {said}"
    elif code == 401:
        text = f"the Gemini API key was not accepted (HTTP 401 {status}): {said}"
    elif code == 403:
        text = f"the Gemini API key has no permission for model {model!r} (HTTP 403 {status}): {said}"
    else:
        text = f"Gemini refuses this project (HTTP {code} {status}): {said}"
    return TeacherUnusable(one_line(text, 400))


def daily_quota_error(error: errors.APIError, model: str) -> QuotaExhausted:
    """The error for a ``daily`` answer: the quota it names and when it resets (midnight Pacific)."""
    resets = next_pacific_midnight()
    quota_id = daily_quota_violation(error)
    return QuotaExhausted(one_line(
        f"the Gemini daily quota is spent ({quota_id}, model {model!r}); it resets at "
        f"{resets.isoformat()} (midnight Pacific): rerun then to resume"), resets_at=resets)
