"""The one Gemini client per process: google-genai (async), structured output, our retry policy.

``Teacher`` wraps ``google.genai.Client`` for ``generate_content`` with a pydantic response
schema. Before a request goes out it waits, in this order, for: a slot of the process's
adaptive concurrency (:class:`~vlmprobe.teacher.flow.AdaptiveConcurrency`), the end of any
rate-limit pause, the process's share of the run-wide daily quota, the ``request_delay``
spacing, and its share of the per-minute request and token quotas
(:mod:`vlmprobe.teacher.quota`). What it sends (the contents, images downscaled first, and the
config) is built by :mod:`vlmprobe.teacher.request`.

Every failed attempt, and every 200 answer that cannot be used
(:mod:`vlmprobe.teacher.answers`), is classified by :mod:`vlmprobe.teacher.retry`, whose table
says what is retried, after how long, and what stops the step. A circuit breaker stops the step
(:class:`~vlmprobe.teacher.results.TeacherCircuitOpen`, exit 1) when most of the last
``breaker_window`` finished requests failed after their retries for reasons waiting could have
fixed (5xx, 429, timeouts, transport, unusable output), naming the commonest reason. Content
verdicts (safety, 400 about one request) and the budget do not count: they are error rows,
which publish weighs against ``max_error_rate``.

Service tier (``service_tier``: standard, flex or priority; :mod:`vlmprobe.teacher.retry`'s
:data:`~vlmprobe.teacher.retry.TIER_TIMING`): sent with every request (standard sends nothing);
it sets one attempt's timeout, the retry window, the backoff and the automatic concurrency
(flex answers in minutes, so it needs long attempts and many requests in flight). Each answer is
priced at the tier that served it (the ``x-gemini-service-tier`` header, else the tier asked:
:func:`~vlmprobe.teacher.usage.served_tier`).

Cost (:mod:`vlmprobe.teacher.usage`): once the run's estimated spend (summed over the run's
ledgers) reaches ``QuotaLimits.max_cost_usd``, new requests raise TeacherError
``budget_reached`` without being sent. A follow-up request (``follow_up=True``: the verification
of a factor already paid for) is not refused, so no paid answer is thrown away; the overshoot is
at most one follow-up per request in flight.

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
import copy
import logging
import math
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from google import genai
from google.genai import errors

from vlmprobe.errors import QuotaExhausted
from vlmprobe.teacher.answers import RejectedOutput, parsed_or_reject
from vlmprobe.teacher.flow import AdaptiveConcurrency
from vlmprobe.teacher.quota import ProjectScope, QuotaLimits, RunQuota
from vlmprobe.teacher.request import (
    DEFAULT_MAX_OUTPUT_TOKENS, close_client, contents_of, generation_config, open_client, thinking_budget_for,
)
from vlmprobe.teacher.results import Schema, TeacherError, TeacherResult, one_line, redact
from vlmprobe.teacher.retry import (
    CircuitBreaker, RequestRetries, RetryPolicy, classify, daily_quota_error, tier_timing, unusable_error,
)
from vlmprobe.teacher.usage import Ledger, Usage, served_tier, usage_of

logger = logging.getLogger(__name__)

API_KEY_ENV = "GEMINI_API_KEY"
BASE_URL_ENV = "GEMINI_BASE_URL"
AUTO_CONCURRENCY_MAX = tier_timing("standard").max_concurrency  # 64; flex's is larger (TIER_TIMING)
AUTO_CONCURRENCY_NO_RPM = tier_timing("standard").no_rpm_concurrency  # 16


class Teacher:
    """Gemini with structured output, run-wide quota shares, adaptive concurrency and retries.

    ``service_tier`` (standard, flex, priority) is sent with every request and sets the defaults
    and floors of the timing (:data:`~vlmprobe.teacher.retry.TIER_TIMING`). ``concurrency`` bounds
    requests in flight (the AIMD ceiling); 0 derives it from the process's RPM share and the
    observed latency (Little's law: in flight = rate x latency, x1.5 headroom, within [2, 64] at
    standard, [2, 512] at flex; 16 without an RPM limit, 128 at flex). ``request_delay`` is the
    minimum time between two request starts in this process; ``timeout_s`` bounds one attempt
    (None: the tier's, 120 s at standard, 20 min at flex; flex raises a shorter one to 20 min) and
    ``retry`` decides retries (None: the tier's default policy, backoff from 0.5 s, 5 s at
    flex; flex raises a retry window shorter than an hour). ``limits`` are
    the run-wide quota and budget, shared with the other processes whose leases are in
    ``quota_folder`` (the run's ``_teacher`` folder; None: alone); ``process`` names this process
    there, stably across attempts, and renews its lease every ``heartbeat_s``; ``project`` puts
    the daily count and the leases in the Gemini project's shared ledger (every run of the
    deployment) and caps the step at its reservation (:class:`~vlmprobe.teacher.quota.ProjectScope`).
    ``thinking_budget`` (None: the model's default), ``max_output_tokens`` per request kind and
    ``image_max_side`` (0: no downscaling) and ``media_resolution`` per request kind (low, medium,
    high or unspecified: what an image costs) bound the bill. The circuit breaker opens when more
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
        timeout_s: float | None = None,
        limits: QuotaLimits | None = None,
        quota_folder: str | None = None,
        process: str | None = None,
        heartbeat_s: float = 5.0,
        thinking_budget: int | None = 0,
        max_output_tokens: Mapping[str, int] | None = None,
        image_max_side: int = 768,
        media_resolution: Mapping[str, str] | None = None,
        breaker_window: int = 20,
        breaker_ratio: float = 0.5,
        service_tier: str = "standard",
        project: ProjectScope | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ValueError(
                f"No Gemini API key: set the {API_KEY_ENV} environment variable (any value works with "
                "the simulator) or pass api_key=."
            )
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0 = auto), got {concurrency}.")
        if request_delay < 0 or (timeout_s is not None and timeout_s <= 0):
            raise ValueError("request_delay must be >= 0 and timeout_s > 0.")
        self.service_tier = service_tier
        self.timing = tier_timing(service_tier)  # ValueError for an unknown tier
        if breaker_window < 1 or not 0 < breaker_ratio <= 1:
            raise ValueError("breaker_window must be >= 1 and breaker_ratio within (0, 1].")
        self.model = model
        self.base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
        self.concurrency = concurrency
        self.request_delay = request_delay
        self.retry = self.timing.policy(retry)
        self.timeout_s = self.timing.timeout(timeout_s)
        if timeout_s is not None and self.timeout_s != timeout_s:
            logger.info("Gemini %s at the %s tier: timeout_s %g raised to %g s (its answers take minutes)",
                        model, service_tier, timeout_s, self.timeout_s)
        self.limits = limits or QuotaLimits()
        self.quota = RunQuota(self.limits, quota_folder, process or f"{socket.gethostname()}-{os.getpid()}",
                              project=project, heartbeat_s=heartbeat_s, ttl_s=max(30.0, 6 * heartbeat_s))
        self.thinking_budget = thinking_budget_for(model, thinking_budget)
        if thinking_budget is not None and self.thinking_budget not in (None, thinking_budget):
            logger.warning("%s: thinking_budget %d is outside what the model allows; sending %d "
                           "(2.5 Pro cannot turn thinking off)", model, thinking_budget, self.thinking_budget)
        self.max_output_tokens = {**DEFAULT_MAX_OUTPUT_TOKENS, **(max_output_tokens or {})}
        self.image_max_side = image_max_side
        self.media_resolution = dict(media_resolution or {})
        self.breaker_window = breaker_window
        self.breaker_ratio = breaker_ratio
        self._api_key = api_key
        self._client: genai.Client | None = None
        self._session: Any = None  # aiohttp.ClientSession when aiohttp is installed
        self._flow = AdaptiveConcurrency(concurrency or self.timing.no_rpm_concurrency)
        self._latency = self.timing.expected_latency_s  # seconds, EWMA of answers; a guess until the first
        self._start_lock: asyncio.Lock | None = None
        self._next_start = 0.0
        self._paused_until = 0.0
        self._paused_s = 0.0
        self._stopped: BaseException | None = None  # the fatal error every call raises from now on
        self._stop_event: asyncio.Event | None = None
        self._breaker = CircuitBreaker(breaker_window, breaker_ratio)
        self._rng = random.Random()
        self._requests = 0
        self._retries = 0
        self._succeeded = 0
        self._rate_limited = 0
        self._failures: Counter[str] = Counter()  # failed attempts by reason
        self._gave_up: Counter[str] = Counter()  # TeacherErrors raised, by reason
        self._ledger = Ledger(model)  # tokens and estimated cost of this process's answers, per tier
        self._served: Counter[str] = Counter()  # answers by the tier that served them
        self._unpriced_warned = False

    @property
    def expected_latency_s(self) -> float:
        """Seconds an answer takes, as last measured (an average; the tier's guess before the first)."""
        return self._latency

    def __repr__(self) -> str:
        tier = "" if self.service_tier == "standard" else f", service_tier={self.service_tier!r}"
        return f"Teacher(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency}{tier})"

    async def __aenter__(self) -> Teacher:
        if self._client is not None:
            raise RuntimeError("This Teacher is already open; make one per process and reuse it.")
        self._client, self._session = open_client(self._api_key, self.base_url, self.timeout_s,
                                                  self.concurrency or self.timing.max_concurrency)
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
        await close_client(client, session)

    @property
    def genai_client(self) -> genai.Client:
        """The open google-genai client, for other Gemini calls of this process (the Batch API:
        :class:`~vlmprobe.teacher.batch.BatchClient`), so the process keeps one client."""
        if self._client is None:
            raise RuntimeError("The Teacher is not open: use it as `async with Teacher(...) as teacher:`.")
        return self._client

    # -- stats --------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """What this process's teacher did, JSON-able (the steps put it in their stats files).

        ``requests`` HTTP requests sent; ``retries`` attempts after a request's first;
        ``service_tier`` the tier asked, ``served_tiers`` answers by the tier that served them and
        ``by_tier`` their tokens, cost and standard-equivalent cost per tier;
        ``rate_limited`` 429 answers; ``succeeded`` / ``failed`` calls of generate;
        ``failures`` failed attempts and ``gave_up`` TeacherErrors, by reason; tokens (output
        includes thinking, prompt includes cached); ``estimated_cost_usd``; ``paused_s`` time
        new requests waited on 429s; ``latency_s`` an answer's seconds (a moving average; None
        before the first); ``concurrency_limit`` the AIMD limit now (``concurrency_ceiling``
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
            **self._ledger.usage.as_dict(),
            "estimated_cost_usd": round(self._ledger.cost_usd, 6),
            "service_tier": self.service_tier,
            "served_tiers": dict(self._served),
            "by_tier": self._ledger.tiers_dict(),
            "paused_s": round(self._paused_s, 3),
            "latency_s": round(self._latency, 3) if self._succeeded else None,
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

    def _record_outcome(self, failure: str | None) -> None:
        """Feed the circuit breaker one finished request: None for a success."""
        opened = self._breaker.record(failure)
        if opened is not None:
            raise self._stop(opened)

    # -- pacing -------------------------------------------------------------------------------
    def _apply_auto_concurrency(self) -> None:
        if self.concurrency:
            return
        if not self.limits.rpm:
            self._flow.set_ceiling(self.timing.no_rpm_concurrency)
            return
        rate = self.quota.rpm_share / self.limits.period_s  # requests per second
        in_flight = math.ceil(1.5 * rate * self._latency) + 1
        self._flow.set_ceiling(min(self.timing.max_concurrency, max(2, in_flight)))

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
    def _spend(self, usage: Usage, tier: str = "standard") -> None:
        cost = self._ledger.add(usage, tier)
        self._served[tier] += 1
        if cost is None and self.limits.max_cost_usd and not self._unpriced_warned:
            self._unpriced_warned = True
            logger.warning("no price is known for %s at the %s tier: max_cost_usd cannot be enforced",
                           self.model, tier)
        self.quota.add_spend(cost or 0.0, usage.as_dict())

    def _give_up(self, reason: str, attempts: int, detail: str, usage: Usage, counted: bool) -> TeacherError:
        self._gave_up[reason] += 1
        if counted:
            self._record_outcome(reason)  # may raise TeacherCircuitOpen instead
        return TeacherError(reason, attempts, f"Gemini {self.model}: {one_line(redact(detail, self._api_key))}", usage)

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
        :class:`~vlmprobe.teacher.results.TeacherCircuitOpen` when the step must stop (every
        later call raises it too).
        """
        if self._client is None or self._stop_event is None:
            raise RuntimeError("Use the Teacher as `async with Teacher(...) as teacher:` before generate().")
        self._raise_if_stopped()
        if not follow_up and self.quota.budget_reached():
            self._gave_up["budget_reached"] += 1
            raise TeacherError("budget_reached", 0, (
                f"the run's teacher budget is spent: estimated ${self.quota.spent_usd():.4f} of "
                f"max_cost_usd={self.limits.max_cost_usd:g}"))
        resolution = self.media_resolution.get(kind) if kind else None
        contents = await contents_of(prompt, images, self.image_max_side, model=self.model,
                                     media_resolution=resolution)
        for problem in contents.sent_as_is:
            logger.debug("sending an image as it is: %s", problem)
        max_output = max_output_tokens or (self.max_output_tokens.get(kind) if kind else None)
        config = generation_config(schema, temperature, max_output, self.thinking_budget, self.service_tier,
                                   resolution)
        usage = Usage()
        attempt = 0
        retries = RequestRetries(self.retry)
        while True:
            attempt += 1
            response = None
            async with self._flow.slot():
                await self._wait_for_turn(contents.tokens)
                if attempt == 1:
                    retries.start()
                self._requests += 1
                self.quota.count_request()
                sent = time.monotonic()
                try:
                    response = await self._client.aio.models.generate_content(
                        model=self.model, contents=contents.parts, config=config
                    )
                    error: BaseException | None = None
                except Exception as e:
                    error = e
            if response is not None:
                spent = usage_of(response)
                usage = usage + spent
                self._spend(spent, served_tier(response) or self.service_tier)
                self._latency = 0.8 * self._latency + 0.2 * (time.monotonic() - sent) if self._succeeded else (
                    time.monotonic() - sent)
                self._flow.on_success()
                self._apply_auto_concurrency()
                try:
                    parsed = parsed_or_reject(response, schema)
                except RejectedOutput as e:
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
                raise self._stop(unusable_error(error, self.model, self._api_key)) from None
            if classified.kind == "daily":
                assert isinstance(error, errors.APIError)
                raise self._stop(daily_quota_error(error, self.model)) from None
            if classified.kind == "rate_limited":
                self._rate_limited += 1
                self._pause(decision.delay if decision.retry else self.retry.base_delay)
                if self._flow.on_rate_limited():
                    logger.info("Gemini %s rate limit (429): new requests wait %.2f s; concurrency limit now %d",
                                self.model, decision.delay, self._flow.limit)
            counted = classified.kind != "final"
            retry = retries.again(classified.kind, decision)
            if retry and classified.kind == "max_tokens":
                current = config.max_output_tokens or 2 * max(spent.output_tokens, 512)
                config = config.model_copy(update={"max_output_tokens": 2 * current})
            if not retry:
                raise self._give_up(decision.reason, attempt, str(error), usage, counted) from error
            self._retries += 1
            logger.info(
                "Gemini %s attempt %d failed (%s); retrying in %.2f s",
                self.model, attempt, decision.reason, decision.delay,
            )
            await self._sleep(decision.delay)
