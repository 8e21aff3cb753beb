"""The project's daily ledger: holds keep other runs off a run's reservation; counts are per project."""

from __future__ import annotations

from vlmprobe.teacher.daily import pool_allowance, read_day, step_of


def day(**files):
    return read_day((name.replace("__", "."), data) for name, data in files.items())


def test_step_of_process_names():
    assert step_of("probe-rank-00001") == "probe" and step_of("qa-shard-00003") == "qa"


def test_left_counts_every_run_and_other_runs_holds():
    d = read_day([
        ("2026-11-24.probe-rank-00000.json", {"requests": 30}),
        ("2026-11-24.qa-shard-00000.json", {"requests": 5}),
        ("2026-11-24.hold.json", {"probe": 40, "qa": 20, "released": ["probe"]}),
    ])
    assert d.total == 35
    assert d.hold_left("2026-11-24", "probe") == 0  # released
    assert d.hold_left("2026-11-24", "qa") == 15
    assert d.left(100, run_date="2026-11-25") == 100 - 35 - 15
    assert d.left(100, run_date="2026-11-24") == 100 - 35  # a rerun of the same date replans its own hold


def test_a_hold_is_kept_from_other_runs_and_open_to_its_own():
    d = read_day([("2026-11-24.hold.json", {"probe": 50, "qa": 30})])
    live = [("2026-11-24", "probe-rank-00000"), ("2026-11-25", "probe-rank-00000")]
    # another run date sees 100 - 80 held
    assert pool_allowance(d, 100, "2026-11-25", "probe-rank-00000", live) == 20
    # the holder's probe: everything but its QA's hold, capped by its plan's step cap
    assert pool_allowance(d, 100, "2026-11-24", "probe-rank-00000", live, step_cap_left=50) == 50
    assert pool_allowance(d, 100, "2026-11-24", "probe-rank-00000", live) == 70


def test_pool_members_share_and_reservations_count_once():
    d = read_day([
        ("2026-11-24.hold.json", {"probe": 60, "qa": 0}),
        ("2026-11-24.probe-rank-00000.json", {"requests": 10, "reserved": 25}),
    ])
    live = [("2026-11-24", "probe-rank-00000"), ("2026-11-24", "probe-rank-00001")]
    # rank 1: 100 - 10 counted - 15 unspent of rank 0, shared by 2 -> 37 (38 for the first by name)
    assert pool_allowance(d, 100, "2026-11-24", "probe-rank-00001", live, step_cap_left=50) == (50 - 15) // 2
    # another run sees the hold's unused 50 (not 50 + 15: rank 0's reservation is inside the hold)
    other = pool_allowance(d, 100, "2026-11-25", "probe-rank-00000", [*live, ("2026-11-25", "probe-rank-00000")])
    assert other == 100 - 10 - 50


def test_dead_processes_stop_reserving_and_burst_bounds_a_share():
    d = read_day([("2026-11-24.probe-rank-00000.json", {"requests": 10, "reserved": 60})])
    assert pool_allowance(d, 100, "2026-11-25", "probe-rank-00000", []) == 90  # rank 0 of 11-24 is dead
    live = [("2026-11-24", "probe-rank-00000")]
    assert pool_allowance(d, 100, "2026-11-25", "probe-rank-00000", live) == 40
    assert pool_allowance(d, 100, "2026-11-25", "probe-rank-00000", live, burst=7) == 7
