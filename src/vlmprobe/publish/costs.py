"""The teacher's cost as the steps recorded it: per tier or mode, priced at what served each answer.

Each process's teacher stats carry ``by_tier`` (:meth:`vlmprobe.teacher.usage.Ledger.tiers_dict`):
per tier (standard, flex, priority online; batch for QA's Batch API jobs) the answers billed, their
tokens, their cost at that tier and the same tokens at standard. A step's cost is the sum of those
recorded costs, not its tokens priced again at standard; stats written before tiers existed (no
``by_tier``) count as standard online, priced from their tokens (their requests standing for
answers). A tier with answers and no price (priority) makes the step's cost unknown (None).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from vlmprobe.contracts import ModeFigures, StepModes, TeacherModes
from vlmprobe.teacher.pricing import estimate_cost

TOKENS = ("prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens")


def step_modes(stats: Iterable[Mapping[str, Any] | None], model: str) -> StepModes:
    """A step's figures per tier or mode, summed over its processes' teacher stats."""
    sums: dict[str, Counter[str]] = {}
    costs: Counter[str] = Counter()
    standard: Counter[str] = Counter()
    unpriced: Counter[str] = Counter()
    legacy: Counter[str] = Counter()  # stats without by_tier: standard online, priced once from their tokens
    for s in stats:
        s = s or {}
        by_tier = s.get("by_tier")
        if not isinstance(by_tier, Mapping):
            legacy["requests"] += int(s.get("requests") or 0)
            legacy.update({k: int(s.get(k) or 0) for k in TOKENS})
            continue
        for tier, f in by_tier.items():
            c = sums.setdefault(str(tier), Counter())
            c["requests"] += int(f.get("answers") or 0)
            c.update({k: int(f.get(k) or 0) for k in TOKENS})
            costs[tier] += float(f.get("estimated_cost_usd") or 0.0)
            standard[tier] += float(f.get("standard_cost_usd") or 0.0)
            unpriced[tier] += int(f.get("unpriced") or 0)
    if any(legacy[k] for k in TOKENS):
        cost = estimate_cost(model, legacy["prompt_tokens"], legacy["output_tokens"], legacy["cached_tokens"])
        sums.setdefault("standard", Counter()).update(legacy)
        costs["standard"] += cost or 0.0
        standard["standard"] += cost or 0.0
        unpriced["standard"] += cost is None
    by_mode = {tier: ModeFigures(requests=c["requests"], **{k: c[k] for k in TOKENS},
                                 estimated_cost_usd=None if unpriced[tier] else round(costs[tier], 6),
                                 standard_cost_usd=round(standard[tier], 6))
               for tier, c in sorted(sums.items())}
    return _step(by_mode)


def _step(by_mode: dict[str, ModeFigures]) -> StepModes:
    known = all(m.estimated_cost_usd is not None for m in by_mode.values())
    cost = round(sum(m.estimated_cost_usd or 0.0 for m in by_mode.values()), 6) if known else None
    standard = round(sum(m.standard_cost_usd for m in by_mode.values()), 6)
    return StepModes(by_mode=by_mode, estimated_cost_usd=cost, standard_cost_usd=standard,
                     saving_usd=None if cost is None else round(standard - cost, 6))


def teacher_modes(probe: Iterable[Mapping[str, Any] | None], qa: Iterable[Mapping[str, Any] | None],
                  model: str) -> TeacherModes:
    """The manifest's ``teacher_modes``: the probe's and QA's figures per tier or mode, and the run's."""
    p, q = step_modes(probe, model), step_modes(qa, model)
    run: dict[str, ModeFigures] = {}
    for tier in sorted(set(p.by_mode) | set(q.by_mode)):
        parts = [m for m in (p.by_mode.get(tier), q.by_mode.get(tier)) if m is not None]
        known = all(m.estimated_cost_usd is not None for m in parts)
        run[tier] = ModeFigures(
            requests=sum(m.requests for m in parts), **{k: sum(getattr(m, k) for m in parts) for k in TOKENS},
            estimated_cost_usd=round(sum(m.estimated_cost_usd or 0.0 for m in parts), 6) if known else None,
            standard_cost_usd=round(sum(m.standard_cost_usd for m in parts), 6))
    return TeacherModes(probe=p, qa=q, run=_step(run))


def recorded_cost_usd(stats: Iterable[Mapping[str, Any] | None], model: str) -> float | None:
    """A step's estimated cost from what its processes recorded per tier (None: a tier had no price)."""
    return step_modes(stats, model).estimated_cost_usd


def saving_line(label: str, step: StepModes) -> str:
    """One line: a step's (or the run's) teacher cost per tier or mode and what it saved against standard online."""
    parts = ", ".join(f"{tier} {m.requests} answers ${m.estimated_cost_usd:.4f}" if m.estimated_cost_usd is not None
                      else f"{tier} {m.requests} answers (no price)" for tier, m in step.by_mode.items())
    if step.estimated_cost_usd is None:
        return f"{label} by mode: {parts}; the same work at standard online ${step.standard_cost_usd:.4f}"
    share = step.estimated_cost_usd / step.standard_cost_usd if step.standard_cost_usd else 1.0
    return (f"{label} by mode: {parts}; ${step.estimated_cost_usd:.4f} vs ${step.standard_cost_usd:.4f} at "
            f"standard online: saved ${step.saving_usd:.4f} ({1 - share:.0%})")
