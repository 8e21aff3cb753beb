"""Step 2 (sample_keys) and step 4 (publish) on a fabricated step-1 output."""

from __future__ import annotations

import base64
from collections import Counter

import pytest

from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.io import JsonlWriter, RunLayout, iter_json_records, iter_jsonl, list_files, read_json, write_json
from vlmprobe.publish.run import publish
from vlmprobe.sample.run import Reservoir, plan_shards, sample_keys

from fakes import RUN_DATE, fake_probe


def test_reservoir_is_uniform_and_seeded():
    counts = Counter()
    for seed in range(2000):
        res = Reservoir(2, seed)
        for i in range(6):
            res.add(i)
        counts.update(res.items)
    assert all(abs(c / 4000 - 1 / 6) < 0.03 for c in counts.values()), counts
    a, b = Reservoir(3, 42), Reservoir(3, 42)
    for i in range(100):
        a.add(i)
        b.add(i)
    assert a.items == b.items


def test_plan_shards():
    assert plan_shards(10, 4) == [{"shard_index": 0, "start": 0, "stop": 3, "count": 3},
                                  {"shard_index": 1, "start": 3, "stop": 6, "count": 3},
                                  {"shard_index": 2, "start": 6, "stop": 8, "count": 2},
                                  {"shard_index": 3, "start": 8, "stop": 10, "count": 2}]
    assert len(plan_shards(2, 8)) == 2  # never an empty shard
    assert plan_shards(0, 8) == []


def test_sample_keys_balances_and_plans(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 9, "count:3": 2, "shape:circle": 5})
    cfg = SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=4, num_shards=3, seed=1)
    result = sample_keys(cfg)
    kept = list(iter_jsonl(lay.sampled_failures()))
    assert Counter(r["failure_key"] for r in kept) == {"color:red": 4, "count:3": 2, "shape:circle": 4}
    assert result["counts"] == {"input_failures": 16, "sampled": 10, "over_cap": 6, "errors": 0, "keys": 3}
    plan = read_json(lay.shard_plan)
    assert [s["count"] for s in plan["shards"]] == [4, 3, 3] and result["num_shards"] == 3
    assert "image_b64" not in kept[0] and kept[0]["image"]["uri"].endswith(".parquet")
    # same seed, same sample; the rerun replaces the outputs
    sample_keys(cfg)
    assert list(iter_jsonl(lay.sampled_failures())) == kept


def test_sample_keys_json_format_with_embedded_images(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 3})
    # one record points at a row that does not exist: it becomes an error row, not a lost record
    with JsonlWriter(lay.probe_rank(1)) as w:
        w.write({"id": "ghost", "failure_key": "color:red", "image": {"uri": list_files(demo_parquet, ".parquet")[0],
                                                                         "row": 99999}})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=10, error_output_format="jsonl"))
    res = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=10,
                                   error_output_format="json", embed_images=True))
    assert not (tmp_path / RUN_DATE / "sample" / "failures.jsonl").exists()  # no stale other format
    kept = list(iter_json_records(lay.sampled_failures("json")))
    assert res["counts"]["sampled"] == len(kept) == 2 and res["counts"]["errors"] == 1
    assert base64.b64decode(kept[0]["image_b64"])[:4] == b"\x89PNG"
    (err,) = list(iter_jsonl(lay.sample_errors))
    assert err["id"] == "ghost" and err["reason"] == "image_unreadable"


def test_sample_keys_without_probe_output_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="probe"):
        sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE))


def _fake_qa(lay: RunLayout, plan: dict) -> None:
    for s in plan["shards"]:
        with JsonlWriter(lay.qa_shard(s["shard_index"])) as w:
            for i in range(s["count"] * 2):
                w.write({"id": str(i)})
        write_json(lay.qa_stats(s["shard_index"]), {
            "counts": {"failures": s["count"], "failures_with_items": s["count"], "errors": 0,
                       "items": s["count"] * 2, "items_dropped": 0},
            "tokens": {"prompt_tokens": 10, "output_tokens": 5}, "error_reasons": {}, "elapsed_s": 0.1})


def test_publish_writes_manifest_that_adds_up(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4, "count:2": 3})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    plan = read_json(lay.shard_plan)
    _fake_qa(lay, plan)
    out = publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    m = read_json(lay.manifest)
    assert out["qa_items"] == m["qa"]["counts"]["items"] == 14
    assert m["tokens"] == {"prompt_tokens": 1020, "output_tokens": 110}
    assert m["estimated_cost_usd"] == pytest.approx((1020 * 0.30 + 110 * 2.50) / 1e6)
    pc = m["probe"]["counts"]
    assert pc["rows"] == pc["passed"] + pc["verified"] + pc["rejected"] + pc["errors"]


def test_publish_refuses_a_missing_shard(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    plan = read_json(lay.shard_plan)
    _fake_qa(lay, {"shards": plan["shards"][:1]})
    with pytest.raises(RuntimeError, match="qa shard 1 has no complete output"):
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert not (tmp_path / RUN_DATE / "manifest.json").exists()
