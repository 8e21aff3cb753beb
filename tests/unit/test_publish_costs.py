"""The manifest's teacher cost comes from what the steps recorded per tier or mode, not from tokens
priced again at standard; ``teacher_modes`` shows each mode next to standard online."""

from __future__ import annotations

import pytest

from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.contracts import Manifest, ProbeSuccess, QACounts, ShardPlan
from vlmprobe.io import JsonlWriter
from vlmprobe.publish.costs import saving_line, teacher_modes
from vlmprobe.publish.run import publish, teacher_figures
from vlmprobe.sample.run import sample_keys
from vlmprobe.teacher.pricing import estimate_cost
from vlmprobe.teacher.usage import Ledger, Usage
from fakes import RUN_DATE, fake_probe, fake_qa_stats, fake_rank, fake_success

MODEL = "gemini-2.5-flash"


def _stats(answers: dict[str, list[Usage]]) -> dict:
    """A process's teacher stats as the client keeps them: every answer added to a ledger at its tier."""
    ledger = Ledger(MODEL)
    for tier, usages in answers.items():
        for usage in usages:
            ledger.add(usage, tier)
    return {"requests": sum(map(len, answers.values())), "retries": 0, "rate_limited": 0, "succeeded": 0,
            "failed": 0, **ledger.usage.as_dict(), "estimated_cost_usd": round(ledger.cost_usd, 6),
            "by_tier": ledger.tiers_dict()}


def test_a_step_s_cost_is_what_its_processes_recorded_at_each_tier():
    flex = _stats({"flex": [Usage(1000, 200)] * 10})
    mixed = _stats({"batch": [Usage(800, 300)] * 9, "standard": [Usage(800, 300)]})
    standard_price = estimate_cost(MODEL, 1000, 200)
    probe = teacher_figures([flex], MODEL)
    assert probe.estimated_cost_usd == pytest.approx(10 * standard_price / 2)  # flex: half, not re-priced
    modes = teacher_modes([flex], [mixed], MODEL)
    assert set(modes.probe.by_mode) == {"flex"} and set(modes.qa.by_mode) == {"batch", "standard"}
    batch = modes.qa.by_mode["batch"]
    assert batch.requests == 9 and batch.prompt_tokens == 7200
    assert batch.estimated_cost_usd == pytest.approx(batch.standard_cost_usd / 2)
    assert modes.qa.estimated_cost_usd == pytest.approx(
        batch.estimated_cost_usd + modes.qa.by_mode["standard"].estimated_cost_usd)
    assert modes.run.standard_cost_usd == pytest.approx(modes.probe.standard_cost_usd + modes.qa.standard_cost_usd)
    assert modes.run.saving_usd > 0
    assert modes.run.saving_usd == pytest.approx(modes.run.standard_cost_usd - modes.run.estimated_cost_usd)
    assert saving_line("qa", modes.qa).startswith("qa by mode: batch 9 answers $")
    assert "saved $" in saving_line("run", modes.run)
    # stats from before the tiers: standard online, priced from their tokens
    old = {"requests": 3, "prompt_tokens": 3000, "output_tokens": 600}
    assert teacher_figures([old], MODEL).estimated_cost_usd == pytest.approx(estimate_cost(MODEL, 3000, 600))
    # an answer with no price (priority) leaves the cost unknown, never understated
    priority = _stats({"priority": [Usage(100, 10)]})
    assert teacher_figures([flex, priority], MODEL).estimated_cost_usd is None
    assert teacher_modes([priority], [], MODEL).run.saving_usd is None


def test_the_manifest_shows_each_step_per_mode_and_the_saving(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4, "count:2": 3})
    success = ProbeSuccess.read(lay.probe_success)
    ranks = [fake_rank(lay, r, teacher=_stats({"flex": [Usage(1000, 200)] * 6})) for r in range(2)]
    fake_success(lay, success.failure_files, verified=success.counts.verified, ranks=ranks)
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    for s in ShardPlan.read(lay.shard_plan).shards:
        n = s.count
        with JsonlWriter(lay.qa_shard(s.shard_index)) as w:
            for k in range(n):
                w.write({"id": f"{s.shard_index}-{k}"})
        counts = QACounts(failures=n, failures_with_items=n, errors=0, items=n, items_generated=n, items_dropped=0,
                          items_checked=0, items_target_failed=0, items_dropped_target_passed=0,
                          items_check_errors=0, resumed=0)
        fake_qa_stats(lay, s.shard_index, counts,
                      teacher=_stats({"batch": [Usage(900, 400)] * n, "standard": [Usage(900, 400)]}))
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    m = Manifest.read(lay.manifest)
    modes = m.teacher_modes
    assert modes.probe.by_mode["flex"].requests == 12 and set(modes.qa.by_mode) == {"batch", "standard"}
    assert modes.qa.by_mode["batch"].requests == 7 and modes.qa.by_mode["standard"].requests == 2
    # the step costs and the run's are the recorded ones: flex and batch at half
    assert m.teacher.probe.estimated_cost_usd == pytest.approx(modes.probe.estimated_cost_usd)
    assert m.teacher.qa.estimated_cost_usd == pytest.approx(modes.qa.estimated_cost_usd)
    assert m.estimated_cost_usd == pytest.approx(modes.run.estimated_cost_usd)
    assert modes.probe.estimated_cost_usd == pytest.approx(modes.probe.standard_cost_usd / 2)
    assert 0.5 < modes.run.estimated_cost_usd / modes.run.standard_cost_usd < 0.6
