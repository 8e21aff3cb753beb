"""Gemini list prices: the one table the teacher's budget and the run manifest use.

One row per model and **tier**: ``standard`` (online, the default), ``flex`` (online,
``service_tier="flex"``: latency of minutes, may be shed), ``batch`` (the Batch API) and
``priority`` (online, ``service_tier="priority"``).

Sources, and how far each row was checked:

- ``standard``: the Gemini Developer API pricing page (https://ai.google.dev/gemini-api/docs/pricing),
  paid tier, prompts up to 200k tokens, as read on :data:`PRICES_AS_OF`.
- ``flex`` and ``batch``: half of standard for the 2.5 models. The pricing, flex-inference and
  optimization pages state a 50% reduction for both (flex: https://ai.google.dev/gemini-api/docs/flex-inference;
  batch: https://ai.google.dev/gemini-api/docs/batch-api), read on :data:`TIER_PRICES_AS_OF`. The
  cached-input rate is halved too, on the same statement; that per-model cell was not read.
  2.0 models have no flex or batch row here (flex lists 2.5 and 3 models only).
- ``priority``: the pages say "75% to 100% more than standard", not a per-model price, so the
  table has **no priority rows**: :func:`estimate_cost` returns None for it (the budget cannot be
  enforced on priority requests, and the client says so).

What the numbers mean for a request (Gemini's ``usageMetadata``):

- ``promptTokenCount`` includes ``cachedContentTokenCount``; cached tokens are billed at the
  cached rate, the rest at the input rate (text, image and video input share one rate);
- thinking tokens (``thoughtsTokenCount``) are billed as output, like ``candidatesTokenCount``.

An estimate, not a bill: the 200k-token long-prompt tier of 2.5 Pro, audio input rates and
cache storage are not modelled. Prices change: re-check the pages and update the rows and their
dates together. Pure Python, safe to import on the Airflow side.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

PRICES_AS_OF = "2025-11"
PRICES_SOURCE = "https://ai.google.dev/gemini-api/docs/pricing (paid tier, standard, prompts <= 200k tokens)"
TIER_PRICES_AS_OF = "2026-12"
TIER_PRICES_SOURCE = ("https://ai.google.dev/gemini-api/docs/flex-inference and /batch-api: flex and batch "
                      "at 50% of standard (2.5 models); priority 75-100% above standard, no per-model price")

Tier = Literal["standard", "flex", "batch", "priority"]
TIERS: tuple[str, ...] = ("standard", "flex", "batch", "priority")
# The tiers an online request may ask for (service_tier); batch is the Batch API, not a tier sent.
ONLINE_TIERS: tuple[str, ...] = ("standard", "flex", "priority")


class Price(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float  # thinking included
    cached_input: float


# Standard (online) prices: the rows publish and the budget have always read.
PRICES: dict[str, Price] = {
    "gemini-2.5-pro": Price(1.25, 10.00, 0.125),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.01),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": Price(0.075, 0.30, 0.075),
}

# (input, output) per million tokens: the shape publish has always read.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {name: (p.input, p.output) for name, p in PRICES.items()}


def _half(price: Price) -> Price:
    return Price(price.input / 2, price.output / 2, price.cached_input / 2)


_DISCOUNTED = [name for name in PRICES if name.startswith("gemini-2.5-")]

# Every tier's rows; a model missing from a tier has no known price there.
PRICE_TABLE: dict[str, dict[str, Price]] = {
    "standard": PRICES,
    "flex": {name: _half(PRICES[name]) for name in _DISCOUNTED},
    "batch": {name: _half(PRICES[name]) for name in _DISCOUNTED},
    "priority": {},  # unknown per model: see the module docstring
}


def _check_tier(tier: str) -> None:
    if tier not in PRICE_TABLE:
        raise ValueError(f"unknown tier {tier!r}: expected one of {', '.join(TIERS)}.")


def price_of(model: str, tier: str = "standard") -> Price | None:
    """The price of ``model`` at ``tier``; versioned names (``gemini-2.5-flash-001``, ``models/...``)
    match their family by the longest known prefix. None for a model (or tier) not in the table."""
    _check_tier(tier)
    rows = PRICE_TABLE[tier]
    name = model.strip().lower().removeprefix("models/")
    matches = [known for known in rows if name == known or name.startswith(known + "-")]
    return rows[max(matches, key=len)] if matches else None


def estimate_cost(model: str, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0,
                  tier: str = "standard") -> float | None:
    """Estimated USD for these tokens at ``tier``, or None when the model has no price there.

    ``prompt_tokens`` includes ``cached_tokens``; ``output_tokens`` includes thinking tokens.
    Raises ValueError for a tier that is not one of :data:`TIERS`.
    """
    price = price_of(model, tier)
    if price is None:
        return None
    cached = min(max(cached_tokens, 0), prompt_tokens)
    usd = ((prompt_tokens - cached) * price.input + cached * price.cached_input + output_tokens * price.output) / 1e6
    return round(usd, 6)
