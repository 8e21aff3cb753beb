"""Run dates and the seeds derived from them."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

_RUN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def run_date_of(logical_date: dt.datetime | None, run_after: dt.datetime | None) -> str:
    """The run date (YYYY-MM-DD): the logical date, or ``run_after`` for a manual run without one."""
    when = logical_date or run_after
    if when is None:
        raise ValueError("a DAG run has neither a logical date nor run_after; cannot name its outputs")
    return when.strftime("%Y-%m-%d")


def check_run_date(value: str) -> str:
    if not _RUN_DATE.match(value):
        raise ValueError(f"run date must look like 2026-11-25, got {value!r}")
    dt.date.fromisoformat(value)
    return value


def derive_seed(seed: int, run_date: str, *parts: object) -> int:
    """A 63-bit seed that depends on the base seed, the run date and any extra parts."""
    text = "|".join(str(p) for p in (seed, run_date, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
