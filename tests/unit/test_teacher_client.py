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
from vlmprobe.teacher.client import Teacher
from vlmprobe.teacher.results import TeacherCircuitOpen, TeacherError, TeacherResult
from vlmprobe.teacher.retry import CircuitBreaker, RequestRetries, RetryDecision, RetryPolicy

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


def test_out_of_attempts_raises_teacher_error_with_reason():
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


def test_retry_policy_never_shortens_a_server_delay_and_caps_only_its_own_backoff():
    policy = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=10.0, jitter=0.25)

    def rate_limited(delay: str) -> errors.ClientError:
        info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        return errors.ClientError(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [info]}})

    suggested = policy.decide(rate_limited("3s"), attempt=1)
    assert suggested.retry and suggested.server_delay and 3.0 <= suggested.delay <= 3.0 * 1.25
    assert 120.0 <= policy.decide(rate_limited("120s"), attempt=1).delay <= 150.0  # max_delay is no cap on it
    assert policy.decide(rate_limited("1.5s"), attempt=1).delay >= 1.5
    said = errors.ClientError(429, {"error": {"code": 429, "message": "Quota exceeded. Please retry in 45.54s."}})
    assert policy.decide(said, attempt=1).delay >= 45.54
    assert 0.5 * 0.75 <= policy.decide(errors.ServerError(503, {}), attempt=1).delay <= 0.5
    assert policy.decide(errors.ServerError(503, {}), attempt=9).delay <= 10.0  # our own backoff is capped
    assert policy.decide(errors.ServerError(503, {}), attempt=4).retry is False  # max_attempts, when set
    assert policy.decide(errors.ClientError(404, {}), attempt=1) == policy.decide(errors.ClientError(404, {}), 1)
    assert policy.decide(errors.ClientError(404, {}), attempt=1).retry is False
    assert policy.decide(KeyError("a bug"), attempt=1) is None



def test_a_request_retries_within_its_window_and_its_bounds_on_unusable_and_cut_off_answers():
    retries = RequestRetries(RetryPolicy(window_s=60.0, max_bad_outputs=3))
    retries.start()
    unusable = RetryDecision("schema_mismatch", True, 0.0)
    assert [retries.again("bad_output", unusable) for _ in range(3)] == [True, True, False]
    cut_off = RetryDecision("finish_max_tokens", True, 0.0)
    assert [retries.again("max_tokens", cut_off) for _ in range(2)] == [True, False]  # one larger answer
    assert retries.again("transient", RetryDecision("http_503", True, 1.0)) is True
    assert retries.again("transient", RetryDecision("http_503", True, 61.0)) is False  # would end past the window
    assert retries.again("final", RetryDecision("http_400", False, 0.0)) is False


def test_unusable_answers_are_asked_again_at_most_max_bad_outputs_times():
    with GeminiSimulator(port=0, rate_malformed=1.0) as sim:
        with pytest.raises(TeacherError) as caught:
            asyncio.run(_generate_all(sim, retry=RetryPolicy(base_delay=0.001, max_bad_outputs=2)))
        requests = sim.stats()["requests"]
    assert caught.value.reason == "schema_mismatch" and caught.value.attempts == 2 == requests


def test_the_circuit_breaker_opens_on_a_full_window_with_more_than_its_ratio_failed():
    half = CircuitBreaker(window=4, ratio=0.5)
    assert [half.record(r) for r in ("http_503", None, "timeout", None)] == [None] * 4  # 2 of 4: not more
    breaker = CircuitBreaker(window=4, ratio=0.5)
    assert [breaker.record(r) for r in ("http_503", "http_503", None)] == [None] * 3  # the window is not full
    opened = breaker.record("timeout")
    assert isinstance(opened, TeacherCircuitOpen) and opened.exit_code == 1
    assert "3 of the last 4 requests failed" in str(opened) and "mostly http_503 (2)" in str(opened)


# --------------------------------------------------------------------- what real Gemini answers


def _log_of(sim: GeminiSimulator) -> list[dict]:
    return sorted(sim.request_log(), key=lambda e: e["n"])


def test_a_429_is_retried_no_earlier_than_asked_and_pauses_every_new_request():
    rates = {"rate_429": 0.5}
    seed = _seed_with_plan(["429", None, None, None], **rates)

    async def run(sim: GeminiSimulator) -> Teacher:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=FAST, concurrency=4) as teacher:
            first = asyncio.create_task(teacher.generate("The rate-limited one.", QASet))
            while not sim.request_log():  # the 429 is back within milliseconds
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            others = [teacher.generate(f"Another question {i}.", QASet) for i in range(2)]
            await asyncio.gather(first, *others)
        return teacher

    with GeminiSimulator(port=0, seed=seed, retry_delay_s=1.5, **rates) as sim:
        teacher = asyncio.run(run(sim))
        log = _log_of(sim)
    assert [e["status"] for e in log] == [429, 200, 200, 200]
    rate_limited_at = log[0]["time"]
    retry = next(e for e in log[1:] if e["sha256"] == log[0]["sha256"])
    assert retry["time"] - rate_limited_at >= 1.5  # not before RetryInfo, whatever max_delay says
    assert all(e["time"] - rate_limited_at >= 1.5 for e in log[1:])  # the others waited too
    assert teacher.stats["rate_limited"] == 1 and teacher.stats["paused_s"] >= 1.5


@pytest.mark.parametrize("fail, expected", [
    ("invalid_key", "the Gemini API key was rejected (API_KEY_INVALID)"),
    ("401", "the Gemini API key was not accepted (HTTP 401 UNAUTHENTICATED)"),
    ("403", "the Gemini API key has no permission"),
    ("404", f"model {MODEL!r} not found"),
])
def test_a_dead_key_or_model_stops_every_call_with_one_line_and_no_key(fail, expected, caplog):
    from vlmprobe.errors import TeacherUnusable

    caplog.set_level(logging.DEBUG)

    async def run(sim: GeminiSimulator) -> list[BaseException]:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=FAST, concurrency=2) as teacher:
            first = await asyncio.gather(*(teacher.generate(f"Q{i}", QASet) for i in range(6)), return_exceptions=True)
            later = await asyncio.gather(teacher.generate("After the stop.", QASet), return_exceptions=True)
        return [*first, *later]

    with GeminiSimulator(port=0, fail=fail) as sim:
        outcomes = asyncio.run(run(sim))
        requests = sim.stats()["requests"]
    assert all(isinstance(o, TeacherUnusable) and o.exit_code == 3 for o in outcomes)
    message = str(outcomes[0])
    assert expected in message and "\n" not in message
    assert requests <= 2  # the two in flight when the first answer came; nothing after
    assert SECRET not in caplog.text and not any(SECRET in str(o) for o in outcomes)


def test_an_unknown_model_is_named():
    from vlmprobe.errors import TeacherUnusable

    async def run(sim: GeminiSimulator) -> None:
        async with Teacher("gemini-9", api_key=SECRET, base_url=sim.base_url, retry=FAST) as teacher:
            await teacher.generate("Q", QASet)

    with GeminiSimulator(port=0, models=[MODEL]) as sim:
        with pytest.raises(TeacherUnusable, match="model 'gemini-9' not found"):
            asyncio.run(run(sim))


def test_a_plain_400_about_one_request_is_that_records_error_and_the_rest_go_on():
    async def run(sim: GeminiSimulator) -> list:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=FAST) as teacher:
            return await asyncio.gather(
                teacher.generate("Bad image.", QASet, images=[(b"\x00", "application/x-unknown")]),
                teacher.generate("Fine.", QASet), return_exceptions=True)

    with GeminiSimulator(port=0) as sim:
        bad, good = asyncio.run(run(sim))
    assert isinstance(bad, TeacherError) and bad.reason == "http_400"
    assert isinstance(good, TeacherResult)


@pytest.mark.parametrize("fault, reason", [("safety", "finish_safety"), ("blocked", "blocked_safety")])
def test_a_safety_verdict_is_sent_once(fault, reason):
    with GeminiSimulator(port=0, **{f"rate_{fault}": 1.0}) as sim:
        with pytest.raises(TeacherError) as caught:
            asyncio.run(_generate_all(sim))
        requests = sim.stats()["requests"]
    assert caught.value.reason == reason and caught.value.attempts == 1 == requests


def test_max_tokens_is_retried_once_with_twice_the_limit_then_given_up():
    async def ask(sim: GeminiSimulator, limit: int) -> TeacherResult:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=FAST) as teacher:
            return await teacher.generate("Question about the dog.", QASet, max_output_tokens=limit)

    with GeminiSimulator(port=0) as sim:
        whole = asyncio.run(ask(sim, 4096))
    needed = whole.usage.output_tokens  # the simulator's answer to this body is deterministic
    with GeminiSimulator(port=0) as sim:
        grown = asyncio.run(ask(sim, needed - 1))
        limits = [e["max_output_tokens"] for e in _log_of(sim)]
    assert grown.attempts == 2 and limits == [needed - 1, 2 * (needed - 1)]
    with GeminiSimulator(port=0) as sim:
        with pytest.raises(TeacherError) as caught:
            asyncio.run(ask(sim, needed // 3))
        limits = [e["max_output_tokens"] for e in _log_of(sim)]
    assert caught.value.reason == "finish_max_tokens" and limits == [needed // 3, 2 * (needed // 3)]


def test_a_200_that_is_not_json_is_retried_like_a_transport_error():
    rates = {"rate_non_json": 0.5}
    seed = _seed_with_plan(["non_json", None], **rates)
    with GeminiSimulator(port=0, seed=seed, **rates) as sim:
        (result,), teacher = asyncio.run(_generate_all(sim))
    assert result.attempts == 2 and teacher.stats["failures"] == {"bad_response": 1}


def test_a_daily_quota_429_raises_quota_exhausted_with_the_pacific_reset():
    import datetime as dt

    from vlmprobe.errors import QuotaExhausted

    async def run(sim: GeminiSimulator) -> tuple[list, Teacher]:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=FAST) as teacher:
            done = [await teacher.generate(f"Q{i}", QASet) for i in range(2)]
            with pytest.raises(QuotaExhausted) as caught:
                await teacher.generate("Q2", QASet)
            with pytest.raises(QuotaExhausted):
                await teacher.generate("Q3", QASet)  # at once, without asking again
        return [done, caught.value], teacher

    with GeminiSimulator(port=0, rpd=2) as sim:
        (done, error), teacher = asyncio.run(run(sim))
        statuses = [e["status"] for e in _log_of(sim)]
    assert statuses == [200, 200, 429]  # its RetryInfo ("43s") was no reason to ask again
    assert error.exit_code == 4 and "GenerateRequestsPerDayPerProjectPerModel" in str(error)
    now = dt.datetime.now(dt.timezone.utc)
    local = error.resets_at.astimezone(dt.timezone.utc)
    assert str(error.resets_at.tzinfo) == "America/Los_Angeles" and error.resets_at.hour == 0
    assert now < local <= now + dt.timedelta(hours=25)


def test_the_circuit_breaker_stops_a_step_whose_requests_keep_failing():
    async def run(sim: GeminiSimulator) -> list:
        retry = RetryPolicy(window_s=0.05, base_delay=0.01, jitter=0.0)
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, retry=retry, breaker_window=4) as teacher:
            outcomes = []
            for i in range(5):
                try:
                    outcomes.append(await teacher.generate(f"Q{i}", QASet))
                except (TeacherError, TeacherCircuitOpen) as e:
                    outcomes.append(e)
            return outcomes

    with GeminiSimulator(port=0, rate_503=1.0) as sim:
        outcomes = asyncio.run(run(sim))
    assert [type(o).__name__ for o in outcomes] == ["TeacherError"] * 3 + ["TeacherCircuitOpen"] * 2
    assert outcomes[3].exit_code == 1 and "mostly http_503" in str(outcomes[3])


def test_thinking_is_off_by_default_and_counted_as_output_when_on():
    with GeminiSimulator(port=0) as sim:
        (off,), quiet = asyncio.run(_generate_all(sim))
        (on,), thinking = asyncio.run(_generate_all(sim, thinking_budget=None))
    assert off.usage.thinking_tokens == 0 and quiet.stats["thinking_tokens"] == 0
    assert on.usage.thinking_tokens > 0
    assert on.usage.output_tokens > on.usage.thinking_tokens  # output includes thinking, billed alike
    assert thinking.stats["thinking_tokens"] == on.usage.thinking_tokens


def test_auto_concurrency_follows_the_rpm_share_and_latency():
    from vlmprobe.teacher.quota import QuotaLimits

    with GeminiSimulator(port=0, latency_ms=100) as sim:
        _, auto = asyncio.run(_generate_all(sim, n=8, concurrency=0, limits=QuotaLimits(rpm=600)))
        _, unlimited = asyncio.run(_generate_all(sim, n=2, concurrency=0))
        _, fixed = asyncio.run(_generate_all(sim, n=2, concurrency=7, limits=QuotaLimits(rpm=600)))
    # Little's law: 10 requests/s x ~0.1 s latency, x1.5 headroom, +1: about 3 in flight
    assert 2 <= auto.stats["concurrency_ceiling"] <= 4
    assert unlimited.stats["concurrency_ceiling"] == 16 and fixed.stats["concurrency_ceiling"] == 7


def test_images_are_downscaled_before_sending_and_their_tokens_estimated():
    import io

    from PIL import Image

    big = io.BytesIO()
    Image.new("RGB", (3000, 1500), "teal").save(big, format="PNG")

    async def run(sim: GeminiSimulator) -> TeacherResult:
        async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, image_max_side=768) as teacher:
            return await teacher.generate("What color?", QASet, images=[(big.getvalue(), "image/png")])

    with GeminiSimulator(port=0) as sim:
        result = asyncio.run(run(sim))
    # 768 x 384 after downscaling: 2 x 1 tiles of 384 px, 258 tokens each (the simulator counts tiles too)
    assert result.usage.prompt_tokens == -(-len("What color?") // 4) + 2 * 258
