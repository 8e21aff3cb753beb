"""One teacher quota shared by every process that calls Gemini: the run's, and the project's.

Gemini's limits belong to the Google Cloud project: requests per minute (RPM), input tokens per
minute (TPM) and requests per day (RPD, reset at midnight Pacific time). Every probe rank and
every QA shard pod calls Gemini, on whatever machines they run, and all they share is the
output folder. So each process announces itself there and takes an equal share. Below, the
folder is the run's ``_teacher`` (a bare RunQuota); the steps run with the project's scope (the
end of this docstring), where the same files live once per Gemini project.

**Leases.** Each process writes ``{output_uri}/{run_date}/_teacher/leases/{process}.json`` when it
opens its teacher and rewrites it every ``heartbeat_s`` (5 s; every 0.5 s during its first 5 s,
so that processes starting together see each other before they have sent much; every 1 s then on
gs:// and s3://, see "Object stores" below). A lease last
written more than ``ttl_s`` (30 s) before the newest lease is dead: a killed process stops
counting after at most that. Ages are measured between the files' modification times, which the
storage sets (the object store's clock for gs:// and s3://), so the machines' clocks need not
agree. A process that finishes removes its lease, and the others' shares grow at their next
heartbeat.

**Shares.** With ``n`` live leases (this process included) each process may send
``teacher_rpm / n`` requests and ``teacher_tpm / n`` estimated input tokens per minute, less
2 % headroom (network jitter can bunch requests at the server), spaced evenly by
:class:`~vlmprobe.teacher.flow.RateLimiter`. Input tokens are estimated before sending: text at
four characters a token, images at 258 tokens per 384 px tile after downscaling.

Example, tier 1 for gemini-2.5-flash (1,000 RPM, 1,000,000 TPM, 10,000 RPD): the probe pod runs 8
ranks, so each rank may send 1000/8 x 0.98 = 122.5 requests/min (one every 0.49 s) and 122,500
input tokens/min; with a 768 x 576 image (4 tiles, 1,032 tokens) and ~300 text tokens a request
is ~1,330 tokens, so the token share binds first at ~92 requests/min. The QA step runs after the
probe; with 8 shard pods each one again gets an eighth; if the GPU pool runs only 5 of them at
once, each of the 5 gets a fifth. When 3 of 8 running shards finish, the other 5 reach a fifth
within one heartbeat.

**Ledgers.** Each process also keeps ``_teacher/ledgers/{process}.json``: the requests it sent per
Pacific day and its estimated spend, kept across attempts of the same process (a retried pod
continues its counts). The run's requests today are the sum over ledgers. At each heartbeat a
process reserves, in its ledger and before using it, its ``1/n`` of what remains of
``teacher_rpd`` after the others' counts and live reservations (at most what it can send in two
heartbeats, so an idle process holds little back); it sends no more than that until its next
heartbeat, so the run stops at ``teacher_rpd`` instead of crossing it. Once the counted requests
reach it, every process raises :class:`~vlmprobe.errors.QuotaExhausted` with the next Pacific
midnight. A finished process gives its unused reservation back; a dead one's stops counting. The
run's spend is the sum of the ledgers' ``cost_usd``; :meth:`RunQuota.spent_usd` feeds the
``max_cost_usd`` budget. Counts of the last few seconds of a killed process are lost (at most
one heartbeat).

**Object stores.** GCS accepts about one write per second to one object name (more is answered
429). On gs:// and s3:// the quick heartbeat is therefore 1 s, not 0.5 s, and every write of a
lease or ledger (the final ledger and the lease's removal at :meth:`RunQuota.stop` included) starts
at least :data:`OBJECT_WRITE_INTERVAL_S` after the previous write of that object by this process
ended, waiting in the worker thread if needed (never on the event loop). Each object is written
by its own process only, so the store sees at most one write per second per object. (Every
write goes to a new temporary object first, moved into place: see :mod:`vlmprobe.io.fs`.)

**The project's scope** (:class:`ProjectScope`, what the steps use: :func:`vlmprobe.teacher.factory.make_teacher`).
Gemini counts per Google Cloud project, not per run, so with a scope the leases live in the
project's folder, ``{output_uri}/_teacher/projects/{teacher_project}/leases/{run_date}.{process}.json``
(every run's processes share the per-minute quota: overlapping backfills included), and the day's
requests are counted in the project's day folder (:mod:`vlmprobe.teacher.daily`), where the
night's plan holds each step's reservation: a process draws first on its step's, and never sends
more than the step's cap (``step_cap``: ``QuotaExhausted`` once the step has used it). The run's
own ledgers (``{output_uri}/{run_date}/_teacher/ledgers/``) keep its spend and usage.

Without a scope (a bare RunQuota, the tests of this module) shares and the day's count are per
run folder, as described above. Other users of the same Google Cloud project do not see these
files: lower the limits by what they use; the 429 handling absorbs the rest. With no folder (a
bare Teacher in a test or a notebook) the process is alone with the whole quota.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from vlmprobe.errors import QuotaExhausted
from vlmprobe.teacher.flow import RateLimiter

log = logging.getLogger(__name__)

PACIFIC = ZoneInfo("America/Los_Angeles")
QUICK_HEARTBEAT_S = 0.5
QUICK_PERIOD_S = 5.0
# Object stores: at least this long between two writes of one lease or ledger object (GCS allows
# about one write per second to an object name).
OBJECT_WRITE_INTERVAL_S = 1.0
_DAYS_KEPT = 3


def pacific_day(now: dt.datetime | None = None) -> str:
    """Today in Pacific time (Gemini's daily quotas reset at its midnight), as YYYY-MM-DD."""
    return (now or dt.datetime.now(dt.timezone.utc)).astimezone(PACIFIC).date().isoformat()


def next_pacific_midnight(now: dt.datetime | None = None) -> dt.datetime:
    """When the daily quota resets next: the coming midnight in America/Los_Angeles (aware)."""
    local = (now or dt.datetime.now(dt.timezone.utc)).astimezone(PACIFIC)
    tomorrow = local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(0, 0), tzinfo=PACIFIC)


@dataclass(frozen=True)
class QuotaLimits:
    """Run-wide teacher limits; 0 means no limit. ``period_s`` is the per-minute window's length
    (Gemini's is 60 s; tests shorten it), ``headroom`` the fraction of each share kept unused."""

    rpm: int = 0
    tpm: int = 0
    rpd: int = 0
    max_cost_usd: float = 0.0
    period_s: float = 60.0
    headroom: float = 0.02

    def __post_init__(self) -> None:
        if min(self.rpm, self.tpm, self.rpd) < 0 or self.max_cost_usd < 0:
            raise ValueError("teacher quota limits must be >= 0 (0 = no limit).")
        if self.period_s <= 0 or not 0 <= self.headroom < 1:
            raise ValueError("period_s must be > 0 and headroom within [0, 1).")


@dataclass(frozen=True)
class ProjectScope:
    """Where the project's shared files live (:mod:`vlmprobe.teacher.daily`) and this run's place there.

    ``folder``: ``{output_uri}/_teacher/projects/{teacher_project}``; ``run_date``: this run's;
    ``step_cap``: requests this process's step of the run may send in all (its reservation in the
    night's plan), None for no cap.
    """

    folder: str
    run_date: str
    step_cap: int | None = None


def _safe_name(process: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", process).strip("-.")
    if not name:
        raise ValueError(f"process name {process!r} has no usable characters")
    return name


class RunQuota:
    """This process's share of the run-wide quota, kept in step with the others through files.

    ``folder`` is the run's ``_teacher`` folder (any vlmprobe.io URI) or None to be alone.
    ``process`` names this process stably across attempts (``qa-shard-00003``,
    ``probe-rank-00001``). Use :meth:`start` and :meth:`stop` around its use (the Teacher does).
    """

    def __init__(self, limits: QuotaLimits, folder: str | None, process: str, *,
                 project: ProjectScope | None = None, heartbeat_s: float = 5.0, ttl_s: float = 30.0) -> None:
        if heartbeat_s <= 0 or ttl_s <= heartbeat_s:
            raise ValueError("heartbeat_s must be > 0 and ttl_s > heartbeat_s.")
        self.limits = limits
        self.folder = folder.rstrip("/") if folder else None
        self.process = _safe_name(process)
        self.project = project if self.folder is not None else None
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.requests = RateLimiter()  # requests per second of this process
        self.tokens = RateLimiter()  # estimated input tokens per second of this process
        self.live = 1
        self._rank = 0  # our place among the live processes by name: who gets a remainder
        self.refreshes = 0
        self._ledger: dict[str, Any] = {"process": self.process, "requests_by_day": {}, "cost_usd": 0.0, "usage": {}}
        self._dirty = False
        self._others_by_day: dict[str, int] = {}  # requests the other ledgers counted, by day
        self._others_reserved = 0  # today's requests live others may still send (reserved, not yet counted)
        self._others_cost = 0.0
        self._others_cache: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._day_allowance = math.inf
        self._day_total = 0  # project mode: the day's requests counted by every run at the last heartbeat
        self._others_step = 0  # project mode: this run's step's requests by the other processes, all days
        self._started_at = 0.0
        self._task: asyncio.Task | None = None
        self._closing: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self.on_object_store = self.folder is not None and "://" in self.folder and not self.folder.startswith("file://")
        self._written_at: dict[str, float] = {}  # object stores: when our last write of each file ended
        self._apply()

    # -- paths --------------------------------------------------------------------------------
    def _lease_uri(self, process: str | None = None) -> str:
        if self.project is not None:  # project-wide: every run's processes share the per-minute quota
            return f"{self.project.folder}/leases/{self.project.run_date}.{process or self.process}.json"
        return f"{self.folder}/leases/{process or self.process}.json"

    def _day_uri(self, day: str) -> str:
        assert self.project is not None
        return f"{self.project.folder}/{day}/{self.project.run_date}.{self.process}.json"

    def _ledger_uri(self, process: str | None = None) -> str:
        return f"{self.folder}/ledgers/{process or self.process}.json"

    # -- shares -------------------------------------------------------------------------------
    @property
    def rpm_share(self) -> float:
        """Requests per minute this process may send now (0 = no limit)."""
        return self.limits.rpm / self.live if self.limits.rpm else 0.0

    @property
    def tpm_share(self) -> float:
        return self.limits.tpm / self.live if self.limits.tpm else 0.0

    def _apply(self) -> None:
        keep = 1.0 - self.limits.headroom
        self.requests.rate = self.rpm_share * keep / self.limits.period_s if self.limits.rpm else None
        self.tokens.rate = self.tpm_share * keep / self.limits.period_s if self.limits.tpm else None
        if self.folder is None:  # alone: the whole daily quota is ours
            self._day_allowance = self.limits.rpd if self.limits.rpd else math.inf

    def _allowance(self, mine: int, others: int, live: int, rank: int) -> int:
        """Requests today this process may reach before its next heartbeat, given what the other
        live processes counted or reserved (``others``): its part of what remains, whole requests,
        the first ``remaining mod n`` processes by name taking one more, and no more than it can
        send in two heartbeats at its per-minute share (so an idle process holds little back)."""
        remaining = max(self.limits.rpd - mine - others, 0)
        share, extra = divmod(remaining, live)
        share += 1 if rank < extra else 0
        burst = self._burst(live)
        return mine + (share if burst is None else min(share, burst))

    # -- accounting ---------------------------------------------------------------------------
    def requests_today(self, day: str | None = None) -> int:
        """Requests this process sent on Pacific ``day`` (today by default), earlier attempts included."""
        return int(self._ledger["requests_by_day"].get(day or pacific_day(), 0))

    def run_requests_today(self) -> int:
        """The run's requests today as last seen: the other ledgers at the last heartbeat plus ours now
        (with a project scope: every run's requests today, the project's count)."""
        day = pacific_day()
        return self._others_by_day.get(day, 0) + self.requests_today(day)

    def step_requests(self) -> int:
        """Project mode: this run's step's requests in all, ours now plus the others' at the last heartbeat."""
        return self._others_step + sum(int(n) for n in self._ledger["requests_by_day"].values())

    def count_request(self) -> None:
        """One request sent (it counts toward the daily quota whatever its answer)."""
        day = pacific_day()
        by_day = self._ledger["requests_by_day"]
        by_day[day] = int(by_day.get(day, 0)) + 1
        for old in sorted(by_day)[:-_DAYS_KEPT]:
            del by_day[old]
        self._dirty = True

    def add_spend(self, cost_usd: float, usage: dict[str, int]) -> None:
        self._ledger["cost_usd"] = round(float(self._ledger["cost_usd"]) + cost_usd, 9)
        totals = self._ledger["usage"]
        for key, value in usage.items():
            totals[key] = int(totals.get(key, 0)) + int(value)
        self._dirty = True

    @property
    def my_cost_usd(self) -> float:
        return float(self._ledger["cost_usd"])

    def spent_usd(self) -> float:
        """The run's estimated spend: the other ledgers at the last heartbeat plus ours now."""
        return self._others_cost + self.my_cost_usd

    def budget_reached(self) -> bool:
        return bool(self.limits.max_cost_usd) and self.spent_usd() >= self.limits.max_cost_usd

    def admit_day(self) -> bool:
        """May one more request go today? Raises QuotaExhausted once the run has used ``teacher_rpd``;
        False means this process used its part of what remained: ask again after a heartbeat."""
        if not self.limits.rpd:
            return True
        day = pacific_day()
        mine = self.requests_today(day)
        total = mine + self._others_by_day.get(day, 0)
        whose = "the run's"
        if self.project is not None:
            step_cap = self.project.step_cap
            if step_cap is not None and self.step_requests() >= step_cap:
                raise QuotaExhausted(
                    f"the night's reservation for this step is used: {self.step_requests()} of {step_cap} requests "
                    f"(the plan reserved them within teacher_rpd={self.limits.rpd})", resets_at=next_pacific_midnight())
            total, whose = mine + self._day_total, "the project's"
        if total >= self.limits.rpd:  # counted requests only: reservations may still be given back
            resets = next_pacific_midnight()
            raise QuotaExhausted(
                f"{whose} daily teacher quota is spent: {total} requests today (Pacific time) against "
                f"teacher_rpd={self.limits.rpd}; it resets at {resets.isoformat()}", resets_at=resets)
        return mine < self._day_allowance

    def snapshot(self) -> dict[str, Any]:
        return {"processes": self.live, "rpm_share": round(self.rpm_share, 3), "tpm_share": round(self.tpm_share, 1),
                "run_requests_today": self.run_requests_today(), "run_cost_usd": round(self.spent_usd(), 6)}

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load this process's ledger (earlier attempts), announce the lease, read the others."""
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()
        self._started_at = time.monotonic()
        if self.folder is None:
            return
        await asyncio.to_thread(self._load_own_ledger)
        await self.refresh()
        self._task = asyncio.create_task(self._heartbeat(), name=f"teacher-quota-{self.process}")

    async def stop(self) -> None:
        """Write the final ledger and remove the lease (the others' shares grow at their next heartbeat)."""
        task, self._task = self._task, None
        if task is not None:
            # Let a heartbeat in progress finish (its file work runs in a thread that a cancel
            # would not stop): a lease written after ours is removed would linger for a TTL.
            assert self._closing is not None
            self._closing.set()
            await task
        if self.folder is None:
            return
        try:
            await asyncio.to_thread(self._finish_files)
        except Exception as e:  # the step's outcome matters more than this bookkeeping
            log.warning("could not close the teacher lease of %s: %s", self.process, e)

    async def refresh(self) -> None:
        """One heartbeat: rewrite our lease (and ledger if it changed), then read the others'."""
        if self.folder is None:
            self._apply()
            return
        assert self._lock is not None
        async with self._lock:
            ledger, dirty = json.loads(json.dumps(self._ledger)), self._dirty
            self._dirty = False
            exchange = self._exchange if self.project is None else self._exchange_project
            try:
                seen = await asyncio.to_thread(exchange, ledger, dirty)
            except BaseException:
                self._dirty = self._dirty or dirty
                raise
            live_names, self._others_by_day, self._others_reserved, self._others_cost, reserved = seen
            me = self.process if self.project is None else f"{self.project.run_date}.{self.process}"
            self.live, self._rank = len(live_names), live_names.index(me)
            if reserved is not None:
                self._ledger["reserved"] = reserved
                self._day_allowance = reserved["requests"]
            self.refreshes += 1
            self._apply()

    @property
    def beat_s(self) -> float:
        """Seconds to the next heartbeat: quick during the first seconds, never under
        :data:`OBJECT_WRITE_INTERVAL_S` on an object store."""
        quick = time.monotonic() - self._started_at < QUICK_PERIOD_S
        beat = QUICK_HEARTBEAT_S if quick else self.heartbeat_s
        return max(beat, OBJECT_WRITE_INTERVAL_S) if self.on_object_store else beat

    async def _heartbeat(self) -> None:
        assert self._closing is not None
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self._closing.wait(), self.beat_s)
                return
            except (asyncio.TimeoutError, TimeoutError):
                pass
            try:
                await self.refresh()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # storage hiccup: keep the last shares, try again next beat
                failures += 1
                log.log(logging.WARNING if failures in (1, 10) else logging.DEBUG,
                        "teacher quota heartbeat of %s failed (%d in a row): %s", self.process, failures, e)

    # -- files (run in a worker thread) -------------------------------------------------------
    def _write_json(self, uri: str, obj: dict[str, Any]) -> None:
        """Write one of our files; on an object store no sooner than OBJECT_WRITE_INTERVAL_S after
        our previous write of it ended (this waits in the worker thread)."""
        from vlmprobe.io import write_json

        self._spaced(uri, lambda: write_json(uri, obj))

    def _spaced(self, uri: str, write: Any) -> None:
        if self.on_object_store:
            wait = self._written_at.get(uri, -math.inf) + OBJECT_WRITE_INTERVAL_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        try:
            write()
        finally:
            if self.on_object_store:
                self._written_at[uri] = time.monotonic()

    def _load_own_ledger(self) -> None:
        from vlmprobe.io import exists, read_json

        uri = self._ledger_uri()
        if not exists(uri):
            return
        try:
            old = read_json(uri)
            self._ledger["requests_by_day"] = {str(k): int(v) for k, v in old.get("requests_by_day", {}).items()}
            self._ledger["cost_usd"] = float(old.get("cost_usd", 0.0))
            self._ledger["usage"] = {str(k): int(v) for k, v in old.get("usage", {}).items()}
            log.info("teacher ledger of %s continues an earlier attempt: %s requests today, $%.4f",
                     self.process, self.requests_today(), self.my_cost_usd)
        except (ValueError, TypeError, AttributeError, OSError) as e:
            log.warning("ignoring the unreadable teacher ledger %s: %s", uri, e)

    def _exchange(self, ledger: dict[str, Any], dirty: bool
                  ) -> tuple[list[str], dict[str, int], int, float, dict[str, Any] | None]:
        """One heartbeat's file work: renew our lease, read the others' leases and ledgers, and
        publish our daily reservation before we use it. Returns (live process names, sorted; the
        others' requests by day; today's requests live others reserved beyond their counts; their
        cost; our new reservation or None)."""
        now = dt.datetime.now(dt.timezone.utc)
        self._write_json(self._lease_uri(), {"process": self.process, "host": socket.gethostname(), "pid": os.getpid(),
                                       "heartbeat_at": now.isoformat(), "rpm_share": self.rpm_share,
                                       "tpm_share": self.tpm_share})
        live = self._live_leases(self._list("leases"), self.process, now)
        today = pacific_day(now)
        others_by_day: dict[str, int] = {}
        others_reserved = 0
        others_cost = 0.0
        for process, (mtime, uri) in self._list("ledgers").items():
            if process == self.process:
                continue
            data = self._read_cached(uri, mtime)
            by_day = {str(d): int(c) for d, c in (data.get("requests_by_day") or {}).items()}
            for day, count in by_day.items():
                others_by_day[day] = others_by_day.get(day, 0) + count
            reserved = data.get("reserved") or {}
            if process in live and reserved.get("day") == today:  # a dead process sends no more
                others_reserved += max(int(reserved.get("requests", 0)) - by_day.get(today, 0), 0)
            others_cost += float(data.get("cost_usd") or 0.0)
        names = sorted(live)
        reservation = None
        if self.limits.rpd:
            counted = int(ledger["requests_by_day"].get(today, 0))
            others = others_by_day.get(today, 0) + others_reserved
            reservation = {"day": today, "requests": self._allowance(counted, others, len(names), names.index(self.process))}
            dirty = dirty or ledger.get("reserved") != reservation
            ledger["reserved"] = reservation
        if dirty:
            self._write_json(self._ledger_uri(), {**ledger, "updated_at": now.isoformat()})
        return names, others_by_day, others_reserved, others_cost, reservation

    def _live_leases(self, leases: dict[str, tuple[float | None, str]], me: str, now: dt.datetime) -> set[str]:
        """The names of the leases renewed within ``ttl_s`` of the newest one (``me`` always)."""
        mine = leases.get(me)
        reference = mine[0] if mine and mine[0] is not None else now.timestamp()
        reference = max([reference, *(m for m, _ in leases.values() if m is not None)])
        live = {me}
        for name, (mtime, uri) in leases.items():
            if name == me:
                continue
            if mtime is None:
                mtime = self._heartbeat_of(uri)
            if mtime is not None and reference - mtime <= self.ttl_s:
                live.add(name)
        return live

    def _exchange_project(self, ledger: dict[str, Any], dirty: bool
                          ) -> tuple[list[str], dict[str, int], int, float, dict[str, Any] | None]:
        """One heartbeat with a project scope (:mod:`vlmprobe.teacher.daily`): our lease among every
        run's, our run's ledgers (spend, this step's requests), the project's day folder; then our
        reservation for today written to our day file before we use it."""
        from vlmprobe.teacher.daily import pool_allowance, read_day, step_of

        assert self.project is not None
        now = dt.datetime.now(dt.timezone.utc)
        me = f"{self.project.run_date}.{self.process}"
        self._write_json(self._lease_uri(), {"process": self.process, "run_date": self.project.run_date,
                                             "host": socket.gethostname(), "pid": os.getpid(),
                                             "heartbeat_at": now.isoformat(), "rpm_share": self.rpm_share,
                                             "tpm_share": self.tpm_share})
        live = self._live_leases(self._list("leases", self.project.folder), me, now)
        others_cost, others_step = 0.0, 0
        step = step_of(self.process)
        for process, (mtime, uri) in self._list("ledgers").items():
            if process == self.process:
                continue
            data = self._read_cached(uri, mtime)
            others_cost += float(data.get("cost_usd") or 0.0)
            if step_of(process) == step:
                others_step += sum(int(n) for n in (data.get("requests_by_day") or {}).values())
        today = pacific_day(now)
        mine_today = int(ledger["requests_by_day"].get(today, 0))
        entries = [(uri.rsplit("/", 1)[1], self._read_cached(uri, mtime))
                   for name, (mtime, uri) in self._list(today, self.project.folder).items()
                   if name != me]
        day = read_day(entries)
        others_today = day.total
        self._day_total, self._others_step = others_today, others_step
        reservation = None
        if self.limits.rpd:
            pairs = [tuple(name.split(".", 1)) for name in live]
            cap = self.project.step_cap
            cap_left = None if cap is None else cap - others_step - sum(int(n) for n in ledger["requests_by_day"].values())
            day.counts[(self.project.run_date, self.process)] = mine_today
            allowance = pool_allowance(day, self.limits.rpd, self.project.run_date, self.process, pairs,
                                       step_cap_left=cap_left, burst=self._burst(len(live)))
            reservation = {"day": today, "requests": allowance}
            dirty = dirty or ledger.get("reserved") != reservation
            ledger["reserved"] = reservation
            if dirty:
                self._write_json(self._day_uri(today), {"requests": mine_today, "reserved": allowance,
                                                        "updated_at": now.isoformat()})
        if dirty:
            self._write_json(self._ledger_uri(), {**ledger, "updated_at": now.isoformat()})
        return sorted(live), {today: others_today}, 0, others_cost, reservation

    def _burst(self, live: int) -> int | None:
        """Requests a process may reserve above its count: what it can send in two heartbeats."""
        if not self.limits.rpm:
            return None
        return math.ceil(self.limits.rpm / live / self.limits.period_s * 2 * self.heartbeat_s) + 1

    def _list(self, sub: str, root: str | None = None) -> dict[str, tuple[float | None, str]]:
        """``{name: (mtime as a POSIX timestamp or None, uri)}`` of the JSON files in ``sub`` of
        ``root`` (the run's folder by default); names end before ``.json``."""
        from pyarrow import fs as pafs

        from vlmprobe.io.fs import resolve

        base = f"{root or self.folder}/{sub}"
        filesystem, path = resolve(base)
        try:
            infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        except FileNotFoundError:
            return {}
        found: dict[str, tuple[float | None, str]] = {}
        for info in infos:
            name = info.base_name
            if info.type != pafs.FileType.File or not name.endswith(".json") or name.startswith((".", "_")):
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else None
            found[name[: -len(".json")]] = (mtime, f"{base}/{name}")
        return found

    def _read_cached(self, uri: str, mtime: float | None) -> dict[str, Any]:
        from vlmprobe.io import read_json

        cached = self._others_cache.get(uri)
        if cached is not None and mtime is not None and cached[0] == mtime:
            return cached[1]
        try:
            data = read_json(uri)
        except (FileNotFoundError, ValueError) as e:  # removed or being replaced: count it next time
            log.debug("skipping teacher file %s this time: %s", uri, e)
            return cached[1] if cached else {}
        data = data if isinstance(data, dict) else {}
        self._others_cache[uri] = (mtime, data)
        return data

    def _heartbeat_of(self, uri: str) -> float | None:
        try:
            stamp = self._read_cached(uri, None).get("heartbeat_at")
            return dt.datetime.fromisoformat(stamp).timestamp() if stamp else None
        except (TypeError, ValueError):
            return None

    def _finish_files(self) -> None:
        from vlmprobe.io.fs import remove_file

        # Give back what we reserved and did not use: the others may send it.
        final = {k: v for k, v in self._ledger.items() if k != "reserved"}
        now = dt.datetime.now(dt.timezone.utc)
        self._write_json(self._ledger_uri(), {**final, "updated_at": now.isoformat()})
        self._dirty = False
        if self.project is not None and self.limits.rpd:
            today = pacific_day(now)
            count = self.requests_today(today)
            self._write_json(self._day_uri(today), {"requests": count, "reserved": count, "updated_at": now.isoformat()})
        lease = self._lease_uri()
        self._spaced(lease, lambda: remove_file(lease))
