"""Step 3 against the Gemini simulator: items, error rows, pacing modes, reruns."""

from __future__ import annotations

import pytest

from vlmprobe.config import QAConfig, SampleConfig
from vlmprobe.io import JsonlWriter, iter_jsonl, list_files, read_json
from vlmprobe.qa.run import clean_items, run_shard
from vlmprobe.sample.run import sample_keys
from vlmprobe.teacher.schemas import QAPair
from fakes import RUN_DATE, fake_probe


def _setup(tmp_path, demo_parquet, embed=False):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:3": 4})
    # one failure points past the end of its file: it must come out as an error row
    with JsonlWriter(lay.probe_rank(1)) as w:
        w.write({"id": "ghost", "failure_key": "size:big", "image": {"uri": list_files(demo_parquet, ".parquet")[0],
                                                                       "row": 5000},
                 "question": "q", "answer": "a", "prediction": "b", "factor": {"completion": "c"}})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2, embed_images=embed))
    return lay


@pytest.mark.parametrize("no_async", [False, True])
def test_shard_writes_items_and_error_rows(tmp_path, demo_parquet, gemini_sim, no_async):
    lay = _setup(tmp_path, demo_parquet)
    plan = read_json(lay.shard_plan)
    total_items = 0
    for shard in plan["shards"]:
        out = run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=shard["shard_index"],
                                 concurrency=4, batch_size=3, no_async=no_async))
        items = list(iter_jsonl(lay.qa_shard(shard["shard_index"])))
        errors = list(iter_jsonl(lay.qa_errors(shard["shard_index"])))
        stats = read_json(lay.qa_stats(shard["shard_index"]))
        c = stats["counts"]
        assert c["failures"] == shard["count"] == c["failures_with_items"] + c["errors"]
        assert out["counts"]["items"] == len(items) == c["items"]
        assert len(errors) == c["errors"]
        total_items += len(items)
        for it in items:
            assert it["answer_type"] in ("yes_no", "multiple_choice", "open")
            if it["answer_type"] == "multiple_choice":
                assert it["answer"] in it["choices"]
            if it["answer_type"] == "yes_no":
                assert it["answer"] in ("yes", "no")
            assert it["failure_id"] and it["image"]["uri"].endswith(".parquet")
    assert total_items > 0
    all_errors = [e for s in plan["shards"] for e in iter_jsonl(lay.qa_errors(s["shard_index"]))]
    assert any(e["id"] == "ghost" and e["reason"] == "image_unreadable" for e in all_errors)


def test_retries_through_faults_and_gives_up_with_a_reason(tmp_path, demo_parquet, monkeypatch):
    from vlmprobe.sim.server import GeminiSimulator

    lay = _setup(tmp_path, demo_parquet, embed=True)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with GeminiSimulator(port=0, rate_429=0.3, retry_delay_s=0.01, rate_503=0.2, rate_malformed=0.2, seed=5) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        cfg = dict(output_uri=str(tmp_path), run_date=RUN_DATE, concurrency=8)
        run_shard(QAConfig(shard_index=0, max_attempts=8, **cfg))
        faults = sim.stats()["by_status"]
    stats = read_json(lay.qa_stats(0))
    assert stats["counts"]["failures_with_items"] == stats["counts"]["failures"]  # the retries got through
    assert stats["teacher"]["retries"] > 0 and faults.get("429", 0) > 0
    with GeminiSimulator(port=0, rate_503=1.0, seed=5) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        run_shard(QAConfig(shard_index=0, max_attempts=2, **cfg))
    errors = list(iter_jsonl(lay.qa_errors(0)))
    assert len(errors) == read_json(lay.shard_plan)["shards"][0]["count"]
    assert {e["reason"] for e in errors} == {"teacher_http_503"}
    assert list(iter_jsonl(lay.qa_shard(0))) == []  # the rerun replaced the earlier items


def test_unknown_shard_is_refused(tmp_path, demo_parquet, gemini_sim):
    _setup(tmp_path, demo_parquet)
    with pytest.raises(ValueError, match="shard 7 does not exist"):
        run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=7))


def test_clean_items_keeps_consistent_pairs():
    items = [
        QAPair(answer_type="yes_no", choices=[], question="Is it red?", answer="Yes.", rationale="r"),
        QAPair(answer_type="yes_no", choices=[], question="Is it red?", answer="maybe", rationale="r"),
        QAPair(answer_type="multiple_choice", choices=["red", "blue"], question="Color?", answer="Blue", rationale="r"),
        QAPair(answer_type="multiple_choice", choices=["red", "blue"], question="Color?", answer="green", rationale="r"),
        QAPair(answer_type="open", choices=["x"], question="How many?", answer="3", rationale="r"),
    ]
    kept, dropped = clean_items(items)
    assert [(k["answer_type"], k["answer"], k["choices"]) for k in kept] == [
        ("yes_no", "yes", ["yes", "no"]), ("multiple_choice", "blue", ["red", "blue"]), ("open", "3", [])]
    assert len(dropped) == 2


def test_a_retried_shard_resumes_from_its_checkpoint(tmp_path, demo_parquet, monkeypatch):
    from vlmprobe.qa import run as qa_run
    from vlmprobe.sim.server import GeminiSimulator

    lay = _setup(tmp_path, demo_parquet)
    shard = read_json(lay.shard_plan)["shards"][0]
    assert shard["count"] >= 3
    cfg = dict(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, batch_size=1, concurrency=2)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    real_batch = qa_run.ShardQA.batch
    calls = {"n": 0}

    async def crash_on_third_batch(self, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("pod evicted")
        return await real_batch(self, records)

    with GeminiSimulator(port=0, seed=2) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        monkeypatch.setattr(qa_run.ShardQA, "batch", crash_on_third_batch)
        with pytest.raises(RuntimeError, match="pod evicted"):
            run_shard(QAConfig(**cfg))
        assert not (tmp_path / RUN_DATE / "qa" / "shard-00000.jsonl").exists()
        first = sim.stats()["requests"]
        monkeypatch.setattr(qa_run.ShardQA, "batch", real_batch)
        resumed = run_shard(QAConfig(**cfg))
        second = sim.stats()["requests"] - first
    c = resumed["counts"]
    assert c["resumed"] == 2  # the two batches finished before the crash were not asked again
    assert c["failures"] == shard["count"] == c["failures_with_items"] + c["errors"]
    items = list(iter_jsonl(lay.qa_shard(0)))
    assert len(items) == c["items"] and len({i["id"] for i in items}) == len(items)  # nothing twice
    assert not (tmp_path / RUN_DATE / "qa" / "_checkpoint-00000").exists()

    # a checkpoint left by other settings is another job: discarded, not mixed in
    calls["n"] = 0
    monkeypatch.setattr(qa_run.ShardQA, "batch", crash_on_third_batch)
    with GeminiSimulator(port=0, seed=2) as sim, pytest.raises(RuntimeError, match="pod evicted"):
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        run_shard(QAConfig(**cfg))
    monkeypatch.setattr(qa_run.ShardQA, "batch", real_batch)
    assert (tmp_path / RUN_DATE / "qa" / "_checkpoint-00000" / "batch-00001.jsonl").exists()
    with GeminiSimulator(port=0, seed=2) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        fresh = run_shard(QAConfig(**{**cfg, "batch_size": 3}))
        everything = sim.stats()["requests"]
    assert fresh["counts"]["resumed"] == 0
    assert first + second == everything and 0 < second < everything  # the retry asked only for the rest
    assert fresh["counts"]["items"] == c["items"]
