"""The Teacher against the Gemini simulator: parsing, usage, retries, limits, key hygiene."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Literal

import pytest
from google.genai import errors
from pydantic import BaseModel, Field

from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.client import RetryPolicy, Teacher, TeacherError, TeacherResult

MODEL = "gemini-sim-flash"
SECRET = "sk-teacher-test-secret-7731"
FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=5.0, jitter=0.0)


class QAItem(BaseModel):
    answer_type: Literal["yes_no", "multiple_choice", "open"]
    choices: list[str]
    answer: str
    verified: bool


class QASet(BaseModel):
    items: list[QAItem] = Field(min_length=1, max_length=4)


def _seed_with_plan(plan: list[str | None], **rates: float) -> int:
    """A seed whose first requests get exactly ``plan``'s faults."""
    return next(
        seed for seed in range(10_000)
        if [GeminiSimulator(seed=seed, **rates).planned_fault(i) for i in range(len(plan))] == plan
    )


async def _generate_all(sim: GeminiSimulator, n: int = 1, **teacher_options) -> tuple[list[TeacherResult], Teacher]:
    teacher_options = {"retry": FAST, **teacher_options}
    async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, **teacher_options) as teacher:
        results = await asyncio.gather(*(teacher.generate(f"Question {i} about the dog.", QASet) for i in range(n)))
    return results, teacher


def test_generate_returns_the_parsed_schema_and_counts_usage():
    with GeminiSimulator(port=0) as sim:
        (result,), teacher = asyncio.run(_generate_all(sim))
        stats = sim.stats()
    assert isinstance(result.parsed, QASet) and result.attempts == 1
    assert result.usage.prompt_tokens == stats["prompt_tokens"] > 0
    assert result.usage.output_tokens == stats["output_tokens"] > 0
    assert teacher.stats["requests"] == 1 and teacher.stats["prompt_tokens"] == stats["prompt_tokens"]


def test_429_is_retried_after_the_server_suggested_delay():
    rates = {"rate_429": 0.5}
    seed = _seed_with_plan(["429", "429", None], **rates)
    # The backoff is ~1 ms here, so only honouring RetryInfo makes the retries wait.
    with GeminiSimulator(port=0, seed=seed, retry_delay_s=0.3, **rates) as sim:
        started = time.monotonic()
        (result,), teacher = asyncio.run(_generate_all(sim, retry=RetryPolicy(max_attempts=5, base_delay=0.001)))
        elapsed = time.monotonic() - started
    assert result.attempts == 3 and teacher.stats["failures"] == {"http_429": 2}
    assert elapsed >= 2 * 0.3


def test_503_and_malformed_json_are_failed_attempts_then_succeed():
    rates = {"rate_503": 0.3, "rate_malformed": 0.3}
    seed = _seed_with_plan(["503", "malformed", None], **rates)
    with GeminiSimulator(port=0, seed=seed, **rates) as sim:
        (result,), teacher = asyncio.run(_generate_all(sim, retry=RetryPolicy(max_attempts=3, base_delay=0.001)))
        stats = sim.stats()
    assert isinstance(result.parsed, QASet) and result.attempts == 3
    assert teacher.stats["failures"] == {"http_503": 1, "schema_mismatch": 1}
    # Both 200 answers were billed, the malformed one included.
    assert result.usage.prompt_tokens == stats["prompt_tokens"] == 2 * -(-len("Question 0 about the dog.") // 4)


def test_budget_exhausted_raises_teacher_error_with_reason():
    with GeminiSimulator(port=0, rate_503=1.0) as sim:
        with pytest.raises(TeacherError) as caught:
            asyncio.run(_generate_all(sim))
        requests = sim.stats()["requests"]
    assert caught.value.reason == "http_503" and caught.value.attempts == 3 == requests


def test_400_is_not_retried():
    async def ask_with_bad_image(sim: GeminiSimulator) -> None:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=FAST) as teacher:
            await teacher.generate("What is this?", QASet, images=[(b"\x00", "application/x-unknown")])

    with GeminiSimulator(port=0) as sim:
        with pytest.raises(TeacherError) as caught:
            asyncio.run(ask_with_bad_image(sim))
        requests = sim.stats()["requests"]
    assert caught.value.reason == "http_400" and caught.value.attempts == 1 == requests


def test_timeout_is_a_failed_attempt_with_reason_timeout():
    with GeminiSimulator(port=0, latency_ms=2000) as sim:
        with pytest.raises(TeacherError) as caught:
            asyncio.run(_generate_all(sim, timeout_s=0.1, retry=RetryPolicy(max_attempts=1)))
    assert caught.value.reason == "timeout"


def test_concurrency_limits_requests_in_flight_at_the_server():
    with GeminiSimulator(port=0, latency_ms=100) as sim:
        asyncio.run(_generate_all(sim, n=16, concurrency=4))
        stats = sim.stats()
    assert stats["requests"] == 16
    assert 2 <= stats["max_in_flight"] <= 4


def test_request_delay_spaces_request_starts():
    with GeminiSimulator(port=0) as sim:
        started = time.monotonic()
        asyncio.run(_generate_all(sim, n=5, concurrency=5, request_delay=0.1))
        elapsed = time.monotonic() - started
    assert elapsed >= 4 * 0.1


def test_missing_api_key_is_a_clear_error_without_any_key(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", SECRET)  # not ours to use, and never to be echoed
    with pytest.raises(ValueError, match="GEMINI_API_KEY") as caught:
        Teacher(MODEL)
    assert SECRET not in str(caught.value)


def test_api_key_comes_from_the_environment_and_never_leaks(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    rates = {"rate_429": 0.5}
    seed = _seed_with_plan(["429", None], **rates)

    async def run(sim: GeminiSimulator) -> Teacher:
        async with Teacher(MODEL, base_url=sim.base_url, retry=FAST) as teacher:
            await teacher.generate("Count the cats.", QASet)
            with pytest.raises(TeacherError) as caught:
                await teacher.generate("Bad image.", QASet, images=[(b"\x00", "application/x-unknown")])
            assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.__cause__)
        return teacher

    with GeminiSimulator(port=0, seed=seed, retry_delay_s=0.01, **rates) as sim:
        teacher = asyncio.run(run(sim))
        stats = sim.stats()
    assert stats["by_status"] == {"429": 1, "200": 1, "400": 1}
    assert "retrying" in caplog.text  # the retry was logged ...
    assert SECRET not in caplog.text  # ... without the key
    assert SECRET not in repr(teacher) and SECRET not in json.dumps(teacher.stats) + json.dumps(stats)


def test_retry_policy_honours_and_caps_server_delays():
    policy = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=10.0, jitter=0.25)

    def rate_limited(delay: str) -> errors.ClientError:
        info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        return errors.ClientError(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [info]}})

    suggested = policy.decide(rate_limited("3s"), attempt=1)
    assert suggested.retry and 3.0 <= suggested.delay <= 3.0 * 1.25
    assert policy.decide(rate_limited("120s"), attempt=1).delay == 10.0
    assert 0.5 * 0.75 <= policy.decide(errors.ServerError(503, {}), attempt=1).delay <= 0.5
    assert policy.decide(errors.ServerError(503, {}), attempt=4).retry is False
    assert policy.decide(errors.ClientError(404, {}), attempt=1) == policy.decide(errors.ClientError(404, {}), 1)
    assert policy.decide(errors.ClientError(404, {}), attempt=1).retry is False
    assert policy.decide(KeyError("a bug"), attempt=1) is None
