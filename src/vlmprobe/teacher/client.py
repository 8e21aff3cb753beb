"""The one Gemini client per process: google-genai (async), structured output, our retry policy.

``Teacher`` wraps ``google.genai.Client`` for ``generate_content`` with a pydantic response
schema. It bounds concurrency with a semaphore, spaces request starts by ``request_delay``,
and retries by :class:`RetryPolicy` (the SDK's own retries stay off: they ignore RetryInfo).
Output that fails its schema (google-genai's ``response.parsed`` is silently ``None``) or ends
with a finish reason other than STOP counts as a failed attempt. Usage is summed over attempts.

The API key comes from ``api_key`` or ``GEMINI_API_KEY`` and appears in no message, log or
repr. ``GEMINI_BASE_URL`` points the client elsewhere, e.g. at :mod:`vlmprobe.sim`.

Usage::

    async with Teacher("gemini-2.5-flash", concurrency=16) as teacher:
        result = await teacher.generate(prompt, QASet, images=[(png_bytes, "image/png")])
        result.parsed, result.usage, result.attempts
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from google import genai
from google.genai import errors, types
from pydantic import BaseModel, ValidationError

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
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"

Schema = TypeVar("Schema", bound=BaseModel)


class TeacherError(Exception):
    """A request that failed for good: not retryable, or out of attempts.

    ``reason`` is short and machine-friendly: ``http_429``, ``http_400``, ``schema_mismatch``,
    ``finish_max_tokens``, ``timeout``, ``transport``…
    """

    def __init__(self, reason: str, attempts: int, message: str, usage: Usage | None = None) -> None:
        super().__init__(f"{message} (reason={reason}, attempts={attempts})")
        self.reason = reason
        self.attempts = attempts
        self.message = message
        self.usage = usage or Usage()  # tokens billed for the failed attempts


class _RejectedOutput(Exception):
    """A 200 answer that cannot be used: bad JSON, schema mismatch, or a bad finish reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class RetryDecision:
    reason: str  # what went wrong, e.g. "http_503"
    retry: bool
    delay: float  # seconds to wait before the next attempt


@dataclass
class RetryPolicy:
    """When to retry and how long to wait: the only place that decides it.

    Retried: HTTP 408/429/500/502/503/504, timeouts, transport errors and rejected output. The
    server's suggested delay (RetryInfo, Retry-After) is honoured, capped at ``max_delay``;
    otherwise exponential backoff from ``base_delay``. ``jitter`` is a fraction of the delay.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}.")
        if self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("base_delay and max_delay must be >= 0 and jitter within [0, 1].")

    def decide(self, error: BaseException, attempt: int, rng: random.Random | None = None) -> RetryDecision | None:
        """What to do after ``attempt`` (1-based) failed with ``error``.

        Returns None when ``error`` is not a request failure at all (a bug): let it propagate.
        """
        classified = self._classify(error)
        if classified is None:
            return None
        reason, retryable = classified
        if not retryable or attempt >= self.max_attempts:
            return RetryDecision(reason, False, 0.0)
        spread = (rng or random).random() * self.jitter
        suggested = self._server_delay(error)
        if suggested is not None:
            # Never earlier than the server asked; the jitter spreads a herd of waiters.
            delay = min(self.max_delay, suggested * (1 + spread))
        else:
            delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (1 - spread)
        return RetryDecision(reason, True, delay)

    @staticmethod
    def _classify(error: BaseException) -> tuple[str, bool] | None:
        if isinstance(error, _RejectedOutput):
            return error.reason, True
        if isinstance(error, errors.APIError):
            code = int(error.code or 0)
            return f"http_{code}", code in RETRYABLE_STATUS
        if isinstance(error, (asyncio.TimeoutError, httpx.TimeoutException)):
            return "timeout", True
        if isinstance(error, (httpx.TransportError, ConnectionError, *_AIOHTTP_ERRORS)):
            return "transport", True
        return None

    @staticmethod
    def _server_delay(error: BaseException) -> float | None:
        """Seconds the server asked us to wait: RetryInfo in the error body, else Retry-After."""
        if not isinstance(error, errors.APIError):
            return None
        body = error.details if isinstance(error.details, dict) else {}
        body = body.get("error", body)
        for detail in body.get("details") or []:
            if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
                delay = detail.get("retryDelay")
                if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
                    return float(delay[:-1])
                if isinstance(delay, dict):  # the protobuf form {"seconds": .., "nanos": ..}
                    return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
        headers = getattr(getattr(error, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None


@dataclass
class Usage:
    prompt_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.output_tokens + other.output_tokens)

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass
class TeacherResult(Generic[Schema]):
    parsed: Schema
    usage: Usage
    attempts: int


def _usage_of(response: types.GenerateContentResponse) -> Usage:
    meta = response.usage_metadata
    if meta is None:
        return Usage()
    # Thinking tokens are billed as output.
    output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return Usage(meta.prompt_token_count or 0, output)


def _parsed_or_reject(response: types.GenerateContentResponse, schema: type[Schema]) -> Schema:
    """The parsed answer, or _RejectedOutput saying why there is none."""
    candidates = response.candidates or []
    if not candidates:
        block = response.prompt_feedback.block_reason if response.prompt_feedback else None
        raise _RejectedOutput("no_candidates", f"no candidates (prompt block reason: {block})")
    finish = candidates[0].finish_reason
    if finish is not None and finish != types.FinishReason.STOP:
        name = getattr(finish, "name", str(finish))
        raise _RejectedOutput(f"finish_{name.lower()}", f"finish reason {name}")
    # We validate the text ourselves: the SDK's response.parsed is silently None on bad JSON.
    try:
        return schema.model_validate_json(response.text or "")
    except ValidationError as e:
        detail = f"{e.error_count()} validation error(s), first: {e.errors()[0]['msg']}"
    raise _RejectedOutput("schema_mismatch", detail)


@functools.lru_cache(maxsize=64)
def _response_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent as ``response_json_schema``, built once per model class.

    Passing the class as ``response_schema`` makes google-genai rebuild and convert it on every
    call (about 2.7 ms of CPU each, measured with bench/bench_teacher.py).
    """
    return schema.model_json_schema()


class Teacher:
    """Gemini with structured output, bounded concurrency, spaced starts and retries.

    ``concurrency`` bounds requests in flight; ``request_delay`` is the minimum time between
    the starts of two requests in this process; ``timeout_s`` bounds one attempt. Use it as an
    async context manager: it opens one google-genai client and closes it on exit.
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
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ValueError(
                f"No Gemini API key: set the {API_KEY_ENV} environment variable (any value works with "
                "the simulator) or pass api_key=."
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}.")
        if request_delay < 0 or timeout_s <= 0:
            raise ValueError("request_delay must be >= 0 and timeout_s > 0.")
        self.model = model
        self.base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
        self.concurrency = concurrency
        self.request_delay = request_delay
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._client: genai.Client | None = None
        self._session: Any = None  # aiohttp.ClientSession when aiohttp is installed
        self._semaphore: asyncio.Semaphore | None = None
        self._start_lock: asyncio.Lock | None = None
        self._next_start = 0.0
        self._rng = random.Random()
        self._requests = 0
        self._retries = 0
        self._succeeded = 0
        self._failures: Counter[str] = Counter()  # failed attempts by reason
        self._gave_up: Counter[str] = Counter()  # TeacherErrors raised, by reason
        self._usage = Usage()

    def __repr__(self) -> str:
        return f"Teacher(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    async def __aenter__(self) -> Teacher:
        if self._client is not None:
            raise RuntimeError("This Teacher is already open; make one per process and reuse it.")
        if aiohttp is not None:
            # Our own session: a pool sized to the concurrency, closed by us; the SDK's own
            # subclasses aiohttp.ClientSession, which aiohttp >= 3.14 deprecates with a warning.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency), trust_env=True
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
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._start_lock = asyncio.Lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        session, self._session = self._session, None
        if client is not None:
            await client.aio.aclose()
            client.close()
        if session is not None:
            await session.close()

    @property
    def stats(self) -> dict[str, Any]:
        """Requests sent, retries, failed attempts and give-ups by reason, tokens."""
        return {
            "requests": self._requests,
            "retries": self._retries,
            "succeeded": self._succeeded,
            "failures": dict(self._failures),
            "gave_up": dict(self._gave_up),
            "prompt_tokens": self._usage.prompt_tokens,
            "output_tokens": self._usage.output_tokens,
        }

    async def _wait_for_start(self) -> None:
        """Space request starts by ``request_delay`` across all tasks of this process."""
        assert self._start_lock is not None
        async with self._start_lock:  # FIFO, so waiters start in arrival order
            now = time.monotonic()
            if now < self._next_start:
                await asyncio.sleep(self._next_start - now)
                now = time.monotonic()
            self._next_start = now + self.request_delay

    async def generate(
        self,
        prompt: str,
        schema: type[Schema],
        *,
        images: Sequence[tuple[bytes, str]] = (),
        temperature: float = 0.2,
    ) -> TeacherResult[Schema]:
        """Ask for an answer of type ``schema`` about ``prompt`` and ``images`` ((bytes, mime) pairs).

        Retries by the policy; raises :class:`TeacherError` once it gives up.
        """
        if self._client is None or self._semaphore is None:
            raise RuntimeError("Use the Teacher as `async with Teacher(...) as teacher:` before generate().")
        contents: list[Any] = [types.Part.from_bytes(data=data, mime_type=mime) for data, mime in images]
        contents.append(types.Part.from_text(text=prompt))
        config = types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=_response_schema(schema),
            temperature=temperature,
        )
        usage = Usage()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._semaphore:
                    if self.request_delay > 0:
                        await self._wait_for_start()
                    self._requests += 1
                    response = await self._client.aio.models.generate_content(
                        model=self.model, contents=contents, config=config
                    )
                spent = _usage_of(response)
                usage, self._usage = usage + spent, self._usage + spent
                parsed = _parsed_or_reject(response, schema)
                self._succeeded += 1
                return TeacherResult(parsed, usage, attempt)
            except Exception as error:
                decision = self.retry.decide(error, attempt, self._rng)
                if decision is None:
                    raise
                self._failures[decision.reason] += 1
                if not decision.retry:
                    self._gave_up[decision.reason] += 1
                    raise TeacherError(decision.reason, attempt, f"Gemini {self.model}: {error}", usage) from error
                self._retries += 1
                logger.info(
                    "Gemini %s attempt %d/%d failed (%s); retrying in %.2f s",
                    self.model, attempt, self.retry.max_attempts, decision.reason, decision.delay,
                )
                await asyncio.sleep(decision.delay)
