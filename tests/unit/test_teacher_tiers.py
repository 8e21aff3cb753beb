"""Service tiers for online requests: what is sent, the tier served, its price, its timing."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.client import Teacher
from vlmprobe.teacher.pricing import PRICE_TABLE, TIER_PRICES_AS_OF, estimate_cost, price_of
from vlmprobe.teacher.quota import QuotaLimits
from vlmprobe.teacher.request import contents_of, generation_config, request_body, request_sha256
from vlmprobe.teacher.retry import RetryPolicy, tier_timing
from vlmprobe.teacher.usage import served_tier

MODEL = "gemini-2.5-flash"
SECRET = "sk-tier-test-secret-5521"
FAST = RetryPolicy(base_delay=0.001, max_delay=0.01, jitter=0.0)


class Echo(BaseModel):
    text: str


async def _ask(sim: GeminiSimulator, n: int = 1, **options) -> Teacher:
    options = {"retry": FAST, **options}
    async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url, **options) as teacher:
        await asyncio.gather(*(teacher.generate(f"question {i} about herons", Echo, kind="qa") for i in range(n)))
    return teacher


def test_prices_per_tier_flex_and_batch_are_half_priority_is_unknown():
    assert TIER_PRICES_AS_OF
    for model in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite-preview-06-17"):
        standard = estimate_cost(model, 1_000_000, 100_000, 200_000)
        assert estimate_cost(model, 1_000_000, 100_000, 200_000, tier="flex") == pytest.approx(standard / 2)
        assert estimate_cost(model, 1_000_000, 100_000, 200_000, tier="batch") == pytest.approx(standard / 2)
        assert estimate_cost(model, 1_000_000, 100_000, tier="priority") is None
    assert price_of("gemini-2.0-flash", "flex") is None and price_of("gemini-2.0-flash", "standard") is not None
    assert PRICE_TABLE["priority"] == {}
    with pytest.raises(ValueError, match="unknown tier"):
        estimate_cost(MODEL, 1, 1, tier="cheap")


def test_the_served_tier_is_read_from_the_header_then_the_traffic_type():
    def response(headers=None, traffic=None):
        return SimpleNamespace(sdk_http_response=SimpleNamespace(headers=headers),
                               usage_metadata=SimpleNamespace(traffic_type=traffic))

    assert served_tier(response({"X-Gemini-Service-Tier": "flex"})) == "flex"
    assert served_tier(response({"x-gemini-service-tier": "SERVICE_TIER_PRIORITY"})) == "priority"
    assert served_tier(response({"x-gemini-service-tier": "standard"}, "ON_DEMAND_FLEX")) == "standard"
    assert served_tier(response({}, SimpleNamespace(value="ON_DEMAND_FLEX"))) == "flex"
    assert served_tier(response(None, None)) is None and served_tier(response({"x-gemini-service-tier": "odd"})) is None


def test_a_standard_request_sends_no_tier_and_is_the_body_the_batch_writes():
    with GeminiSimulator(port=0) as sim:
        teacher = asyncio.run(_ask(sim))
        (entry,) = sim.request_log()
    assert "service_tier" not in entry and teacher.stats["served_tiers"] == {"standard": 1}

    async def body():
        contents = await contents_of("question 0 about herons", (), 768)
        return request_body(contents.parts, generation_config(Echo, 0.2, 2048, 0))

    expected = asyncio.run(body())
    assert "serviceTier" not in expected and request_sha256(expected) == entry["sha256"]


def test_flex_is_sent_served_and_priced_at_half():
    with GeminiSimulator(port=0, flex_latency_s=0.05) as sim:
        flex = asyncio.run(_ask(sim, 3, service_tier="flex"))
        assert [e["service_tier"] for e in sim.request_log()] == ["flex"] * 3
    with GeminiSimulator(port=0) as sim:
        standard = asyncio.run(_ask(sim, 3))
    assert flex.stats["served_tiers"] == {"flex": 3}
    tally = flex.stats["by_tier"]["flex"]
    assert tally["answers"] == 3 and tally["estimated_cost_usd"] > 0
    assert tally["estimated_cost_usd"] == pytest.approx(tally["standard_cost_usd"] / 2, abs=3e-6)
    assert flex.stats["estimated_cost_usd"] == pytest.approx(standard.stats["estimated_cost_usd"] / 2, abs=3e-6)


def test_a_shed_flex_request_is_retried_like_a_503():
    with GeminiSimulator(port=0, seed=2, flex_shed_rate=0.5) as sim:
        teacher = asyncio.run(_ask(sim, 8, service_tier="flex"))
        shed = [e for e in sim.request_log() if e["outcome"] == "flex_shed"]
    assert shed and teacher.stats["succeeded"] == 8
    assert teacher.stats["failures"] == {"http_503": len(shed)} and teacher.stats["served_tiers"] == {"flex": 8}


def test_a_priority_request_over_its_limit_is_priced_as_served(caplog):
    with GeminiSimulator(port=0, priority_downgrade_rate=1.0) as sim:
        downgraded = asyncio.run(_ask(sim, 2, service_tier="priority"))
    assert downgraded.stats["served_tiers"] == {"standard": 2} and downgraded.stats["estimated_cost_usd"] > 0
    caplog.set_level(logging.WARNING)
    with GeminiSimulator(port=0) as sim:
        priority = asyncio.run(_ask(sim, 2, service_tier="priority", limits=QuotaLimits(max_cost_usd=1.0)))
    assert priority.stats["served_tiers"] == {"priority": 2} and priority.stats["estimated_cost_usd"] == 0
    assert priority.stats["by_tier"]["priority"]["unpriced"] == 2
    assert "no price is known for gemini-2.5-flash at the priority tier" in caplog.text


def test_timeouts_retry_window_and_auto_concurrency_follow_the_tier(caplog):
    caplog.set_level(logging.INFO)
    standard = Teacher(MODEL, api_key="k")
    assert standard.timeout_s == 120 and standard.retry == RetryPolicy() and standard._flow.ceiling == 16
    explicit = Teacher(MODEL, api_key="k", timeout_s=30, retry=RetryPolicy(window_s=60))
    assert explicit.timeout_s == 30 and explicit.retry.window_s == 60
    flex = Teacher(MODEL, api_key="k", service_tier="flex", timeout_s=120, retry=RetryPolicy(window_s=600))
    assert flex.timeout_s == 1200 and flex.retry.window_s == 3600 and "raised to 1200 s" in caplog.text
    assert Teacher(MODEL, api_key="k", service_tier="flex").retry.base_delay == 5.0
    assert Teacher(MODEL, api_key="k", service_tier="flex", timeout_s=1800).timeout_s == 1800
    auto = Teacher(MODEL, api_key="k", service_tier="flex", concurrency=0)
    assert auto._flow.ceiling == tier_timing("flex").no_rpm_concurrency == 128
    with pytest.raises(ValueError, match="service_tier must be one of"):
        Teacher(MODEL, api_key="k", service_tier="batch")

    async def ceiling() -> int:
        # Little's law before the first answer: 10 requests/s x 300 s guessed latency, capped at 512
        async with Teacher(MODEL, api_key="k", service_tier="flex", concurrency=0,
                           limits=QuotaLimits(rpm=600)) as teacher:
            return teacher._flow.ceiling

    assert asyncio.run(ceiling()) == 512
