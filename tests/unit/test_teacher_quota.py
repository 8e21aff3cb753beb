"""The run-wide teacher quota: leases, shares, ledgers, the daily quota and the budget, across processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time

import pytest
from pydantic import BaseModel

from vlmprobe.errors import QuotaExhausted
from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.client import Teacher
from vlmprobe.teacher.flow import AdaptiveConcurrency, RateLimiter
from vlmprobe.teacher.quota import QuotaLimits, RunQuota, next_pacific_midnight, pacific_day
from vlmprobe.teacher.results import TeacherError
from vlmprobe.teacher.retry import RetryPolicy

KEY = "quota-test-key"
FAST = RetryPolicy(base_delay=0.001, jitter=0.0, max_attempts=3)


class Answer(BaseModel):
    answer: str


# ------------------------------------------------------------------------------- leases


def test_shares_follow_the_live_leases(tmp_path):
    limits = QuotaLimits(rpm=900, tpm=90_000)

    async def run() -> list[tuple[int, float]]:
        quotas = [RunQuota(limits, str(tmp_path), f"qa-shard-{i:05d}") for i in range(3)]
        for q in quotas:
            await q.start()
        for q in quotas:
            await q.refresh()
        seen = [(q.live, q.rpm_share) for q in quotas]
        await quotas[2].stop()  # a finished process removes its lease ...
        await quotas[0].refresh()
        seen.append((quotas[0].live, quotas[0].rpm_share))  # ... the others grow at their next beat
        for q in quotas[:2]:
            await q.stop()
        return seen

    seen = asyncio.run(run())
    assert seen[:3] == [(3, 300.0)] * 3
    assert seen[3] == (2, 450.0)
    assert not os.listdir(tmp_path / "leases")  # every lease removed at the end


def test_a_lease_not_renewed_within_its_ttl_is_dead(tmp_path):
    async def run() -> int:
        alive = RunQuota(QuotaLimits(rpm=100), str(tmp_path), "probe-rank-00000", ttl_s=30.0)
        await alive.start()
        await alive.stop()  # leave a ledger but no lease, then fake a killed process's lease:
        (tmp_path / "leases").mkdir(exist_ok=True)
        dead = tmp_path / "leases" / "probe-rank-00001.json"
        dead.write_text(json.dumps({"process": "probe-rank-00001"}))
        old = time.time() - 120
        os.utime(dead, (old, old))
        quota = RunQuota(QuotaLimits(rpm=100), str(tmp_path), "probe-rank-00002", ttl_s=30.0)
        await quota.start()
        live = quota.live
        await quota.stop()
        return live

    assert asyncio.run(run()) == 1


def test_a_retried_process_continues_its_own_ledger(tmp_path):
    async def attempt(requests: int) -> RunQuota:
        quota = RunQuota(QuotaLimits(rpd=100), str(tmp_path), "qa-shard-00001")
        await quota.start()
        for _ in range(requests):
            quota.count_request()
        quota.add_spend(0.25, {"prompt_tokens": 10})
        await quota.stop()
        return quota

    asyncio.run(attempt(3))
    second = asyncio.run(attempt(2))
    assert second.requests_today() == 5 and second.my_cost_usd == 0.5
    ledger = json.loads((tmp_path / "ledgers" / "qa-shard-00001.json").read_text())
    assert ledger["requests_by_day"] == {pacific_day(): 5} and ledger["usage"] == {"prompt_tokens": 20}


def test_the_daily_quota_is_reserved_in_parts_and_never_exceeded(tmp_path):
    async def run() -> list[int]:
        quotas = [RunQuota(QuotaLimits(rpd=7), str(tmp_path), f"qa-shard-{i:05d}") for i in range(3)]
        for q in quotas:
            await q.start()
        sent = [0, 0, 0]
        for _ in range(6):  # a few heartbeats: each uses its part of what remains, then all stop
            for q in quotas:
                await q.refresh()
            for i, q in enumerate(quotas):
                try:
                    while q.admit_day():
                        q.count_request()
                        sent[i] += 1
                except QuotaExhausted:
                    pass
        for q in quotas:
            await q.stop()
        return sent

    sent = asyncio.run(run())
    assert sum(sent) == 7 and min(sent) >= 1  # all of it used, never more, and everyone had a part


def test_next_pacific_midnight():
    summer = dt.datetime(2026, 7, 1, 6, 59, tzinfo=dt.timezone.utc)  # 23:59 PDT on June 30
    assert next_pacific_midnight(summer) == dt.datetime(2026, 7, 1, 7, 0, tzinfo=dt.timezone.utc)
    assert pacific_day(summer) == "2026-06-30"
    winter = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.timezone.utc)  # 00:00 PST on Dec 1
    assert next_pacific_midnight(winter) == dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------- pacing primitives


def test_rate_limiter_spaces_bookings_in_order_and_takes_a_new_rate_at_once():
    now = [100.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])  # 2 per second
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]
    limiter.rate = 1.0  # a process joined: half the share
    assert limiter.reserve() == 1.5 and limiter.reserve() == 2.5
    assert limiter.reserve(4.0) == 3.5  # a large amount waits its turn and takes its time
    now[0] += 100
    assert limiter.reserve() == 0.0  # idle: no debt, no burst either
    limiter.rate = None
    assert limiter.reserve(1e9) == 0.0


def test_aimd_halves_on_429_and_grows_by_one_per_limit_successes():
    now = [0.0]
    flow = AdaptiveConcurrency(16, cooldown_s=1.0, clock=lambda: now[0])
    assert flow.on_rate_limited() and flow.limit == 8
    assert not flow.on_rate_limited() and flow.limit == 8  # a burst of 429s is one signal
    now[0] += 1.5
    flow.on_rate_limited()
    flow.on_rate_limited()
    assert flow.limit == 4
    for _ in range(4):
        flow.on_success()
    assert flow.limit == 5
    for _ in range(500):
        flow.on_success()
    assert flow.limit == 16  # never above the configured concurrency
    for _ in range(10):
        now[0] += 2
        flow.on_rate_limited()
    assert flow.limit == 1  # never below one


# ------------------------------------------------------------- teachers sharing a quota


def _teachers(sim: GeminiSimulator, folder: str | None, n: int, **options) -> list[Teacher]:
    return [Teacher("gemini-2.5-flash", api_key=KEY, base_url=sim.base_url, retry=FAST,
                    quota_folder=folder, process=f"qa-shard-{i:05d}", **options) for i in range(n)]


async def _ask_all(teachers: list[Teacher], per_teacher: int) -> list:
    for t in teachers:
        await t.__aenter__()
    try:
        for t in teachers:  # each has seen all the leases before the first request
            await t.quota.refresh()
        asks = [t.generate(f"Shard {i} question {j}.", Answer) for i, t in enumerate(teachers) for j in range(per_teacher)]
        return await asyncio.gather(*asks, return_exceptions=True)
    finally:
        for t in teachers:
            await t.__aexit__(None, None, None)


def test_teachers_sharing_a_lease_folder_stay_under_the_per_minute_quota(tmp_path):
    # The simulator allows 6 requests per 1.5 s window; three teachers share that quota.
    window = {"rpm": 6, "quota_window_s": 1.5}
    limits = QuotaLimits(rpm=6, period_s=1.5, headroom=0.3)  # room for a busy test machine
    with GeminiSimulator(port=0, **window) as sim:
        outcomes = asyncio.run(_ask_all(_teachers(sim, str(tmp_path / "_teacher"), 3, limits=limits), 4))
        shared = sim.stats()
    assert all(not isinstance(o, BaseException) for o in outcomes)
    assert shared["by_status"] == {"200": 12} and shared["quota_rejections"] == {}

    # The same three without the shared folder each take the whole quota: the server refuses some.
    with GeminiSimulator(port=0, **window) as sim:
        asyncio.run(_ask_all(_teachers(sim, None, 3, limits=limits), 3))
        alone = sim.stats()
    assert alone["quota_rejections"].get("rpm", 0) > 0


def test_the_run_daily_quota_counts_every_process_ledger(tmp_path):
    folder = str(tmp_path / "_teacher")
    limits = QuotaLimits(rpd=3)
    with GeminiSimulator(port=0) as sim:
        first = asyncio.run(_ask_all(_teachers(sim, folder, 1, limits=limits), 3))
        later = asyncio.run(_ask_all([Teacher("gemini-2.5-flash", api_key=KEY, base_url=sim.base_url,
                                              quota_folder=folder, process="qa-shard-00007", limits=limits)], 1))
        requests = sim.stats()["requests"]
    assert all(not isinstance(o, BaseException) for o in first)
    (refused,) = later
    assert isinstance(refused, QuotaExhausted) and "teacher_rpd=3" in str(refused)
    assert refused.resets_at == next_pacific_midnight()
    assert requests == 3  # refused before sending


def test_the_budget_stops_new_requests_across_processes(tmp_path):
    folder = str(tmp_path / "_teacher")
    tiny = QuotaLimits(max_cost_usd=1e-9)  # the first answer spends it
    with GeminiSimulator(port=0) as sim:
        spender = asyncio.run(_ask_all(_teachers(sim, folder, 1, limits=tiny), 1))
        sent = sim.stats()["requests"]
        other = Teacher("gemini-2.5-flash", api_key=KEY, base_url=sim.base_url, quota_folder=folder,
                        process="probe-rank-00001", limits=tiny)
        refused = asyncio.run(_ask_all([other], 2))
        requests = sim.stats()["requests"]
    assert not isinstance(spender[0], BaseException) and sent == 1
    assert all(isinstance(e, TeacherError) and e.reason == "budget_reached" for e in refused)
    assert requests == 1 and other.stats["gave_up"] == {"budget_reached": 2}
    ledger = json.loads((tmp_path / "_teacher" / "ledgers" / "qa-shard-00000.json").read_text())
    assert ledger["cost_usd"] > 0 and ledger["usage"]["prompt_tokens"] > 0


def test_a_follow_up_of_a_paid_request_is_not_refused_by_the_budget(tmp_path):
    # the verification of a paid factor goes out, so the factor's money is not thrown away
    tiny = QuotaLimits(max_cost_usd=1e-9)

    async def factor_then_verify(teacher: Teacher) -> list:
        async with teacher:
            await teacher.generate("Factor question.", Answer)
            verified = await teacher.generate("Verify it.", Answer, follow_up=True)
            try:
                await teacher.generate("A new row's factor.", Answer)
            except TeacherError as e:
                return [verified, e]
            return [verified, None]

    with GeminiSimulator(port=0) as sim:
        (teacher,) = _teachers(sim, str(tmp_path / "_teacher"), 1, limits=tiny)
        verified, refused = asyncio.run(factor_then_verify(teacher))
        requests = sim.stats()["requests"]
    assert verified.parsed is not None and requests == 2
    assert isinstance(refused, TeacherError) and refused.reason == "budget_reached"


@pytest.mark.parametrize("bad", [dict(rpm=-1), dict(period_s=0), dict(headroom=1.0)])
def test_limits_are_checked(bad):
    with pytest.raises(ValueError):
        QuotaLimits(**bad)


# ------------------------------------------------------------------- object-store write rate


def test_on_an_object_store_no_file_is_written_twice_within_a_second(tmp_path):
    from vlmprobe.teacher.quota import OBJECT_WRITE_INTERVAL_S, QUICK_HEARTBEAT_S

    local = RunQuota(QuotaLimits(rpm=100), str(tmp_path), "qa-shard-00000")
    remote = RunQuota(QuotaLimits(rpm=100), "gs://bucket/out/2026-11-25/_teacher", "qa-shard-00000")
    local._started_at = remote._started_at = time.monotonic()  # both within their quick first seconds
    assert local.beat_s == QUICK_HEARTBEAT_S < 1.0
    assert remote.on_object_store and remote.beat_s == OBJECT_WRITE_INTERVAL_S == 1.0
    # writes of one file are spaced (in the worker thread), other files are not held back by it
    done: list[tuple[str, float, float]] = []

    def write(name):
        return lambda: done.append((name, time.monotonic(), time.monotonic()))

    lease, ledger = remote._lease_uri(), remote._ledger_uri()
    for uri in (lease, ledger, lease, lease):
        remote._spaced(uri, write(uri))
    starts = [start for name, start, _ in done if name == lease]
    assert all(b - a >= OBJECT_WRITE_INTERVAL_S for a, b in zip(starts, starts[1:]))
    assert done[1][1] - done[0][2] < OBJECT_WRITE_INTERVAL_S / 2  # the ledger did not wait for the lease
    t0 = time.monotonic()
    local._spaced(local._lease_uri(), write("a"))
    local._spaced(local._lease_uri(), write("a"))
    assert time.monotonic() - t0 < 0.5  # local files: no spacing
