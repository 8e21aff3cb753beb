"""The QA step's target check on the tiny LLaVA: each item put to the target, qa_keep both ways, refused settings."""

from __future__ import annotations

import pytest

from vlmprobe.config import QAConfig, SampleConfig
from vlmprobe.errors import UsageError
from vlmprobe.io import exists, iter_jsonl, read_json, write_json
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys
from fakes import RUN_DATE, crash_qa_shard_on, fake_probe


@pytest.fixture
def one_shard(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:3": 4, "shape:circle": 3})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    return lay


def _qa(tmp_path, **options):
    return run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, concurrency=4, **options))


def test_every_item_is_put_to_the_target_and_qa_keep_picks_what_is_written(tmp_path, one_shard, answering_llava,
                                                                            gemini_sim):
    lay = one_shard
    everything = _qa(tmp_path, qa_target_check="on", target_model=answering_llava, max_new_tokens=4)
    items = list(iter_jsonl(lay.qa_shard(0)))
    c = read_json(lay.qa_stats(0))["counts"]
    assert items and c["items"] == c["items_generated"] == c["items_checked"] == len(items) == everything["counts"]["items"]
    assert all(isinstance(it["target_answer"], str) and isinstance(it["target_correct"], bool) for it in items)
    assert all(it["target_model"] == answering_llava for it in items)
    assert any(it["choices"] for it in items)  # items the check below applies to exist
    for it in items:  # the target picks an option where the item has them, judged against the item's answer
        if it["choices"]:
            assert it["target_answer"] in it["choices"]
            assert it["target_correct"] == (it["target_answer"] == it["answer"])
    failed = [it for it in items if not it["target_correct"]]
    assert c["items_target_failed"] == len(failed) and 0 < len(failed) < len(items)  # the tiny model gets some right
    assert read_json(lay.qa_stats(0))["target_check"]["enabled"] is True

    # the same shard with qa_keep=target_failed: the same items (same teacher answers), the passed ones dropped
    kept = _qa(tmp_path, qa_target_check="on", qa_keep="target_failed", target_model=answering_llava, max_new_tokens=4)
    only_failed = list(iter_jsonl(lay.qa_shard(0)))
    c = read_json(lay.qa_stats(0))["counts"]
    assert [it["id"] for it in only_failed] == [it["id"] for it in failed] and kept["counts"]["items"] == len(failed)
    assert c["items_dropped_target_passed"] == len(items) - len(failed) == c["items_checked"] - c["items"]
    assert c["failures"] == c["failures_with_items"] + c["errors"]  # failures are still all accounted for


def test_a_resumed_shard_checks_its_journalled_items_too(tmp_path, one_shard, tiny_llava, monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    monkeypatch.setenv("GEMINI_API_KEY", "k")
    options = dict(qa_target_check="on", target_model=tiny_llava, max_new_tokens=2, concurrency=1, no_async=True)
    with GeminiSimulator(port=0, seed=4) as sim:
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        undo = crash_qa_shard_on(monkeypatch, 6)
        with pytest.raises(RuntimeError, match="pod evicted"):
            run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, **options))
        undo()
        out = run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, **options))
    c = out["counts"]
    assert c["resumed"] == 5 and c["items_checked"] == c["items"] > 0
    assert all(isinstance(it["target_correct"], bool) for it in iter_jsonl(one_shard.qa_shard(0)))


def test_auto_without_a_gpu_skips_the_check(tmp_path, one_shard, gemini_sim):
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto turns the check on where CUDA is available")
    _qa(tmp_path)  # qa_target_check=auto, the default
    items = list(iter_jsonl(one_shard.qa_shard(0)))
    stats = read_json(one_shard.qa_stats(0))
    assert items and not any("target_answer" in it for it in items)
    assert stats["target_check"]["enabled"] is False and stats["counts"]["items_checked"] == 0


def test_settings_that_cannot_work_are_refused_before_anything_changes(tmp_path, one_shard, monkeypatch, gemini_sim):
    from vlmprobe.qa import target_check

    write_json(one_shard.manifest, {"earlier": "publish"})
    with pytest.raises(UsageError, match="qa_keep=target_failed .* the target check is off"):
        _qa(tmp_path, qa_target_check="off", qa_keep="target_failed")
    # the QA image has only the `qa` extra: no torch, no transformers
    real = target_check.importlib.util.find_spec
    monkeypatch.setattr(target_check.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "transformers") else real(name, *a))
    with pytest.raises(UsageError, match="qa_target_check=on needs torch and transformers") as caught:
        _qa(tmp_path, qa_target_check="on")
    assert caught.value.exit_code == 2 and "qa_target_check=off" in str(caught.value)
    assert exists(one_shard.manifest) and gemini_sim.stats()["requests"] == 0
