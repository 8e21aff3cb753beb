"""The night's plan: how many wrong answers the teacher can explain, and what QA may spend.

Rank 0 of the probe computes it once, after reading the parquet footers and before the first
Gemini request, and every rank works from it. Inputs:

- ``rows`` to probe (from the footers) and ``ranks`` (GPUs);
- priors (:class:`Priors`): the target's error rate, the share of factors the verifier accepts,
  the retry overhead, tokens per request kind and the target's images per second per GPU —
  measured by the last completed night of this deployment, else the params' defaults;
- what is left of the Gemini project's requests per day (the project's daily ledger,
  :mod:`vlmprobe.teacher.quota`), ``teacher_rpm``/``teacher_tpm`` over the time the GPU pass is
  allowed to take, and ``max_cost_usd`` at the price table's cost per explained failure.

Each limit caps the number of explained failures (a factor request and its verification),
counting with each the QA request it will lead to (``verified_rate`` of them):

    per explained failure: 2 (1 + retry overhead) probe requests + verified_rate (1 + overhead) QA requests
    daily_quota  = requests left today (less 2 % headroom) / that
    time         = per-minute requests (the tightest of rpm, tpm / tokens per request and the ranks'
                   concurrency / a request's latency, less headroom)
                   x (the probe's teacher window - the latency of the last requests) / probe requests per failure
    budget       = max_cost_usd / (probe + QA cost per explained failure)

``explain_budget`` is the smallest cap (no cap: every wrong answer); ``limited_by`` names it when
it is below the expected wrong answers, else ``none``. The teacher window is the GPU pass's
expected duration times ``probe_wall_factor`` (at least the pass plus ``probe_min_tail_s``): the
explanations run while the target works, so the pod holds its GPUs for little more than the pass.

The plan reserves ``probe_requests`` and ``qa_requests`` of today's quota in the project's ledger
(released when each step ends), so a second run date the same day plans with what is left.

Tiers and modes: each request is priced at its tier (``probe_tier``, ``qa_tier``; flex and batch
at half of standard, :mod:`vlmprobe.teacher.pricing`); the probe's last answers take the tier's
latency (``tail_latency_s``: seconds at standard, minutes at flex), which the time cap leaves for
them. In batch mode QA's requests draw on the Batch API's own quota (enqueued tokens), not on the
day's requests: QA keeps only a tenth of its online share of the day (``BATCH_ONLINE_SHARE``, for
what its jobs hand back to go online), and the sample is capped at what ``batch_enqueued_tokens``
holds (``qa_batch_failures``).
Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vlmprobe.teacher.pricing import estimate_cost

Limit = Literal["daily_quota", "time", "budget", "none"]
LIMITS: tuple[Limit, ...] = ("daily_quota", "time", "budget")
REQUEST_KINDS = ("factor", "verify", "qa")

DAILY_HEADROOM = 0.02  # of the requests left today: a request counted late, a retry more than expected
TAIL_LATENCY_S = 10.0  # the last explanations' answers arrive this long after they are sent, at most
BATCH_ONLINE_SHARE = 0.1  # batch mode: QA requests of the day kept for what the jobs hand back to go online


class Tokens(BaseModel):
    """Tokens of one request of a kind: prompt (text + image) and output (thinking included)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: int = Field(ge=0)
    output: int = Field(ge=0)


class Priors(BaseModel):
    """What the plan assumes about the night, and where each figure came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(gt=0, le=1, description="Wrong answers per row probed.")
    verified_rate: float = Field(ge=0, le=1, description="Verified factors per explained failure.")
    retry_overhead: float = Field(ge=0, le=10, description="Extra requests per request (429s, 5xx, re-asks).")
    images_per_s: float = Field(gt=0, description="Rows the target answers per second per rank.")
    latency_s: float = Field(5.0, gt=0, description="Seconds one teacher answer takes.")
    tokens: dict[str, Tokens] = Field(description="Tokens per request, by kind (factor, verify, qa).")
    source: str = Field(description="'defaults', or 'night RUN_DATE' when measured by an earlier night.")
    strata_wrong: dict[str, float] = Field(default_factory=dict,
                                           description="Share of the wrong answers per stratum, when measured.")


class PlanInputs(BaseModel):
    """Everything the plan depends on (kept in the plan, so a night's plan can be recomputed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(ge=0)
    ranks: int = Field(ge=1)
    gemini_model: str
    requests_left_today: int | None = Field(description="None: no requests-per-day limit.")
    teacher_rpm: int = Field(ge=0, description="0: no limit.")
    teacher_tpm: int = Field(ge=0, description="0: no limit.")
    rate_headroom: float = Field(0.02, ge=0, lt=1)
    max_cost_usd: float = Field(0.0, ge=0, description="0: no cap.")
    probe_wall_factor: float = Field(ge=1)
    probe_min_tail_s: float = Field(ge=0)
    # the teacher's tiers and modes (README "Teacher tiers and modes"): what each request costs and
    # which quota it draws on
    probe_tier: str = Field("standard", description="Tier of the probe's online requests (standard, flex, priority).")
    qa_mode: Literal["online", "batch"] = "online"
    qa_tier: str = Field("standard", description="Tier of QA's online requests.")
    batch_enqueued_tokens: int = Field(0, ge=0, description="The Batch API's enqueued-token quota (0: no limit).")
    tail_latency_s: float = Field(TAIL_LATENCY_S, ge=0, description="How long the probe's last answers take "
                                  "(the tier's latency: seconds at standard, minutes at flex).")
    concurrency: int = Field(0, ge=0, description="Requests in flight per rank at most (0: automatic, no cap).")


class NightPlan(BaseModel):
    """The plan; logged as one block before any GPU work and kept in ``_SUCCESS.json`` and the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: PlanInputs
    priors: Priors
    expected_wrong: int
    target_pass_s: float = Field(description="Expected duration of the GPU pass over every row.")
    teacher_window_s: float = Field(description="How long the probe's teacher may work, from the pass's start.")
    requests_per_explained: float
    qa_requests_per_explained: float
    requests_per_qa_failure: float = Field(1.0, description="QA requests per sampled failure, retries included.")
    cost_per_explained_usd: float | None
    qa_cost_per_explained_usd: float | None
    caps: dict[str, int | None] = Field(description="Explained failures each limit allows (None: no such limit).")
    explain_budget: int | None = Field(description="Explained failures at most; None: every wrong answer.")
    explain_fraction: float = Field(description="Share of the expected wrong answers that will be explained.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Explain fraction per stratum "
                                         "(measured strata); others take explain_fraction.")
    probe_requests: int | None = Field(description="Requests the probe may send (its reservation); None: no cap.")
    qa_requests: int | None = Field(description="Requests reserved for QA; None: no cap.")
    limited_by: Limit
    day: str | None = Field(None, description="The Pacific day whose quota the reservations hold.")
    qa_batch_failures: int | None = Field(None, description="In batch mode: failures one night's QA jobs may "
                                          "hold within the enqueued-token quota (None: online, or no limit).")

    @property
    def qa_cost_reserved_usd(self) -> float:
        """The spend the plan keeps for QA (0 without a budget or a price)."""
        if self.explain_budget is None or self.qa_cost_per_explained_usd is None:
            return 0.0
        return self.explain_budget * self.qa_cost_per_explained_usd

    @property
    def qa_failures(self) -> int | None:
        """Sampled failures QA's reservation pays for (None: no cap): online, its requests of the day;
        in batch mode, the jobs' enqueued tokens (the day's requests are not theirs)."""
        if self.inputs.qa_mode == "batch":
            return self.qa_batch_failures
        if self.qa_requests is None:
            return None
        return math.floor(self.qa_requests / self.requests_per_qa_failure)

    def threshold(self, stratum: str) -> float:
        return self.thresholds.get(stratum, self.explain_fraction)

    def rank_budget(self, rank_rows: int) -> float | None:
        """A rank's share of ``explain_budget``, by its rows; None when there is no cap."""
        if self.explain_budget is None:
            return None
        return self.explain_budget * rank_rows / self.inputs.rows if self.inputs.rows else 0.0

    def summary(self) -> str:
        """The plan as one readable block for the task log."""
        i, p = self.inputs, self.priors
        cap = lambda n: "no limit" if n is None else f"{n:,} explained"  # noqa: E731
        money = lambda x: "n/a" if x is None else f"${x:.5f}"  # noqa: E731
        left = "no limit" if i.requests_left_today is None else f"{i.requests_left_today:,}"
        lines = [
            "night plan (before any Gemini request):",
            f"  rows to probe        {i.rows:,} on {i.ranks} rank(s); expected pass {self.target_pass_s:,.0f} s "
            f"at {p.images_per_s:g} rows/s per rank; teacher window {self.teacher_window_s:,.0f} s",
            f"  expected wrong       {self.expected_wrong:,} (error rate {p.error_rate:.1%}, {p.source})",
            f"  per explained        {self.requests_per_explained:.2f} probe + {self.qa_requests_per_explained:.2f} "
            f"QA requests, {money(self.cost_per_explained_usd)} + {money(self.qa_cost_per_explained_usd)} "
            f"({i.gemini_model})",
            f"  teacher              probe at {i.probe_tier}; QA {'in batch mode' if i.qa_mode == 'batch' else 'at ' + i.qa_tier}"
            f"; an answer takes ~{p.latency_s:g} s at concurrency {i.concurrency or 'auto'}; the last ones get "
            f"{i.tail_latency_s:g} s",
            f"  requests left today  {left} (teacher_rpm {i.teacher_rpm or 'no limit'}, "
            f"teacher_tpm {i.teacher_tpm or 'no limit'}, max_cost_usd {i.max_cost_usd or 'no cap'})",
            f"  caps                 daily_quota {cap(self.caps['daily_quota'])}; time {cap(self.caps['time'])}; "
            f"budget {cap(self.caps['budget'])}",
            f"  explain_budget       {cap(self.explain_budget)} = {self.explain_fraction:.1%} of the expected "
            f"wrong answers; limited by {self.limited_by}",
            f"  reserved             probe {self.probe_requests if self.probe_requests is not None else 'no cap'}"
            f" requests, QA {self.qa_requests if self.qa_requests is not None else 'no cap'} requests",
        ]
        return "\n".join(lines)


def _cost(model: str, tokens: Tokens, requests: float, tier: str = "standard") -> float | None:
    one = estimate_cost(model, tokens.prompt, tokens.output, tier=tier)
    return None if one is None else one * requests


def plan_night(inputs: PlanInputs, priors: Priors) -> NightPlan:
    """The night's plan (see the module docstring). Pure: the same inputs give the same plan."""
    overhead = 1.0 + priors.retry_overhead
    probe_per = 2 * overhead
    qa_per = priors.verified_rate * overhead
    batch = inputs.qa_mode == "batch"
    # batch QA draws on the Batch API's own quota, not the day's requests (README "Teacher tiers and
    # modes"); it keeps a tenth of its share of the day for what its jobs hand back to go online
    qa_daily = BATCH_ONLINE_SHARE * qa_per if batch else qa_per
    expected_wrong = math.ceil(inputs.rows * priors.error_rate)
    target_pass_s = inputs.rows / (inputs.ranks * priors.images_per_s)
    window_s = max(inputs.probe_wall_factor * target_pass_s, target_pass_s + inputs.probe_min_tail_s)

    caps: dict[str, int | None] = {name: None for name in LIMITS}
    if inputs.requests_left_today is not None:
        usable = max(inputs.requests_left_today, 0) * (1 - DAILY_HEADROOM)
        caps["daily_quota"] = math.floor(usable / (probe_per + qa_daily))
    per_minute = _probe_requests_per_minute(inputs, priors)
    if per_minute is not None:
        caps["time"] = math.floor(per_minute / 60 * max(window_s - inputs.tail_latency_s, 0) / probe_per)
    tok = priors.tokens
    factor_cost = _cost(inputs.gemini_model, tok["factor"], overhead, inputs.probe_tier)
    verify_cost = _cost(inputs.gemini_model, tok["verify"], overhead, inputs.probe_tier)
    qa_cost = _cost(inputs.gemini_model, tok["qa"], qa_per, "batch" if batch else inputs.qa_tier)
    probe_cost = None if factor_cost is None or verify_cost is None else factor_cost + verify_cost
    if inputs.max_cost_usd and probe_cost is not None and qa_cost is not None:
        caps["budget"] = math.floor(inputs.max_cost_usd / (probe_cost + qa_cost))

    present = {name: n for name, n in caps.items() if n is not None}
    budget = min(present.values()) if present else None
    limited_by: Limit = "none"
    if budget is not None and budget < expected_wrong:
        limited_by = min(present, key=lambda name: (present[name], LIMITS.index(name)))  # type: ignore[assignment]
    fraction = 1.0 if budget is None or expected_wrong == 0 else min(1.0, budget / expected_wrong)
    planned = expected_wrong if budget is None else min(budget, expected_wrong)
    thresholds = allocate(priors.strata_wrong, expected_wrong, planned) if priors.strata_wrong and fraction < 1 else {}
    # The reservations cover the affordable budget, not only the expected failures: a night
    # wronger than expected may still use what it can pay for; unused requests are released.
    probe_requests = qa_requests = None
    if inputs.requests_left_today is not None and budget is not None:
        qa_requests = math.ceil(budget * qa_daily)
        probe_requests = max(min(math.ceil(budget * probe_per), inputs.requests_left_today - qa_requests), 0)
    qa_batch_failures = None
    if batch and inputs.batch_enqueued_tokens:
        per_failure = tok["qa"].prompt + tok["qa"].output
        qa_batch_failures = math.floor(inputs.batch_enqueued_tokens / max(per_failure, 1))
    return NightPlan(
        inputs=inputs, priors=priors, expected_wrong=expected_wrong, target_pass_s=round(target_pass_s, 3),
        teacher_window_s=round(window_s, 3), requests_per_explained=round(probe_per, 4),
        qa_requests_per_explained=round(qa_per, 4), requests_per_qa_failure=round(overhead, 4),
        cost_per_explained_usd=None if probe_cost is None else round(probe_cost, 8),
        qa_cost_per_explained_usd=None if qa_cost is None else round(qa_cost, 8),
        caps=caps, explain_budget=budget, explain_fraction=round(fraction, 6), thresholds=thresholds,
        probe_requests=probe_requests, qa_requests=qa_requests, limited_by=limited_by,
        qa_batch_failures=qa_batch_failures,
    )


def _probe_requests_per_minute(inputs: PlanInputs, priors: Priors) -> float | None:
    """Requests per minute the probe can send: the tightest of rpm, tpm over tokens per request, and
    the ranks' requests in flight over a request's latency (Little's law: ``concurrency`` per rank
    at the prior's ``latency_s`` each)."""
    rates = []
    if inputs.teacher_rpm:
        rates.append(float(inputs.teacher_rpm))
    if inputs.teacher_tpm:
        per_request = (priors.tokens["factor"].prompt + priors.tokens["verify"].prompt) / 2
        rates.append(inputs.teacher_tpm / max(per_request, 1.0))
    if inputs.concurrency:
        rates.append(inputs.ranks * inputs.concurrency * 60 / priors.latency_s)
    return min(rates) * (1 - inputs.rate_headroom) if rates else None


def allocate(shares: dict[str, float], expected_wrong: int, planned: int) -> dict[str, float]:
    """Explain fraction per stratum so that rare strata are not starved.

    ``shares``: each stratum's share of the wrong answers (an earlier night's). Half the planned
    explanations are spread equally over the strata (each at most its expected wrong answers),
    the rest in proportion to what is still unexplained in each: a stratum of 1 % of the wrong
    answers gets far more than 1 % of a small budget. Returns ``{stratum: fraction}``.
    """
    total = sum(shares.values())
    if not shares or total <= 0 or expected_wrong <= 0:
        return {}
    wrong = {s: expected_wrong * v / total for s, v in shares.items()}
    floor = planned / 2 / len(wrong)
    alloc = {s: min(n, floor) for s, n in wrong.items()}
    left = planned - sum(alloc.values())
    unmet = {s: wrong[s] - alloc[s] for s in wrong}
    for _ in range(len(wrong)):  # water-filling: strata that fill up pass their rest on
        open_ = {s: u for s, u in unmet.items() if u > 1e-9}
        weight = sum(open_.values())
        if left <= 1e-9 or weight <= 0:
            break
        spent = 0.0
        for s, u in open_.items():
            add = min(u, left * u / weight)
            alloc[s] += add
            unmet[s] -= add
            spent += add
        left -= spent
    return {s: round(min(1.0, alloc[s] / wrong[s]), 6) for s in wrong if wrong[s] > 0}
