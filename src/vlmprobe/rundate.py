"""Run dates, dated input URIs and the seeds derived from them.

The DAG's timetable is a data interval at 02:00 UTC (:data:`NIGHTLY_CRON`): the run that starts
at 02:00 on day D covers [D−1 02:00, D 02:00) and its run date is D−1, the start of its data
interval. One rule names every run's outputs, here and in the DAG's templates:

- a run with a data interval (scheduled, backfilled, or manual with a logical date — Airflow gives
  a manual run at time T the last complete interval before T): the interval's start date;
- a manual run without a logical date: the interval Airflow would give it at ``run_after``, i.e.
  the last complete one — triggered 2026-11-26 09:30 UTC → run date 2026-11-25, but triggered
  2026-11-26 01:00 UTC → 2026-11-24, because day 2026-11-25 is only complete at 02:00 on the 26th.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

from vlmprobe.errors import UsageError

NIGHTLY_HOUR_UTC = 2
NIGHTLY_CRON = f"0 {NIGHTLY_HOUR_UTC} * * *"
RUN_DATE_PLACEHOLDER = "{run_date}"

_RUN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _utc(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def interval_start_for(when: dt.datetime) -> dt.datetime:
    """Start of the last complete nightly interval at ``when`` (Airflow's manual-run inference)."""
    w = _utc(when)
    end = w.replace(hour=NIGHTLY_HOUR_UTC, minute=0, second=0, microsecond=0)
    if end > w:
        end -= dt.timedelta(days=1)
    return end - dt.timedelta(days=1)


def run_date_of(
    data_interval_start: dt.datetime | None = None,
    logical_date: dt.datetime | None = None,
    run_after: dt.datetime | None = None,
) -> str:
    """The run date (YYYY-MM-DD) of a DAG run: see the module docstring for the rule.

    Airflow sets a data interval whenever it sets a logical date; ``logical_date`` alone (no
    interval, as in hand-made contexts) counts as a scheduled run's, whose logical date *is* its
    interval start.
    """
    if data_interval_start is not None:
        return _utc(data_interval_start).strftime("%Y-%m-%d")
    if logical_date is not None:
        return _utc(logical_date).strftime("%Y-%m-%d")
    if run_after is None:
        raise ValueError("a DAG run has neither a data interval, a logical date nor run_after; cannot name its outputs")
    return interval_start_for(run_after).strftime("%Y-%m-%d")


def run_date_of_dag_run(dag_run: Any) -> str:
    """:func:`run_date_of` for an Airflow DAG run (or anything with the same attributes).

    The DAG passes this to Jinja as the ``vlmprobe_run_date`` macro, so pod arguments and the
    light tasks name a run alike.
    """
    return run_date_of(getattr(dag_run, "data_interval_start", None), getattr(dag_run, "logical_date", None),
                       getattr(dag_run, "run_after", None))


def check_run_date(value: str) -> str:
    if not _RUN_DATE.match(value):
        raise ValueError(f"run date must look like 2026-11-25, got {value!r}")
    try:
        dt.date.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"run date {value!r} is not a calendar date ({e})") from None
    return value


def expand_uri(uri: str, run_date: str) -> str:
    """``uri`` with every ``{run_date}`` replaced by the run date: ``gs://b/vqa/{run_date}`` → ``gs://b/vqa/2026-11-25``.

    Any other ``{...}`` is a mistake (``{date}``, ``{ds}``) and raises :class:`UsageError`. The
    probe step and the Airflow-side preflight both call this, so they read the same folder.
    """
    check_run_date(run_date)
    rest = uri.replace(RUN_DATE_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        found = _PLACEHOLDER.search(rest)
        what = f"contains {found.group(0)}" if found else "has an unmatched brace"
        raise UsageError(f"{uri!r} {what}; the only placeholder an input URI may hold is {RUN_DATE_PLACEHOLDER}")
    return uri.replace(RUN_DATE_PLACEHOLDER, run_date)


def derive_seed(seed: int, run_date: str, *parts: object) -> int:
    """A 63-bit seed that depends on the base seed, the run date and any extra parts."""
    text = "|".join(str(p) for p in (seed, run_date, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
