"""Tokens and estimated cost of the teacher's answers.

Every answer is billed, used or not: its tokens (Gemini's ``usageMetadata``) go into
:class:`Usage`, and the process's :class:`Ledger` sums them with their estimated cost from the
price table (:mod:`vlmprobe.teacher.pricing`). The run-wide sum of those costs is what
``QuotaLimits.max_cost_usd`` is checked against (:mod:`vlmprobe.teacher.quota`).

No google-genai import at module level: the steps read :class:`Usage` without loading the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlmprobe.teacher.pricing import estimate_cost

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


@dataclass
class Ledger:
    """The tokens and estimated cost (USD) of one process's answers for ``model`` so far."""

    model: str
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    def add(self, usage: Usage) -> float | None:
        """Count one answer's tokens; returns its estimated cost, or None when no price is known
        for the model (it then counts as 0)."""
        cost = estimate_cost(self.model, usage.prompt_tokens, usage.output_tokens, usage.cached_tokens)
        self.usage = self.usage + usage
        self.cost_usd += cost or 0.0
        return cost
