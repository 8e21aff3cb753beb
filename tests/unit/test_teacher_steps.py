"""The probe and QA steps with the new teacher: a dead teacher stops them, content verdicts and the
budget become error rows, and the daily quota stops them resumably."""

from __future__ import annotations

import pytest

from vlmprobe.config import ProbeConfig, QAConfig, SampleConfig
from vlmprobe.errors import TeacherUnusable
from vlmprobe.io import iter_jsonl, read_json
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys
from vlmprobe.sim import GeminiSimulator
from fakes import RUN_DATE, SIM_PLAN, fake_probe

SECRET = "steps-secret-key-5521"


@pytest.fixture
def qa_input(tmp_path, demo_parquet, monkeypatch):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4, "count:3": 4})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    return lay


def _qa(tmp_path, sim, monkeypatch, **options) -> dict:
    monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
    options = {"concurrency": 2, **options}
    return run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, **options))


@pytest.mark.parametrize("fail", ["401", "404"])
def test_a_dead_teacher_stops_qa_at_once_and_writes_nothing(tmp_path, qa_input, monkeypatch, fail):
    with GeminiSimulator(port=0, fail=fail) as sim:
        with pytest.raises(TeacherUnusable) as caught:
            _qa(tmp_path, sim, monkeypatch)
        requests = sim.stats()["requests"]
    assert requests <= 2 and "\n" not in str(caught.value) and SECRET not in str(caught.value)
    assert not (tmp_path / RUN_DATE / "qa" / "shard-00000.jsonl").exists()
    assert not (tmp_path / RUN_DATE / "qa" / "_shard-00000.stats.json").exists()


def test_a_dead_teacher_stops_the_probe(tmp_path, demo_parquet, tiny_llava, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    from vlmprobe.probe.run import main

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with GeminiSimulator(port=0, models=["gemini-2.5-flash"]) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        cfg = ProbeConfig(input_uri=demo_parquet, output_uri=str(tmp_path), run_date=RUN_DATE,
                          target_model=tiny_llava, failure_batch_size=8, parquet_sample_size=1, concurrency=2,
                          gemini_model="gemini-9", **SIM_PLAN)
        with pytest.raises(TeacherUnusable, match="model 'gemini-9' not found"):
            main(cfg)
    assert not (tmp_path / RUN_DATE / "probe" / "_SUCCESS.json").exists()


def test_safety_answers_are_error_rows_asked_once(tmp_path, qa_input, monkeypatch):
    with GeminiSimulator(port=0, rate_safety=1.0) as sim:
        out = _qa(tmp_path, sim, monkeypatch)
        log = sim.request_log()
    errors = list(iter_jsonl(qa_input.qa_errors(0)))
    assert out["counts"]["errors"] == len(errors) == 8 == len(log)
    assert {e["reason"] for e in errors} == {"teacher_finish_safety"}
    assert len({e["sha256"] for e in log}) == len(log)  # no request sent twice


def test_the_budget_turns_the_remaining_records_into_limited_rows(tmp_path, qa_input, monkeypatch):
    with GeminiSimulator(port=0) as sim:
        out = _qa(tmp_path, sim, monkeypatch, max_cost_usd=1e-9, concurrency=1, no_async=True)
        requests = sim.stats()["requests"]
    reasons = [e["reason"] for e in iter_jsonl(qa_input.qa_errors(0))]
    assert requests == 1 and out["counts"]["failures_with_items"] + len(reasons) == 8
    assert reasons == ["limited_budget"] * 7
    assert out["counts"]["limited"] == 7
    stats = read_json(qa_input.qa_stats(0))["teacher"]
    assert stats["gave_up"] == {"budget_reached": 7} and stats["estimated_cost_usd"] > 0


def test_the_daily_quota_is_a_limit_for_qa_asked_again_after_the_reset(tmp_path, qa_input, monkeypatch):
    with GeminiSimulator(port=0) as sim:
        out = _qa(tmp_path, sim, monkeypatch, teacher_rpd=3, batch_size=2, concurrency=1)
        requests = sim.stats()["requests"]
    assert requests == 3  # the project's day: not one request beyond it
    reasons = [e["reason"] for e in iter_jsonl(qa_input.qa_errors(0))]
    assert reasons == ["limited_daily_quota"] * 5 and out["counts"]["limited"] == 5
    assert (tmp_path / RUN_DATE / "qa" / "shard-00000.jsonl").exists()  # the shard is complete
    assert (tmp_path / RUN_DATE / "qa" / "_journal" / "shard-00000").exists()  # kept: a rerun asks for the 5
