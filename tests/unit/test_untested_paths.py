"""Paths no test went through before (issue 15): an OpenAI-compatible target through the probe, publish
refusing counts that do not add up, an oversized sample record."""

from __future__ import annotations

import json

import pytest

from vlmprobe.config import ProbeConfig, PublishConfig, SampleConfig
from vlmprobe.contracts import ProbeSuccess, QACounts, ShardPlan
from vlmprobe.io import JsonlWriter, exists, iter_jsonl, read_json
from vlmprobe.publish.run import publish
from vlmprobe.sample.run import sample_keys
from fakes import RUN_DATE, SIM_PLAN, fake_probe, fake_qa_stats, fake_success
from fakes import chat_server as fake_chat_server


# -- an OpenAI-compatible target (e.g. vllm serve) through the probe ---------------------------------

def _pick_last_option(text: str) -> str:
    """The fake server's answer: the last option when the prompt lists some, else "2"."""
    options = next((line for line in text.splitlines() if line.startswith("Options: ")), None)
    return options.removeprefix("Options: ").rstrip(".").split(", ")[-1] if options else "2"


@pytest.fixture
def chat_server():
    with fake_chat_server(_pick_last_option) as served:
        yield served


def test_the_probe_with_an_openai_compatible_target(tmp_path, demo_parquet, chat_server, gemini_sim, monkeypatch):
    from vlmprobe.probe.run import main

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    base_url, requests = chat_server
    spec = f"openai:{base_url}#llava-served"
    cfg = ProbeConfig(input_uri=demo_parquet, output_uri=str(tmp_path), run_date=RUN_DATE, target_model=spec,
                      failure_batch_size=8, concurrency=4, max_new_tokens=5, **SIM_PLAN)
    success = read_json(main(cfg)["success_uri"])
    c = success["counts"]
    assert c["rows"] == 48 == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    # every readable row went to the server once (the demo's two bad rows never do), greedily, as asked
    bodies = [body for _, _, body in requests]
    assert len(bodies) == 46 and "target_error" not in success["error_reasons"]
    assert all(b["model"] == "llava-served" and b["max_tokens"] == 5 and b["temperature"] == 0 for b in bodies)
    assert 0 < c["passed"] < 46 and c["wrong"] > 0  # "2" and the last option are right for some rows only
    failures = list(iter_jsonl(success["failure_files"][0]))
    assert len(failures) == c["verified"] > 0
    assert all(f["target_model"] == spec and f["prediction"] for f in failures)
    assert success["target_model"] == spec and success["target_revision"] is None


# -- publish refuses counts that do not add up ---------------------------------------------------------

def _published_run(tmp_path, demo_parquet):
    """probe (fabricated), sample_keys (real), one QA shard's output and stats (fabricated, consistent)."""
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4, "count:3": 3})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    (shard,) = ShardPlan.read(lay.shard_plan).shards
    with JsonlWriter(lay.qa_shard(0)) as w:
        for k in range(2 * shard.count):
            w.write({"id": f"item-{k}"})
    counts = QACounts(failures=shard.count, failures_with_items=shard.count, errors=0, items=2 * shard.count,
                      items_generated=2 * shard.count, items_dropped=0, items_checked=0, items_target_failed=0,
                      items_dropped_target_passed=0, items_check_errors=0, resumed=0)
    fake_qa_stats(lay, 0, counts)
    return lay, counts


def test_publish_publishes_a_consistent_run_with_the_probe_s_oom_halvings(tmp_path, demo_parquet):
    lay, _ = _published_run(tmp_path, demo_parquet)
    success = ProbeSuccess.read(lay.probe_success)
    success.oom_halvings = 3  # the ranks' halvings, summed by the probe
    success.write(lay.probe_success)
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    manifest = read_json(lay.manifest)
    assert manifest["qa"]["counts"]["items"] == 14  # the baseline the refusals below break
    assert manifest["probe"]["oom_halvings"] == 3


def test_publish_refuses_a_sample_that_is_not_the_probe_s_verified_failures(tmp_path, demo_parquet):
    lay, _ = _published_run(tmp_path, demo_parquet)
    success = ProbeSuccess.read(lay.probe_success)
    c = success.counts
    # the probe now claims one more verified failure than sample_keys read (its counts still add up)
    fake_success(lay, success.failure_files, verified=c.verified + 1, input_files=success.input_files)
    with pytest.raises(RuntimeError, match=rf"refusing to publish {RUN_DATE}:\n- sample_keys read 7 failures, "
                                           r"probe verified 8$"):
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert not exists(lay.manifest)


def test_publish_refuses_items_on_disk_that_are_not_the_stats(tmp_path, demo_parquet):
    lay, counts = _published_run(tmp_path, demo_parquet)
    with JsonlWriter(lay.qa_shard(0)) as w:  # a shard file cut short (13 of 14 items)
        for k in range(counts.items - 1):
            w.write({"id": f"item-{k}"})
    with pytest.raises(RuntimeError, match=r"- qa shard 0: 13 items on disk, stats \{.*'items': 14"):
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert not exists(lay.manifest)


# -- an oversized sample record -------------------------------------------------------------------------------

def test_an_oversized_failure_record_is_an_error_row_and_the_others_are_sampled(tmp_path, demo_parquet):
    from vlmprobe.sample.select import MAX_LINE

    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 6, "count:3": 4}, ranks=1)
    records = list(iter_jsonl(lay.probe_rank(0)))
    big = {**records[0], "id": "huge", "meta": {"caption": "x" * MAX_LINE}}  # one line of more than 16 MiB
    with JsonlWriter(lay.probe_rank(0)) as w:
        for rec in [*records[:3], big, *records[3:]]:
            w.write(rec)
    success = ProbeSuccess.read(lay.probe_success)
    fake_success(lay, success.failure_files, verified=len(records) + 1, input_files=success.input_files)
    plan = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    counts = plan["counts"]
    assert counts["input_failures"] == 11 and counts["bad_records"] == counts["errors"] == 1
    assert counts["sampled"] == 10  # the others, untouched
    (row,) = iter_jsonl(lay.sample_errors)
    assert row["reason"] == "bad_record" and row["id"] == "huge" and row["line"] == 4
    assert row["detail"] == f"a {len(json.dumps(big))}-byte record; the limit is {MAX_LINE - 1}"
    assert "huge" not in {r["id"] for r in iter_jsonl(ShardPlan.read(lay.shard_plan).failures_uri)}
