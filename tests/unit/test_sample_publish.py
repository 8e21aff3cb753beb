"""Step 2 (sample_keys) and step 4 (publish) on a fabricated step-1 output."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter

import pytest

from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.contracts import QACounts, QAShardSpan, ShardPlan
from vlmprobe.errors import InputError
from vlmprobe.io import JsonlWriter, RunLayout, iter_json_records, iter_jsonl, list_files, read_json
from vlmprobe.publish.run import publish
from vlmprobe.sample.run import sample_keys
from vlmprobe.sample.select import KeySampler
from vlmprobe.sample.shards import iter_shard_records, plan_shards

from fakes import RUN_DATE, fake_probe, fake_qa_stats, fake_success


def _sampled(sampler: KeySampler, key: str) -> list[int]:
    return [c.offset for k, c in sampler.selection().candidates() if k == key]


def test_bottom_k_is_uniform_over_seeds_and_ignores_arrival_order():
    counts: Counter[int] = Counter()
    for seed in range(3000):
        s = KeySampler(2)
        for i in range(6):
            s.add("k:v", random.Random(seed * 100 + i).getrandbits(48), 0, 0, i, 1)
        counts.update(_sampled(s, "k:v"))
    assert all(abs(c / 6000 - 1 / 6) < 0.03 for c in counts.values()), counts
    items = [(random.Random(i).getrandbits(48), i) for i in range(500)]
    picks = []
    for order in range(3):
        s = KeySampler(7, slack=3)  # a small slack makes it compact (and evict) many times
        shuffled = items[:]
        random.Random(order).shuffle(shuffled)
        for h, i in shuffled:
            s.add("k:v", h, 0, 0, i, 1)
        picks.append(sorted(_sampled(s, "k:v")))
    assert picks[0] == picks[1] == picks[2] == sorted(i for _, i in sorted(items)[:7])


def test_duplicates_are_kept_once_and_every_record_is_counted():
    s = KeySampler(3, slack=1)
    hashes = [10, 20, 30, 40, 50]
    stream = [(h, i) for i, h in enumerate(hashes)] + [(20, 90), (20, 91), (50, 92), (10, 93)]
    random.Random(4).shuffle(stream)
    for h, off in stream:
        s.add("k:v", h, off, 0, off, 1)
    sel = s.selection()
    kept = [c.hash for _, c in sel.candidates()]
    assert kept == [10, 20, 30]
    assert sel.duplicates("k:v") == 3  # the extra copies of 10 and 20 (twice)
    assert sel.over_cap["k:v"] == 3  # 40, 50 and 50's copy
    assert sel.seen["k:v"] == len(stream) == len(kept) + 3 + 3


def test_plan_shards_balances_estimated_tokens_and_carries_byte_ranges():
    weights = [100] * 6 + [600, 600]  # two heavy records at the end
    starts = [i * 10 for i in range(8)]
    stops = [s + 9 for s in starts]
    shards = plan_shards(weights, starts, stops, 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 6), (6, 7), (7, 8)]
    assert [s.estimated_tokens for s in shards] == [600, 600, 600]
    assert shards[1].byte_start == 60 and shards[1].byte_stop == 69
    assert len(plan_shards([5, 5], [0, 1], [1, 2], 8)) == 2  # never an empty shard
    assert plan_shards([], [], [], 8) == []


def test_sample_keys_balances_and_plans(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 9, "count:3": 2, "shape:circle": 5})
    cfg = SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=4, num_shards=3, seed=1)
    result = sample_keys(cfg)
    kept = list(iter_jsonl(lay.sampled_failures()))
    assert Counter(r["failure_key"] for r in kept) == {"color:red": 4, "count:3": 2, "shape:circle": 4}
    c = result["counts"]
    assert (c["input_failures"], c["sampled"], c["over_cap"], c["errors"], c["keys"]) == (16, 10, 6, 0, 3)
    plan = read_json(lay.shard_plan)
    assert [s["count"] for s in plan["shards"]] and sum(s["count"] for s in plan["shards"]) == 10
    assert result["num_shards"] == 3 and plan["keys_per_category"]["color"] == {
        "keys": 1, "keys_kept": 1, "failures": 9, "kept": 4}
    assert plan["per_key"]["color:red"]["over_cap"] == 5
    assert "image_b64" not in kept[0] and kept[0]["image"]["uri"].endswith(".parquet")
    # each shard reads exactly its own records, in order
    shard_plan = ShardPlan.read(lay.shard_plan)
    assert [r for s in shard_plan.shards for r in iter_shard_records(shard_plan, s.shard_index)] == kept
    # same seed, same sample; the rerun replaces the outputs
    sample_keys(cfg)
    assert list(iter_jsonl(lay.sampled_failures())) == kept


def _probe_records(per_key: dict[str, int]) -> list[dict]:
    out = []
    for key, n in per_key.items():
        for i in range(n):
            out.append({"id": f"{key}-{i}", "failure_key": key, "image": {"uri": f"/in/part-{i % 3}.parquet", "row": i},
                        "question": "How many?" * (1 + i % 4), "answer": "3", "prediction": "4",
                        "factor": {"category": key.split(":")[0], "completion": f"c {key}"}})
    return out


def _write_probe(out: str, records: list[dict], ranks: int) -> RunLayout:
    lay = RunLayout(out, RUN_DATE)
    for r in range(ranks):
        with JsonlWriter(lay.probe_rank(r)) as w:
            for rec in records[r::ranks]:
                w.write({**rec, "rank": r})  # where it was computed: must not reach the sample
    fake_success(lay, [lay.probe_rank(r) for r in range(ranks)], verified=len(records))
    return lay


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_same_seed_and_input_give_a_byte_identical_sample_whatever_the_order(tmp_path, fmt):
    records = _probe_records({"count:circle": 30, "color:red_square": 7, "shape:triangle": 12, "size:dot": 1})
    outputs = []
    for n, (ranks, shuffle_seed) in enumerate([(1, None), (3, 1), (2, 2)]):
        recs = records[:]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(recs)
        out = str(tmp_path / f"run{n}")
        lay = _write_probe(out, recs, ranks)
        sample_keys(SampleConfig(output_uri=out, run_date=RUN_DATE, samples_per_key=5, seed=7, num_shards=3,
                                 error_output_format=fmt))
        outputs.append((tmp_path / f"run{n}" / RUN_DATE / "sample" / f"failures.{fmt}").read_bytes())
        assert all("rank" not in r for r in iter_json_records(lay.sampled_failures(fmt)))
    assert outputs[0] == outputs[1] == outputs[2]
    lay = _write_probe(str(tmp_path / "other-seed"), records, 1)
    sample_keys(SampleConfig(output_uri=str(tmp_path / "other-seed"), run_date=RUN_DATE, samples_per_key=5, seed=8,
                             error_output_format=fmt))
    assert (tmp_path / "other-seed" / RUN_DATE / "sample" / f"failures.{fmt}").read_bytes() != outputs[0]


@pytest.mark.parametrize("record", [
    {"id": "a", "failure_key": "k:v", "q": "what \"rank\"?"},  # no rank field: the line is copied
    {"id": "a", "failure_key": "k:v", "rank": 3, "meta": {"x": 1}},  # one top-level rank: cut out
    {"id": "a", "failure_key": "k:v", "rank": 3, "meta": {"rank": 7}},  # a column named rank too: re-encoded
    {"rank": 12, "id": "a", "failure_key": "k:v"},
])
def test_the_sampled_line_is_the_record_without_its_rank(record):
    from vlmprobe.sample.embed import record_line
    from vlmprobe.sample.run import _copy_mode, _output_line

    line = record_line(record)
    want = record_line({k: v for k, v in record.items() if k != "rank"})
    assert _output_line(line, _copy_mode(record, line)) == want


def test_duplicates_caps_and_rare_keys_are_counted_and_reported(tmp_path):
    records = _probe_records({"count:circle": 20, "count:square": 20, "count:star": 2, "color:red": 3})
    dup = dict(records[42], id="again")  # color:red, same image: one failure seen three times
    lay = _write_probe(str(tmp_path), records + [dup, dict(dup)], 2)
    res = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=10, seed=3,
                                   min_per_key=3, max_per_category=12))
    c = res["counts"]
    kept = Counter(r["failure_key"] for r in iter_jsonl(lay.sampled_failures()))
    # count:star has 2 distinct failures < min_per_key; count is capped at 12, spread over its two keys
    assert kept == {"count:circle": 6, "count:square": 6, "color:red": 3}
    plan = read_json(lay.shard_plan)
    assert plan["keys_below_min_per_key"] == {"count:star": 2}
    assert c["below_min_per_key"] == 2 and c["over_category_cap"] == 8 and c["over_cap"] == 20
    assert c["duplicates"] == 2 and plan["per_key"]["color:red"]["duplicates"] == 2
    total = sum(c[k] for k in ("sampled", "errors", "over_cap", "duplicates", "below_min_per_key", "over_category_cap"))
    assert total == c["input_failures"] == len(records) + 2
    red = [r["image"]["row"] for r in iter_jsonl(lay.sampled_failures()) if r["failure_key"] == "color:red"]
    assert sorted(red) == [0, 1, 2]  # the image seen three times is in the sample once


def test_min_per_key_above_the_cap_is_refused():
    with pytest.raises(ValueError, match="min_per_key"):
        SampleConfig(output_uri="/x", run_date=RUN_DATE, samples_per_key=2, min_per_key=3)


def test_a_record_without_failure_key_is_an_error_row_naming_file_and_line(tmp_path):
    records = _probe_records({"count:circle": 30})
    lay = _write_probe(str(tmp_path), records, 1)
    with open(lay.probe_rank(0), "a") as f:
        f.write('{"id": "nokey", "question": "q"}\n')
        f.write("not json at all\n")
    res = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    errors = list(iter_jsonl(lay.sample_errors))
    assert [(e["reason"], e["line"]) for e in errors] == [("bad_record", 31), ("bad_record", 32)]
    assert all(e["file"] == lay.probe_rank(0) for e in errors) and "failure_key" in errors[0]["detail"]
    assert "rank-00000.jsonl line 32 is not JSON" in errors[1]["detail"]
    assert res["counts"]["errors"] == 2 and res["counts"]["sampled"] == 30


def test_more_bad_records_than_max_error_rate_fail_the_step_with_the_rows_kept(tmp_path):
    lay = _write_probe(str(tmp_path), _probe_records({"count:circle": 3}), 2)
    with open(lay.probe_rank(1), "a") as f:
        f.write('{"id": "x", "failure_key": \n')
    with pytest.raises(InputError, match="rank-00001.jsonl line 2 is not JSON"):
        sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE))  # 1 of 4 > 10%
    assert [e["line"] for e in iter_jsonl(lay.sample_errors)] == [2]  # the error rows are there to read
    assert not (tmp_path / RUN_DATE / "sample" / "shards.json").exists()  # no plan: QA cannot start on it
    res = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, max_error_rate=0.5))
    assert res["counts"]["errors"] == 1 and res["counts"]["sampled"] == 3


def test_a_shard_reads_only_its_byte_range(tmp_path):
    lay = _write_probe(str(tmp_path), _probe_records({"count:circle": 9, "color:red": 9}), 1)
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=9, num_shards=3))
    plan = ShardPlan.read(lay.shard_plan)
    path = tmp_path / RUN_DATE / "sample" / "failures.jsonl"
    data = bytearray(path.read_bytes())
    last = plan.shards[2]
    want = list(iter_shard_records(plan, 1))
    # bytes outside shard 1's range are garbage now: shard 1 never reads them
    data[: plan.shards[1].byte_start] = b"x" * plan.shards[1].byte_start
    data[last.byte_start:] = b"y" * (len(data) - last.byte_start)
    path.write_bytes(bytes(data))
    assert list(iter_shard_records(plan, 1)) == want and len(want) == plan.shards[1].count
    with pytest.raises(ValueError, match="rerun sample_keys"):
        list(iter_shard_records(plan, 2))
    with pytest.raises(ValueError, match="does not exist"):
        list(iter_shard_records(plan, 3))


def test_sample_keys_json_format_with_embedded_images(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 3})
    # one record points at a row that does not exist: it becomes an error row, not a lost record
    with JsonlWriter(lay.probe_rank(1)) as w:
        w.write({"id": "ghost", "failure_key": "color:red", "image": {"uri": list_files(demo_parquet, ".parquet")[0],
                                                                         "row": 99999}})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=10, error_output_format="jsonl"))
    res = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, samples_per_key=10,
                                   error_output_format="json", embed_images=True, num_shards=2))
    assert not (tmp_path / RUN_DATE / "sample" / "failures.jsonl").exists()  # no stale other format
    kept = list(iter_json_records(lay.sampled_failures("json")))
    assert res["counts"]["sampled"] == len(kept) == 2 and res["counts"]["errors"] == 1
    assert base64.b64decode(kept[0]["image_b64"])[:4] == b"\x89PNG"
    (err,) = list(iter_jsonl(lay.sample_errors))
    assert err["id"] == "ghost" and err["reason"] == "image_unreadable"
    plan = ShardPlan.read(lay.shard_plan)
    assert [r for s in plan.shards for r in iter_shard_records(plan, s.shard_index)] == kept
    json.loads((tmp_path / RUN_DATE / "sample" / "failures.json").read_text())  # still one valid array


def test_sample_keys_without_probe_output_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="probe"):
        sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE))


def _fake_qa(lay: RunLayout, shards: list[QAShardSpan]) -> None:
    for s in shards:
        with JsonlWriter(lay.qa_shard(s.shard_index)) as w:
            for i in range(s.count * 2):
                w.write({"id": str(i)})
        n = s.count
        fake_qa_stats(lay, s.shard_index, QACounts(
            failures=n, failures_with_items=n, errors=0, items=n * 2, items_generated=n * 2, items_dropped=0,
            items_checked=0, items_target_failed=0, items_dropped_target_passed=0, items_check_errors=0, resumed=0),
            teacher={"requests": n, "retries": 0, "rate_limited": 0, "prompt_tokens": 10, "output_tokens": 5,
                     "thinking_tokens": 2, "cached_tokens": 0})


def test_a_sample_rerun_leaves_no_stale_qa_shard_or_manifest(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 6, "count:2": 6})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=4))
    _fake_qa(lay, ShardPlan.read(lay.shard_plan).shards)
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    journal = tmp_path / RUN_DATE / "qa" / "_journal" / "shard-00003.x.jsonl"
    journal.parent.mkdir()
    journal.write_text("{}\n")
    (tmp_path / RUN_DATE / "qa" / ".shard-00001.jsonl.tmp-0badf00d").write_text("killed writer")
    res = sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    assert res["num_shards"] == 2
    assert not (tmp_path / RUN_DATE / "manifest.json").exists()
    left = sorted(p.name for p in (tmp_path / RUN_DATE / "qa").iterdir())
    assert left == ["_journal"] and journal.exists()  # the resume journal survives the rerun


def test_publish_writes_manifest_that_adds_up(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4, "count:2": 3})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    _fake_qa(lay, ShardPlan.read(lay.shard_plan).shards)
    out = publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    m = read_json(lay.manifest)
    assert out["qa_items"] == m["qa"]["counts"]["items"] == 14
    # the QA shards' teacher stats (the fake probe has none): two shards
    assert m["tokens"] == {"prompt_tokens": 20, "output_tokens": 10, "thinking_tokens": 4, "cached_tokens": 0}
    assert m["estimated_cost_usd"] == pytest.approx((20 * 0.30 + 10 * 2.50) / 1e6)
    assert m["teacher"]["qa"]["requests"] == 7 and m["teacher"]["probe"]["requests"] == 0
    pc = m["probe"]["counts"]
    assert pc["rows"] == pc["passed"] + pc["verified"] + pc["rejected"] + pc["errors"]


def test_publish_refuses_a_missing_shard(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 4})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    _fake_qa(lay, ShardPlan.read(lay.shard_plan).shards[:1])
    with pytest.raises(RuntimeError, match="qa shard 1 has no complete output"):
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert not (tmp_path / RUN_DATE / "manifest.json").exists()
