"""QA reads each parquet row group of its shard once (issue 15): records processed in (file, row) order,
outputs still in the shard's order."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from vlmprobe.config import QAConfig, SampleConfig
from vlmprobe.contracts import ShardPlan
from vlmprobe.io import iter_jsonl
from vlmprobe.qa import items as qa_items
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys
from vlmprobe.sample.shards import iter_shard_records
from fakes import RUN_DATE, fake_probe

ROW_GROUP = 3  # rows per row group of the input files


@pytest.fixture
def small_row_groups(tmp_path, demo_parquet) -> str:
    src = tmp_path / "parquet"
    shutil.copytree(demo_parquet, src)
    for path in src.glob("*.parquet"):
        pq.write_table(pq.read_table(path), path, row_group_size=ROW_GROUP)  # 12 rows: 4 row groups
    return str(src)


def _row_group(record) -> tuple[str, int]:
    return record["image"]["uri"], record["image"]["row"] // ROW_GROUP


def test_each_row_group_is_read_once_per_shard(tmp_path, small_row_groups, gemini_sim, monkeypatch):
    lay = fake_probe(str(tmp_path), small_row_groups, {"color:red": 7, "count:3": 6, "shape:circle": 5})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    plan = ShardPlan.read(lay.shard_plan)
    records = list(iter_shard_records(plan, 0))
    batch = 4
    # as the shard's records come, its batches would read some row groups again and again
    naive = sum(len({_row_group(r) for r in records[i:i + batch]}) for i in range(0, len(records), batch))
    distinct = {_row_group(r) for r in records}
    assert naive > len(distinct) + 3

    reads: list[tuple[str, int]] = []
    real = qa_items.RowGroupReader.read_group

    def counted(self, rg):
        reads.append((self._uri, rg))
        return real(self, rg)

    asked: list[int] = []
    real_handle = qa_items.ShardQA.handle

    async def handle(self, seq, rec, image):
        asked.append(seq)
        return await real_handle(self, seq, rec, image)

    monkeypatch.setattr(qa_items.RowGroupReader, "read_group", counted)
    monkeypatch.setattr(qa_items.ShardQA, "handle", handle)
    run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, batch_size=batch, no_async=True,
                       qa_target_check="off"))
    assert sorted(reads) == sorted(distinct) and len(reads) == len(set(reads))  # each one, once
    # processed in (file, row, position) order: deterministic
    assert asked == sorted(range(len(records)),
                           key=lambda i: (records[i]["image"]["uri"], records[i]["image"]["row"], i))
    # the outputs keep the shard's order
    items = list(iter_jsonl(lay.qa_shard(0)))
    firsts = list(dict.fromkeys(it["failure_id"] for it in items))
    assert firsts == [r["id"] for r in records if r["id"] in set(firsts)] and len(firsts) > 10


def test_records_without_a_parquet_read_come_first_as_they_are(tmp_path):
    from vlmprobe.qa.run import _reading_order

    records = [
        (0, {"image": {"uri": "b.parquet", "row": 5}}, None),
        (1, {"image_b64": "aGk=", "image": {"uri": "a.parquet", "row": 0}}, None),  # embedded: no read
        (2, {"image": {"uri": "a.parquet", "row": 9}}, None),
        (3, {"id": "x"}, "no 'image'"),  # a record QA cannot use: its error row
        (4, {"image": {"uri": "a.parquet", "row": 9}}, None),
        (5, {"image": {"uri": "a.parquet", "row": 2}}, None),
        (6, {"image": {"uri": "b.parquet", "row": 1}}, None),  # resumed, no target check: no read
    ]
    order = [seq for seq, _, _ in _reading_order(iter(records), want_image=lambda seq: seq != 6)]
    assert order == [1, 3, 6, 5, 2, 4, 0]
