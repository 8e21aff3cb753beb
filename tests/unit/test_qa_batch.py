"""QA in batch mode against the simulator: one job per shard, every failure ends as items or an error
row, only what failed is sent again, answers land on their own failure, the deadline sends the rest
online, a killed task's rerun creates no second job, and the batch is paid once."""

from __future__ import annotations

import asyncio
import collections
from types import SimpleNamespace

import pytest

from vlmprobe.config import QAConfig, SampleConfig
from vlmprobe.contracts import ShardPlan
from vlmprobe.io import RunLayout, iter_jsonl, read_json
from vlmprobe.qa.batch import request_key, shard_requests
from vlmprobe.qa.items import ShardQA, clean_items
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys
from vlmprobe.sim import GeminiSimulator
from vlmprobe.sim.answers import answer_text
from vlmprobe.sim.request import read_prompt
from vlmprobe.teacher.schemas import QASet
from fakes import RUN_DATE, crash_qa_shard_on, fake_probe

RETRYABLE = ("error_429", "error_500", "error_503", "malformed")


@pytest.fixture
def shard(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 12, "count:3": 12, "shape:circle": 12})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    return lay


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "batch-mode-test-key")

    def point_at(sim: GeminiSimulator) -> None:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)

    return point_at


def _cfg(tmp_path, **overrides) -> QAConfig:
    values = dict(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, qa_mode="batch", batch_poll_s=0.1,
                  concurrency=4, max_attempts=6)
    return QAConfig(**{**values, **overrides})


def _expected_items(cfg: QAConfig, sim: GeminiSimulator) -> dict[str, list[dict]]:
    """For every failure of the shard, by id: the items the simulator's answer to the batch request built
    from that very failure (its prompt, its image) gives. An answer attached to another failure differs."""
    from vlmprobe.qa.batch import batch_client

    class NoTeacher:
        genai_client = None
        retry = None

    lay = RunLayout(cfg.output_uri, cfg.run_date)
    shard = SimpleNamespace(plan=ShardPlan.read(lay.shard_plan), index=0, cfg=cfg, done={})  # nothing removed
    requests = shard_requests(shard, ShardQA(cfg, None))

    async def bodies():
        async with batch_client(cfg, NoTeacher(), api_key="unused") as batch:
            return await batch._prepare(requests)

    out = {}
    for key, prepared in asyncio.run(bodies()).items():
        prompt, _ = read_prompt(prepared.body)
        parsed = QASet.model_validate_json(answer_text(prepared.body, prompt, sim.seed, sim.verify_true_rate))
        kept, _ = clean_items(parsed.items)
        out[key.split("-", 1)[1]] = kept
    return out


def _items_by_failure(lay) -> dict[str, list[dict]]:
    fields = ("question", "answer", "answer_type", "choices", "rationale")
    items = collections.defaultdict(list)
    for item in iter_jsonl(lay.qa_shard(0)):
        items[item["failure_id"]].append({k: item[k] for k in fields})
    return items


def _runs_by_key(sim) -> dict[str, list[tuple[str, str]]]:
    runs = collections.defaultdict(list)
    for entry in sim.batch_log():
        runs[entry["key"].rsplit("#", 1)[0]].append((entry["job"], entry["outcome"]))
    return runs


def _check_counts(lay, count: int) -> dict:
    stats = read_json(lay.qa_stats(0))
    c = stats["counts"]
    assert c["failures"] == count == c["failures_with_items"] + c["errors"]
    assert c["items"] == sum(1 for _ in iter_jsonl(lay.qa_shard(0)))
    assert c["errors"] == sum(1 for _ in iter_jsonl(lay.qa_errors(0)))
    return stats


def test_a_batch_shard_writes_what_online_writes_and_each_answer_lands_on_its_failure(tmp_path, shard, env,
                                                                                      monkeypatch):
    from vlmprobe.teacher.quota import RunQuota

    spent = []
    real_add = RunQuota.add_spend
    monkeypatch.setattr(RunQuota, "add_spend",
                        lambda self, cost, usage: (spent.append(cost), real_add(self, cost, usage)))
    cfg = _cfg(tmp_path)
    with GeminiSimulator(port=0, seed=3) as sim:
        env(sim)
        out = run_shard(cfg)
        stats = _check_counts(shard, 36)
        expected = _expected_items(cfg, sim)
        batch_stats, online = sim.batch_stats(), sim.request_log()
    assert out["counts"]["items"] > 0 and batch_stats["jobs_created"] == 1 and online == []
    assert _items_by_failure(shard) == {fid: items for fid, items in expected.items() if items}
    teacher = stats["teacher"]
    tier = teacher["by_tier"]["batch"]
    assert tier["answers"] == 36 and tier["prompt_tokens"] == batch_stats["prompt_tokens"] == teacher["prompt_tokens"]
    assert tier["estimated_cost_usd"] > 0
    assert tier["estimated_cost_usd"] == pytest.approx(tier["standard_cost_usd"] / 2, rel=1e-3)
    assert teacher["batch"]["requests"] == 36 and teacher["batch"]["sent_online"] == {}
    # the batch is paid once, into the run's spend, when its job is collected
    assert sum(spent) == pytest.approx(tier["estimated_cost_usd"], abs=1e-6)
    # a journal-free rerun of the finished shard reads the kept results: no job, no download, no spend
    spent.clear()
    with GeminiSimulator(port=0, seed=3) as sim:
        env(sim)
        run_shard(cfg)
        assert sim.batch_stats()["jobs_created"] == 0 and sim.request_log() == []
    assert _items_by_failure(shard) == {fid: items for fid, items in expected.items() if items} and sum(spent) == 0


def test_shuffled_results_with_failed_requests_and_an_expired_job_lose_nothing_and_resend_only_failures(
        tmp_path, shard, env):
    cfg = _cfg(tmp_path)
    with GeminiSimulator(port=0, seed=15, batch_shuffle=True, batch_error_rate=0.1, batch_expire=1,
                         rate_safety=0.08) as sim:
        env(sim)
        run_shard(cfg)
        stats = _check_counts(shard, 36)
        expected = _expected_items(cfg, sim)
        runs, order = _runs_by_key(sim), list(dict.fromkeys(e["job"] for e in sim.batch_log()))
        batch_stats, online = sim.batch_stats(), sim.request_log()
    keys = set(expected)
    assert batch_stats["jobs_by_state"]["BATCH_STATE_EXPIRED"] == 1 and len(order) >= 2
    # the expired job ran nothing; the next one ran every request; each later job ran exactly the
    # requests that failed, retryably, in the one before
    assert {k.split("-", 1)[1] for k, r in runs.items() if r[0][0] == order[0]} == keys
    for earlier, later in zip(order, order[1:]):
        failed = {k for k, r in runs.items() if any((earlier, o) in r for o in RETRYABLE)}
        assert {k for k, r in runs.items() if any(j == later for j, _ in r)} == failed
    assert all(sum(o == "ok" for _, o in r) <= 1 for r in runs.values())  # nothing answered is asked again
    # what the jobs did not answer went online, and only that
    sent_online = stats["teacher"]["batch"]["sent_online"]
    last_failed = {k for k, r in runs.items() if r[-1][1] in RETRYABLE}
    assert len(online) == sum(sent_online.values()) == len(last_failed) > 0  # seed 15: one goes online
    # every failure ended as items or an error row; content verdicts are error rows
    errors = {e["id"]: e["reason"] for e in iter_jsonl(shard.qa_errors(0))}
    safety = {k.split("-", 1)[1] for k, r in runs.items() if r[-1][1] == "safety"}
    assert safety and {errors[i] for i in safety} == {"teacher_finish_safety"}
    items = _items_by_failure(shard)
    assert set(items) | set(errors) == keys and not set(items) & set(errors)
    # no answer is attached to another failure: each batch-answered failure has the items of its own request
    answered = {k.split("-", 1)[1] for k, r in runs.items() if r[-1][1] == "ok"}
    assert answered and all(items.get(fid, []) == expected[fid] for fid in answered)


def test_a_job_pending_past_the_deadline_is_cancelled_and_the_shard_finishes_online(tmp_path, shard, env):
    cfg = _cfg(tmp_path, batch_deadline_h=0.0003, batch_poll_s=0.2)  # about a second
    with GeminiSimulator(port=0, batch_stay_pending=True) as sim:
        env(sim)
        run_shard(cfg.model_copy(update={"qa_phase": "submit"}))
        assert sim.batch_stats()["jobs_by_state"] == {"BATCH_STATE_PENDING": 1}
        run_shard(cfg.model_copy(update={"qa_phase": "all"}))
        batch_stats, online = sim.batch_stats(), sim.request_log()
    stats = _check_counts(shard, 36)
    assert batch_stats["cancels"] == 1 and batch_stats["jobs_by_state"] == {"BATCH_STATE_CANCELLED": 1}
    assert batch_stats["jobs_created"] == 1 and len(online) == 36
    assert stats["teacher"]["batch"]["sent_online"] == {"deadline": 36}
    assert stats["counts"]["failures_with_items"] == 36 and stats["teacher"]["by_tier"]["batch"]["answers"] == 0


def test_the_dag_s_parts_a_killed_collect_and_a_cleared_submit_create_one_job_and_the_same_items(
        tmp_path, shard, env, monkeypatch):
    cfg = _cfg(tmp_path)
    with GeminiSimulator(port=0, seed=5, batch_pending_s=0.3) as sim:
        env(sim)
        submitted = run_shard(cfg.model_copy(update={"qa_phase": "submit"}))
        assert submitted["requests"] == 36 and list(submitted["jobs"].values()) == ["JOB_STATE_PENDING"]
        run_shard(cfg.model_copy(update={"qa_phase": "submit"}))  # a cleared submit finds its job
        collect = cfg.model_copy(update={"qa_phase": "collect"})
        undo = crash_qa_shard_on(monkeypatch, 10)  # the pod dies while it writes the shard's answers
        with pytest.raises(RuntimeError, match="pod evicted"):
            run_shard(collect)
        undo()
        run_shard(collect)
        expected = _expected_items(cfg, sim)
        batch_stats, online = sim.batch_stats(), sim.request_log()
    stats = _check_counts(shard, 36)
    assert batch_stats["jobs_created"] == 1 and batch_stats["files_uploaded"] == 1 and online == []
    assert stats["counts"]["resumed"] > 0
    assert _items_by_failure(shard) == {fid: items for fid, items in expected.items() if items}


def test_online_mode_submits_nothing_and_a_spent_budget_submits_no_job(tmp_path, shard, env):
    with GeminiSimulator(port=0) as sim:
        env(sim)
        out = run_shard(_cfg(tmp_path, qa_mode="online", qa_phase="submit"))
        assert out["requests"] == 0 and sim.stats()["requests"] == 0
        assert not (tmp_path / RUN_DATE / "qa" / "_batch").exists()
        budget = _cfg(tmp_path, max_cost_usd=1e-9)
        run_shard(budget.model_copy(update={"qa_mode": "online", "qa_phase": "all", "concurrency": 1,
                                            "no_async": True}))  # spends past the tiny budget
        run_shard(budget)
        assert sim.batch_stats()["jobs_created"] == 0
    errors = list(iter_jsonl(shard.qa_errors(0)))
    assert errors and {e["reason"] for e in errors} == {"limited_budget"}  # a limit, not a teacher error


def test_request_keys_name_place_and_failure():
    assert request_key(7, {"id": "color:red-3"}) == "000007-color:red-3"
