"""Gemini list prices: the one table the teacher's budget and the run manifest use.

Source: the Gemini Developer API pricing page (https://ai.google.dev/gemini-api/docs/pricing),
paid tier, standard (online, non-batch) prices for prompts up to 200k tokens, as read on
:data:`PRICES_AS_OF`. Prices change: re-check the page and update the table and its date together.

What the numbers mean for a request (Gemini's ``usageMetadata``):

- ``promptTokenCount`` includes ``cachedContentTokenCount``; cached tokens are billed at the
  cached rate, the rest at the input rate (text, image and video input share one rate);
- thinking tokens (``thoughtsTokenCount``) are billed as output, like ``candidatesTokenCount``.

An estimate, not a bill: the 200k-token long-prompt tier of 2.5 Pro, audio input rates, cache
storage and the batch discount are not modelled. Pure Python, safe to import on the Airflow side.
"""

from __future__ import annotations

from typing import NamedTuple

PRICES_AS_OF = "2025-11"
PRICES_SOURCE = "https://ai.google.dev/gemini-api/docs/pricing (paid tier, standard, prompts <= 200k tokens)"


class Price(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float  # thinking included
    cached_input: float


PRICES: dict[str, Price] = {
    "gemini-2.5-pro": Price(1.25, 10.00, 0.125),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.01),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": Price(0.075, 0.30, 0.075),
}

# (input, output) per million tokens: the shape publish has always read.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {name: (p.input, p.output) for name, p in PRICES.items()}


def price_of(model: str) -> Price | None:
    """The price of ``model``; versioned names (``gemini-2.5-flash-001``, ``models/...``) match
    their family by the longest known prefix. None for a model not in the table."""
    name = model.strip().lower().removeprefix("models/")
    matches = [known for known in PRICES if name == known or name.startswith(known + "-")]
    return PRICES[max(matches, key=len)] if matches else None


def estimate_cost(model: str, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float | None:
    """Estimated USD for these tokens, or None when the model has no price here.

    ``prompt_tokens`` includes ``cached_tokens``; ``output_tokens`` includes thinking tokens.
    """
    price = price_of(model)
    if price is None:
        return None
    cached = min(max(cached_tokens, 0), prompt_tokens)
    usd = ((prompt_tokens - cached) * price.input + cached * price.cached_input + output_tokens * price.output) / 1e6
    return round(usd, 6)
