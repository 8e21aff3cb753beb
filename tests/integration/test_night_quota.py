"""A night planned from the project's daily quota, run as the pods run it (the `vlmprobe` CLI).

With ``--teacher-rpd 60`` on the demo's 96 rows every step exits 0, the simulator sees at most 60
requests, the manifest says the night was limited by the daily quota and QA still produced
items; a second run date probed the same Pacific day plans with, and sends, only what is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmprobe.contracts import Manifest, ProbeSuccess, ShardPlan
from vlmprobe.io import RunLayout, iter_jsonl
from fakes import SIM_PLAN_ARGS

pytestmark = pytest.mark.slow
VLMPROBE = str(Path(sys.executable).parent / "vlmprobe")
RPD = 60


def _night(tmp_path: Path, parquet: str, model: str, sim, run_date: str) -> tuple[list[int], int]:
    """probe (2 ranks) -> sample-keys -> qa (each shard) -> publish; (exit codes, requests the night sent)."""
    env = {**os.environ, "GEMINI_API_KEY": "night-test-key", "GEMINI_BASE_URL": sim.base_url}
    common = ["--run-date", run_date, "--output-uri", str(tmp_path)]
    teacher = ["--teacher-rpd", str(RPD), "--concurrency", "4"]
    plan = SIM_PLAN_ARGS  # the probe plans with the simulator's latency
    before = len(sim.request_log())

    def run(*args: str) -> int:
        done = subprocess.run([VLMPROBE, *args], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            print(done.stdout[-4000:], done.stderr[-4000:])
        return done.returncode

    codes = [run("probe", "--nproc-per-node", "2", *common, *teacher, *plan, "--input-uri", parquet,
                 "--target-model", model, "--failure-batch-size", "8")]
    codes.append(run("sample-keys", *common, "--samples-per-key", "4", "--num-shards", "2"))
    layout = RunLayout(str(tmp_path), run_date)
    shards = ShardPlan.read(layout.shard_plan).num_shards if Path(layout.shard_plan).exists() else 0
    for i in range(shards):
        codes.append(run("qa", *common, *teacher, "--shard-index", str(i)))
    codes.append(run("publish", *common, "--teacher-rpd", str(RPD)))
    return codes, len(sim.request_log()) - before


def test_a_night_within_the_project_daily_quota_and_a_second_date_gets_the_rest(tmp_path, tiny_llava):
    from vlmprobe.demo.data import write_demo_parquet
    from vlmprobe.sim import GeminiSimulator

    parquet = str(tmp_path / "parquet")
    write_demo_parquet(parquet)  # the demo's 96 rows
    out = tmp_path / "runs"
    with GeminiSimulator(port=0, latency_ms=30, rate_429=0.05, rate_503=0.03, rate_malformed=0.03, seed=7) as sim:
        codes, first = _night(out, parquet, tiny_llava, sim, "2026-11-25")
        assert codes == [0] * len(codes)
        assert first <= RPD
        layout = RunLayout(str(out), "2026-11-25")
        manifest = Manifest.read(layout.manifest)
        night = manifest.night
        assert night is not None and night.limited_by == "daily_quota"
        assert night.plan.inputs.requests_left_today == RPD and night.plan.limited_by == "daily_quota"
        assert manifest.qa.counts["items"] > 0
        c = manifest.probe.counts
        assert c.rows == 96 == c.passed + c.wrong + c.errors - c.teacher_errors
        assert c.wrong == c.explained + c.unexplained + c.teacher_errors
        # a seeded sample of 17 of 77: binomial noise of a few either way at this size (the bench, at
        # hundreds, holds it to 0.9); never more than the budget allows
        planned = min(night.plan.explain_budget, c.wrong)
        assert 0.6 * planned <= night.probe.explained <= 1.1 * planned + 1
        assert len(list(iter_jsonl(layout.probe_wrong(0)))) + len(list(iter_jsonl(layout.probe_wrong(1)))) == c.wrong
        # the plan was logged before the first batch, and kept next to what happened
        assert ProbeSuccess.read(layout.probe_success).night_plan == night.plan

        # the next run date, probed the same Pacific day (a backfill, a rerun): the same project quota
        codes, second = _night(out, parquet, tiny_llava, sim, "2026-11-26")
        later = Manifest.read(RunLayout(str(out), "2026-11-26").manifest).night
    assert codes == [0] * len(codes)
    assert later is not None and later.plan.inputs.requests_left_today == RPD - first
    assert second <= RPD - first and first + second <= RPD
    # its plan starts from what the night before measured, not from the defaults
    assert later.plan.priors.source == "night 2026-11-25"
    assert later.plan.priors.error_rate == pytest.approx(c.wrong / c.rows)
