"""Tokens and estimated cost of the teacher's answers.

Every answer is billed, used or not: its tokens (Gemini's ``usageMetadata``) go into
:class:`Usage`, and the process's :class:`Ledger` sums them with their estimated cost from the
price table (:mod:`vlmprobe.teacher.pricing`) at the tier that served them, per tier, next to
what the same tokens would have cost at standard. The run-wide sum of those costs is what
``QuotaLimits.max_cost_usd`` is checked against (:mod:`vlmprobe.teacher.quota`).

The tier that served an online answer (:func:`served_tier`) is what Gemini says in the
``x-gemini-service-tier`` response header (documented on the priority-inference page and in the
cookbook's ``quickstarts/Inference_tiers.ipynb``: a priority request over its limit is served,
and billed, at standard; a flex one says ``flex``). google-genai returns the headers of every
``generate_content`` call in ``response.sdk_http_response.headers``, so no raw body is needed.
As a second source, ``usageMetadata.trafficType`` (``ON_DEMAND_FLEX``, ``ON_DEMAND_PRIORITY``,
``ON_DEMAND``) is read when present; google-genai 3.6.1 documents that field as Vertex-only.

No google-genai import at module level: the steps read :class:`Usage` without loading the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmprobe.teacher.pricing import ONLINE_TIERS, estimate_cost

if TYPE_CHECKING:
    from google.genai import types


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


def usage_of(response: types.GenerateContentResponse) -> Usage:
    """The tokens one answer was billed for (none when it carries no usage metadata)."""
    meta = response.usage_metadata
    if meta is None:
        return Usage()
    thinking = meta.thoughts_token_count or 0
    return Usage(meta.prompt_token_count or 0, (meta.candidates_token_count or 0) + thinking, thinking,
                 meta.cached_content_token_count or 0)


SERVED_TIER_HEADER = "x-gemini-service-tier"
_TRAFFIC_TIERS = {"ON_DEMAND": "standard", "ON_DEMAND_FLEX": "flex", "ON_DEMAND_PRIORITY": "priority"}


def _tier_name(value: Any) -> str | None:
    """``flex``, ``standard`` or ``priority`` from a header or enum value (``SERVICE_TIER_FLEX``,
    ``ServiceTier.FLEX``, ``Flex``); None for anything else."""
    text = str(getattr(value, "value", value) or "").strip().lower().removeprefix("service_tier_")
    return text if text in ONLINE_TIERS else None


def served_tier(response: Any) -> str | None:
    """The tier that served ``response`` (a google-genai GenerateContentResponse): the
    ``x-gemini-service-tier`` header, else ``usageMetadata.trafficType``; None when it says neither."""
    http = getattr(response, "sdk_http_response", None)
    headers = getattr(http, "headers", None) or {}
    for name, value in headers.items():
        if name.lower() == SERVED_TIER_HEADER:
            tier = _tier_name(value)
            if tier is not None:
                return tier
    traffic = getattr(getattr(response, "usage_metadata", None), "traffic_type", None)
    traffic = str(getattr(traffic, "value", traffic) or "")
    return _TRAFFIC_TIERS.get(traffic)


@dataclass
class TierTally:
    """The answers billed at one tier: how many, their tokens, their estimated cost, and what the
    same tokens would have cost at standard (``unpriced``: answers with no price at this tier)."""

    answers: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    standard_cost_usd: float = 0.0
    unpriced: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"answers": self.answers, **self.usage.as_dict(), "estimated_cost_usd": round(self.cost_usd, 6),
                "standard_cost_usd": round(self.standard_cost_usd, 6), "unpriced": self.unpriced}


@dataclass
class Ledger:
    """The tokens and estimated cost (USD) of one process's answers for ``model`` so far, in all
    and per tier (``by_tier``)."""

    model: str
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    by_tier: dict[str, TierTally] = field(default_factory=dict)

    def add(self, usage: Usage, tier: str = "standard") -> float | None:
        """Count one answer's tokens, billed at ``tier``; returns its estimated cost, or None when no
        price is known for the model at that tier (it then counts as 0)."""
        cost = estimate_cost(self.model, usage.prompt_tokens, usage.output_tokens, usage.cached_tokens, tier)
        standard = cost if tier == "standard" else estimate_cost(
            self.model, usage.prompt_tokens, usage.output_tokens, usage.cached_tokens)
        self.usage = self.usage + usage
        self.cost_usd += cost or 0.0
        tally = self.by_tier.setdefault(tier, TierTally())
        tally.answers += 1
        tally.usage = tally.usage + usage
        tally.cost_usd += cost or 0.0
        tally.standard_cost_usd += standard or 0.0
        tally.unpriced += cost is None
        return cost

    def tiers_dict(self) -> dict[str, dict[str, Any]]:
        """``by_tier`` as JSON-able dicts, keyed by tier."""
        return {tier: tally.as_dict() for tier, tally in sorted(self.by_tier.items())}
