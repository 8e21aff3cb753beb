"""The project's daily ledger: requests per Pacific day, shared by every run of a deployment.

Gemini counts requests per day per Google Cloud project, not per run: two run dates probed on
the same Pacific day (a backfill, a manual rerun) draw on one quota. So the count lives once per
project and day, under ``{output_uri}/_teacher/projects/{teacher_project}/{day}/``:

- ``{run_date}.{process}.json`` — one process's requests that day (``requests``) and what it
  reserved before sending (``reserved``: the count it may reach before its next heartbeat);
- ``{run_date}.hold.json`` — a run's reservations that day, written by the probe's plan:
  ``{"probe": P, "qa": Q}`` requests, and which of them are ``released`` (a finished step gives
  back what it did not use).

A *pool* is one step of one run (``2026-11-25/probe``). What a process may still send today:

    rpd - requests counted today (every run)
        - for every other pool: the larger of its hold's unused part and its live processes'
          unused reservations
        - the unused reservations of the other live processes of its own pool

split evenly among its pool's live processes (:func:`pool_allowance`). A pool's hold is thus
kept from every other run, and its own processes draw on it; a run without a hold draws on
what no hold claims. Pure functions here; :mod:`vlmprobe.teacher.quota` does the heartbeats.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

HOLD_SUFFIX = ".hold.json"
STEPS = ("probe", "qa")


def project_folder(output_uri: str, project: str) -> str:
    """``{output_uri}/_teacher/projects/{project}``: the project's ledger, shared by every run date."""
    from vlmprobe.io import join

    return join(output_uri, "_teacher", "projects", project)


def step_of(process: str) -> str:
    """The step a process name belongs to (``probe-rank-00001`` -> ``probe``, ``qa-shard-00003`` -> ``qa``)."""
    return process.split("-", 1)[0]


@dataclass
class DayLedger:
    """What one Pacific day's folder says: counts per process, reservations, holds."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (run_date, process) -> requests
    reserved: dict[tuple[str, str], int] = field(default_factory=dict)  # (run_date, process) -> may reach
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_date -> {"probe", "qa", "released"}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def used(self, run_date: str, step: str) -> int:
        return sum(n for (r, p), n in self.counts.items() if r == run_date and step_of(p) == step)

    def hold_left(self, run_date: str, step: str) -> int:
        hold = self.holds.get(run_date) or {}
        if step in (hold.get("released") or ()) or not hold.get(step):
            return 0
        return max(int(hold[step]) - self.used(run_date, step), 0)

    def left(self, rpd: int, *, run_date: str | None = None) -> int:
        """Requests still free today for a new plan of ``run_date`` (its own earlier holds not counted)."""
        claimed = sum(self.hold_left(r, s) for r in self.holds if r != run_date for s in STEPS)
        return max(rpd - self.total - claimed, 0)


def read_day(entries: Iterable[tuple[str, Mapping[str, Any]]]) -> DayLedger:
    """A :class:`DayLedger` from ``(file name, content)`` pairs of one day's folder."""
    day = DayLedger()
    for name, data in entries:
        if name.endswith(HOLD_SUFFIX):
            day.holds[name[: -len(HOLD_SUFFIX)]] = dict(data)
            continue
        run_date, _, process = name.removesuffix(".json").partition(".")
        if not process:
            continue
        day.counts[(run_date, process)] = int(data.get("requests") or 0)
        day.reserved[(run_date, process)] = int(data.get("reserved") or 0)
    return day


def pool_allowance(day: DayLedger, rpd: int, run_date: str, process: str, live: Iterable[tuple[str, str]],
                   *, step_cap_left: int | None = None, burst: int | None = None) -> int:
    """The count ``process`` of ``run_date`` may reach today before its next heartbeat.

    ``live``: the (run_date, process) pairs with a live lease (this one included). A dead
    process's unused reservation no longer counts. ``step_cap_left``: what the run's plan still
    allows its step (over all days), shared like the day's rest; ``burst``: at most this many
    requests above the current count (what the process can send in two heartbeats).
    """
    me = (run_date, process)
    live = set(live) | {me}
    pool = (run_date, step_of(process))
    members = sorted(p for p in live if (p[0], step_of(p[1])) == pool)

    def unspent(p: tuple[str, str]) -> int:
        return max(day.reserved.get(p, 0) - day.counts.get(p, 0), 0)

    pending: dict[tuple[str, str], int] = defaultdict(int)
    for p in live:
        if p != me:
            pending[(p[0], step_of(p[1]))] += unspent(p)
    others = 0
    for r, hold in day.holds.items():
        for s in STEPS:
            g = (r, s)
            if g != pool:
                others += max(day.hold_left(r, s), pending.pop(g, 0))
    others += sum(n for g, n in pending.items() if g != pool)
    own_pending = pending.get(pool, 0)
    mine = day.counts.get(me, 0)
    remaining = max(rpd - day.total - others - own_pending, 0)
    if step_cap_left is not None:
        remaining = min(remaining, max(step_cap_left - own_pending, 0))
    share, extra = divmod(remaining, len(members))
    share += 1 if members.index(me) < extra else 0
    if burst is not None:
        share = min(share, burst)
    return mine + share


def requests_left(day: DayLedger, rpd: int, run_date: str) -> int:
    """What a new plan of ``run_date`` may count on today (see :meth:`DayLedger.left`)."""
    return day.left(rpd, run_date=run_date) if rpd else math.inf  # type: ignore[return-value]


# -- files (rank 0 of the probe at plan time, publish at the end) ------------------------------

def day_folder(folder: str, day: str) -> str:
    return f"{folder.rstrip('/')}/{day}"


def load_day(folder: str, day: str) -> DayLedger:
    """The project's ledger for Pacific ``day`` as the store has it now."""
    from vlmprobe.io import read_json
    from vlmprobe.io.fs import basename, list_dir

    try:
        names = list_dir(day_folder(folder, day))
    except FileNotFoundError:
        return DayLedger()
    entries = []
    for uri in names:
        name = basename(uri)
        if not name.endswith(".json") or name.startswith((".", "_")):
            continue
        try:
            entries.append((name, read_json(uri)))
        except (FileNotFoundError, ValueError):  # being replaced: the next reader sees it
            continue
    return read_day(entries)


def write_hold(folder: str, day: str, run_date: str, probe: int | None, qa: int | None) -> None:
    """Reserve the night's requests for ``run_date`` on ``day`` (a rerun replaces its own hold)."""
    from vlmprobe.io import write_json

    write_json(f"{day_folder(folder, day)}/{run_date}{HOLD_SUFFIX}",
               {"run_date": run_date, "probe": probe, "qa": qa, "released": []})


def release_hold(folder: str, day: str, run_date: str, step: str) -> None:
    """A step of ``run_date`` has ended: its unused reservation of ``day`` goes back to the project."""
    from vlmprobe.io import exists, read_json, write_json

    uri = f"{day_folder(folder, day)}/{run_date}{HOLD_SUFFIX}"
    if not exists(uri):
        return
    hold = read_json(uri)
    released = sorted({*hold.get("released", []), step})
    if released != hold.get("released"):
        write_json(uri, {**hold, "released": released})
