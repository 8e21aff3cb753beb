"""Which wrong answers the teacher explains: a seeded hash within strata, thresholds only going down.

Every wrong answer has a *stratum*, its question type (``yes_no``, ``multiple_choice``, ``open``)
and its input ``source`` (the column, ``-`` without one), and a hash in [0, 1) of its identity
(the row's id, else its file and row) keyed by the seed. It is explained when its hash is below
its stratum's threshold: the plan's fraction (per stratum when an earlier night measured the
strata, :func:`vlmprobe.budget.plan.allocate`) times the rank's ``scale``. So the same input and
seed explain the same rows whatever the rank count, and a smaller budget explains a subset of
what a larger one would.

The plan assumes an error rate; the night shows the real one. After each batch a rank projects
its explained failures from what it has seen so far (per stratum: wrong answers per row so far
times the rows still to come, times the threshold). When that exceeds its share of
``explain_budget`` by more than ``tolerance``, it lowers ``scale`` so the projection meets the
share; ``scale`` never goes up. Lowering is the only way the ranks' choices can differ from
one rank count to another.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from vlmprobe.budget.plan import NightPlan

QUESTION_TYPES = ("yes_no", "multiple_choice", "open")
_YES_NO = frozenset({"yes", "no"})


def question_type(choices: Sequence[str] | None) -> str:
    """``yes_no`` for the choices yes/no (any case), ``multiple_choice`` for other choices, else ``open``."""
    if not choices:
        return "open"
    if len(choices) == 2 and {str(c).strip().lower() for c in choices} == _YES_NO:
        return "yes_no"
    return "multiple_choice"


def stratum_of(choices: Sequence[str] | None, source: object) -> str:
    """``question_type|source``; ``-`` for a row without a source."""
    text = str(source).strip() if source not in (None, "") else "-"
    return f"{question_type(choices)}|{text}"


def selection_key(seed: int) -> bytes:
    """The hash key of a night's selection: the seed alone, so reruns and rank counts agree."""
    return hashlib.sha256(f"vlmprobe-explain|{seed}".encode()).digest()[:16]


def explain_hash(key: bytes, identity: str) -> float:
    """A uniform number in [0, 1) for ``identity`` under ``key``."""
    digest = hashlib.blake2b(identity.encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class ExplainSelector:
    """One rank's choices: which wrong answers get a factor and a verification.

    ``rank_rows``: the rows this rank probes (its share of the plan's budget is in proportion).
    Call :meth:`choose` for each wrong answer and :meth:`after_batch` after each batch.
    """

    def __init__(self, plan: NightPlan, rank_rows: int, seed: int, *, tolerance: float = 0.1) -> None:
        self.plan = plan
        self.rank_rows = rank_rows
        self.key = selection_key(seed)
        self.tolerance = tolerance
        self.budget = plan.rank_budget(rank_rows)  # None: every wrong answer
        self.scale = 1.0
        self.lowered = 0  # times the scale went down
        self.rows_seen = 0
        self.wrong: Counter[str] = Counter()  # by stratum
        self.chosen = 0

    def threshold(self, stratum: str) -> float:
        return self.plan.threshold(stratum) * self.scale

    def choose(self, stratum: str, identity: str) -> bool:
        """Count one wrong answer; True when it is to be explained."""
        self.wrong[stratum] += 1
        if self.budget is None:
            self.chosen += 1
            return True
        chosen = explain_hash(self.key, identity) < self.threshold(stratum)
        self.chosen += chosen
        return chosen

    def after_batch(self, rows: int) -> None:
        """``rows`` more rows answered (right or wrong): lower ``scale`` if the budget is at risk."""
        self.rows_seen += rows
        if self.budget is None or self.rows_seen <= 0 or self.scale <= 0:
            return
        left_rows = max(self.rank_rows - self.rows_seen, 0)
        projected = sum(n / self.rows_seen * left_rows * self.threshold(s) for s, n in self.wrong.items())
        if self.chosen + projected <= self.budget * (1 + self.tolerance) or projected <= 0:
            return
        room = max(self.budget - self.chosen, 0.0)
        self.scale *= room / projected
        self.lowered += 1

    def stats(self) -> dict[str, object]:
        return {"scale": round(self.scale, 6), "lowered": self.lowered, "chosen": self.chosen,
                "wrong": sum(self.wrong.values()), "budget": None if self.budget is None else round(self.budget, 3),
                "wrong_by_stratum": dict(self.wrong)}
