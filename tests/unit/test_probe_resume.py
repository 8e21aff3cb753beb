"""The probe's resume journal: a stopped probe's rerun pays for no finished row again, whatever the rank count."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlmprobe.config import ProbeConfig
from vlmprobe.errors import TeacherUnusable
from vlmprobe.io import RunLayout, iter_jsonl, read_json
from vlmprobe.io.parquet import Row, WorkUnit
from vlmprobe.probe.resume import ProbeJournal, RowRanges, fingerprint_settings, keep_or_discard
from vlmprobe.probe.run import main
from vlmprobe.sim import GeminiSimulator
from fakes import SIM_PLAN

RUN_DATE = "2026-11-25"
CONCURRENCY = 3


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "resume-test-key")


def _cfg(demo_parquet, out, model, **kw) -> ProbeConfig:
    kw = {"failure_batch_size": 8, "concurrency": CONCURRENCY, **SIM_PLAN, **kw}
    return ProbeConfig(input_uri=demo_parquet, output_uri=str(out), run_date=RUN_DATE, target_model=model, **kw)


def _run(cfg, monkeypatch, **sim_options) -> tuple[dict | BaseException, list[dict]]:
    """One probe run against a fresh simulator: (its result or the error that stopped it, the request log)."""
    with GeminiSimulator(port=0, seed=1, **sim_options) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        try:
            result: dict | BaseException = main(cfg)
        except Exception as e:
            result = e
        return result, sim.request_log()


def _resent(first: list[dict], second: list[dict]) -> list[dict]:
    """Requests of ``second`` whose body had been answered successfully in ``first``."""
    succeeded = {e["sha256"] for e in first if e["status"] == 200}
    return [e for e in second if e["sha256"] in succeeded]


def _revoke_key_after(monkeypatch, calls: int) -> None:
    """The key is revoked after ``calls`` teacher calls: the step stops at once (exit 3), like a kill
    between two rows, with some rows finished and journaled and others in flight."""
    from vlmprobe.errors import TeacherUnusable
    from vlmprobe.teacher.client import Teacher

    real = Teacher.generate
    seen = {"n": 0}

    async def generate(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            raise TeacherUnusable("the Gemini API key was revoked (test)")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Teacher, "generate", generate)


def test_a_stopped_probe_resumes_without_paying_twice(tmp_path, demo_parquet, tiny_llava, monkeypatch):
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava)
    with monkeypatch.context() as m:
        _revoke_key_after(m, 30)
        stopped, first = _run(cfg, m)
    assert isinstance(stopped, TeacherUnusable)
    lay = RunLayout(str(tmp_path), RUN_DATE)
    assert not Path(lay.probe_success).exists()
    journaled = sum(seg.read_text().count("\n") for seg in Path(lay.probe_journal).glob("*.jsonl"))
    assert journaled > 10
    # rows whose explanation was cut off by the stop are not journaled as done (nor as unexplained)
    entries = [json.loads(line) for seg in Path(lay.probe_journal).glob("*.jsonl")
               for line in seg.read_text().splitlines()]
    assert not [e for e in entries if e["outcome"] == "unexplained"]

    result, second = _run(cfg, monkeypatch)
    success = read_json(result["success_uri"])
    c = success["counts"]
    assert c["rows"] == 48 == c["passed"] + c["verified"] + c["rejected"] + c["unexplained"] + c["errors"]
    # finished rows were skipped before the target: only the others went through it
    assert c["resumed"] >= journaled and c["probed"] + c["resumed"] == 48
    assert sum(e["status"] == 200 for e in first) >= 20
    # paid again: at most the factor answers of the rows between their two teacher calls at the stop
    assert len(_resent(first, second)) <= CONCURRENCY
    ids = [r["id"] for r in iter_jsonl(lay.probe_rank(0))] + \
          [e["id"] for e in iter_jsonl(lay.probe_errors(0)) if e.get("id")]
    assert len(ids) == len(set(ids)) == c["verified"] + c["rejected"] + c["errors"]  # each row once
    assert not Path(lay.probe_journal).exists()  # complete for good: cleared


def test_a_budget_the_plan_foresees_limits_the_night_without_failing_it(tmp_path, demo_parquet, tiny_llava,
                                                                        monkeypatch):
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava, max_cost_usd=0.02)
    result, first = _run(cfg, monkeypatch)
    success = read_json(result["success_uri"])
    c, night, plan = success["counts"], success["night"], success["night_plan"]
    assert plan["limited_by"] == "budget" and 0 < plan["explain_budget"] < plan["expected_wrong"]
    assert "teacher_budget_reached" not in success["error_reasons"]  # no error rows for a limit
    assert night["unexplained_reasons"].get("not_selected", 0) > 0 and c["verified"] + c["rejected"] > 0
    assert night["limited_by"] == "budget"
    assert c["wrong"] == c["verified"] + c["rejected"] + c["unexplained"] + c["teacher_errors"]
    assert c["rows"] == c["passed"] + c["wrong"] + c["errors"] - c["teacher_errors"]
    assert success["teacher"]["estimated_cost_usd"] <= 0.02
    lay = RunLayout(str(tmp_path), RUN_DATE)
    wrong = list(iter_jsonl(lay.probe_wrong(0)))
    assert len(wrong) == c["wrong"]  # every wrong answer written, explained or not
    assert {w["outcome"] for w in wrong} >= {"unexplained", "verified"}
    assert all(w["question"] and w["prediction"] is not None and w["question_type"] for w in wrong)
    assert not Path(lay.probe_journal).exists()  # a limit is final: nothing waits for a retry


def test_a_budget_met_while_the_night_runs_ends_the_explanations(tmp_path, demo_parquet, tiny_llava, monkeypatch):
    """The plan's cost per failure can be wrong: the run's budget then stops new explanations."""
    from vlmprobe.budget import plan as plan_module

    real = plan_module.plan_night

    def optimistic(inputs, priors):  # a plan that knows no price: it reserves nothing for QA, caps nothing
        plan = real(inputs.model_copy(update={"max_cost_usd": 0.0}), priors)
        return plan.model_copy(update={"cost_per_explained_usd": None, "qa_cost_per_explained_usd": None})

    monkeypatch.setattr(plan_module, "plan_night", optimistic)
    monkeypatch.setattr("vlmprobe.budget.night.plan_night", optimistic)
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava, max_cost_usd=0.004)
    result, _ = _run(cfg, monkeypatch)
    success = read_json(result["success_uri"])
    night = success["night"]
    assert night["limited_by"] == "budget" and night["unexplained_reasons"].get("budget", 0) > 0
    assert night["explained"] > 0  # the first ones were paid for
    assert "teacher_budget_reached" not in success["error_reasons"]
    # the spend stops at the budget, give or take the requests in flight when it was reached
    assert success["teacher"]["estimated_cost_usd"] <= 0.004 + 2 * CONCURRENCY * 0.0005


def test_a_journal_made_with_other_settings_is_discarded(tmp_path, demo_parquet, tiny_llava, monkeypatch, caplog):
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava)
    with monkeypatch.context() as m:
        _revoke_key_after(m, 20)
        stopped, _ = _run(cfg, m)
    assert isinstance(stopped, TeacherUnusable)
    with caplog.at_level(logging.WARNING, logger="vlmprobe.probe"):
        result, _ = _run(cfg.model_copy(update={"max_new_tokens": 9}), monkeypatch)
    assert "made with other settings (max_new_tokens 16 -> 9)" in caplog.text
    c = read_json(result["success_uri"])["counts"]
    assert c["resumed"] == 0 and c["probed"] == 48


def test_a_target_failing_on_a_batch_of_one_is_an_error_row_retried_by_a_rerun(tmp_path, demo_parquet, tiny_llava,
                                                                               monkeypatch):
    import vlmprobe.vlm as target_mod

    bad_image = pq.read_table(f"{demo_parquet}/part-00001.parquet").column("image")[3].as_py()["bytes"]
    real_load = target_mod.load_target

    class FailsOnOneImage:
        def __init__(self, real):
            self.real = real

        def prepare(self, images, questions, choices, image_keys=None, **kw):
            return image_keys, self.real.prepare(images, questions, choices, image_keys, **kw)

        def run(self, prepared):
            keys, batch = prepared
            if bad_image in keys:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return self.real.run(batch)

        def answer(self, *args, **kw):
            return self.real.answer(*args, **kw)

    monkeypatch.setattr(target_mod, "load_target", lambda *a, **kw: FailsOnOneImage(real_load(*a, **kw)))
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava, failure_batch_size=1)
    result, _ = _run(cfg, monkeypatch)
    success = read_json(result["success_uri"])
    assert success["error_reasons"]["target_error"] == 1 and success["counts"]["rows"] == 48
    lay = RunLayout(str(tmp_path), RUN_DATE)
    (row,) = [e for e in iter_jsonl(lay.probe_errors(0)) if e["reason"] == "target_error"]
    assert row["id"] == "demo-00001-0003" and "illegal memory access" in row["detail"]

    monkeypatch.setattr(target_mod, "load_target", real_load)
    result, _ = _run(cfg, monkeypatch)
    again = read_json(result["success_uri"])
    assert "target_error" not in again["error_reasons"] and again["counts"]["probed"] == 1


def _units(uri: str, sizes: list[int]) -> list[WorkUnit]:
    units, first = [], 0
    for i, n in enumerate(sizes):
        units.append(WorkUnit(uri, i, first, n))
        first += n
    return units


def test_journal_entries_follow_rows_not_ranks(tmp_path):
    cfg = ProbeConfig(input_uri="in", output_uri=str(tmp_path), run_date=RUN_DATE, target_model="m")
    settings = fingerprint_settings(cfg)
    folder = str(tmp_path / "_journal")
    units = _units("f.parquet", [4, 4, 4])
    assert keep_or_discard(folder, settings) == []
    # attempt 1, one rank: rows 0-5 finished (row 5 only for lack of budget), then killed
    with ProbeJournal(folder, 0, settings, units, prior=[]) as j:
        for r in range(5):
            j.record(Row("f.parquet", r, {}), "passed" if r % 2 else "verified", {"id": f"r{r}"} if r % 2 == 0 else None)
        j.record(Row("f.parquet", 5, {}), "error", {"id": "r5", "reason": "teacher_budget_reached"})
    prior = keep_or_discard(folder, settings)
    assert len(prior) == 1
    # attempt 2, two ranks: rank 1 reads groups 1-2 (rows 4-11) and finds row 4 done, row 5 not
    with ProbeJournal(folder, 1, settings, units[1:], prior) as j:
        assert j.done_rows() == {"f.parquet": {4}}
        for r in range(5, 12):
            j.record(Row("f.parquet", r, {}), "passed")
    tally = j.write_outputs(str(tmp_path / "fail.jsonl"), str(tmp_path / "err.jsonl"), [], {"rank": 1})
    assert tally.counts["rows"] == 8 and tally.counts["resumed"] == 1 and tally.counts["passed"] == 7
    assert [r["id"] for r in iter_jsonl(str(tmp_path / "fail.jsonl"))] == ["r4"]
    assert list(iter_jsonl(str(tmp_path / "err.jsonl"))) == []  # row 5's budget row was superseded
    # another setting: the journal goes
    assert keep_or_discard(folder, {**settings, "gemini_model": "other"}) == []
    assert not list(Path(folder).glob("*.jsonl"))


def test_row_ranges():
    ranges = RowRanges([("a", 0, 4), ("a", 8, 12), ("b", 3, None)])
    assert [r for r in range(14) if ("a", r) in ranges] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert ("b", 2) not in ranges and ("b", 10**9) in ranges and ("c", 0) not in ranges
