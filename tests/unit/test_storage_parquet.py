"""Input accounting: parquet read a row group at a time, every row read or counted as lost; the work plan."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmprobe.io.parquet import InputCounts, ReadError, WorkUnit, file_units, iter_file, iter_rows, iter_units
from vlmprobe.probe.plan import WorkPlan, balanced_split, plan_work


def _write(path, n_rows: int, group: int, **kw) -> str:
    rows = [{"id": f"r{i}", "image": bytes([i % 256]) * 64, "question": f"what is shown in picture {i}?",
             "answer": f"answer {i}"} for i in range(n_rows)]
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=group, **kw)
    return str(path)


def _corrupt_page(path: str, row_group: int, column: str) -> None:
    """Overwrite bytes inside one data page of one column chunk (not its header)."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(meta.column(j) for j in range(meta.num_columns) if meta.column(j).path_in_schema == column)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    data = bytearray(Path(path).read_bytes())
    for k in range(end - 12, end - 2):  # the tail of the chunk's last page: its values, not its header
        data[k] ^= 0x5A
    Path(path).write_bytes(bytes(data))


def test_a_corrupt_middle_row_group_loses_only_its_rows(tmp_path):
    path = _write(tmp_path / "six-groups.parquet", 24, 4, write_page_checksum=True)
    _corrupt_page(path, 3, "question")
    counts = InputCounts()
    items = list(iter_file(path, batch_rows=3, counts=counts))
    rows = [i for i in items if not isinstance(i, ReadError)]
    errors = [i for i in items if isinstance(i, ReadError)]
    assert [r.row for r in rows] == [*range(12), *range(16, 24)]  # the other five groups, every row
    assert [r.cells["id"] for r in rows] == [f"r{r.row}" for r in rows]
    (err,) = errors
    assert (err.reason, err.row_group, err.first_row, err.num_rows) == ("unreadable_row_group", 3, 12, 4)
    rec = err.record(rank=0)
    assert rec["file"] == path and rec["rows"] == [12, 16] and rec["rows_lost"] == 4
    assert counts.to_dict() == {"files": 1, "files_lost": 0, "files_lost_rows_unknown": 0, "row_groups": 5,
                                "row_groups_lost": 1, "rows_read": 20, "rows_lost": 4}
    with pytest.raises(ValueError):  # the older all-or-nothing reader stops there
        list(iter_rows(path))


def test_unreadable_files_are_lost_whole_with_what_the_footer_knows(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet at all")
    no_answer = tmp_path / "no-answer.parquet"
    pq.write_table(pa.table({"image": [b"x"] * 5, "question": ["q"] * 5}), no_answer)
    counts = InputCounts()
    (err,) = list(iter_file(str(junk), counts=counts))
    assert err.reason == "unreadable_file" and err.num_rows is None and err.file_lost
    (err2,) = list(iter_file(str(no_answer), counts=counts))
    assert err2.reason == "missing_columns" and err2.num_rows == 5 and "answer" in err2.detail
    assert (counts.files_lost, counts.files_lost_rows_unknown, counts.rows_lost, counts.rows_read) == (2, 1, 5, 0)


def test_a_file_that_vanishes_after_planning_is_one_error_with_its_planned_rows(tmp_path):
    path = _write(tmp_path / "a.parquet", 10, 4)
    units, _ = file_units(path)
    (tmp_path / "a.parquet").unlink()
    counts = InputCounts()
    (err,) = list(iter_units(units, counts=counts))
    assert err.reason == "unreadable_file" and err.num_rows == 10 and counts.rows_lost == 10


def test_plan_balances_ranks_by_rows_not_files(tmp_path):
    big = _write(tmp_path / "a-big.parquet", 90, 10)  # 9 groups of 10
    small = [_write(tmp_path / f"b-small-{i}.parquet", 10, 10) for i in range(3)]
    bad = tmp_path / "c-bad.parquet"
    bad.write_bytes(b"nope")
    plan = plan_work(sorted([big, *small, str(bad)]))
    assert plan.total_rows == 120 and len(plan.units) == 12 and [e.uri for e in plan.lost] == [str(bad)]
    parts = [plan.for_rank(r, 4) for r in range(4)]
    assert [sum(u.num_rows for u in p) for p in parts] == [30, 30, 30, 30]  # by files it would be 90/10/10/10
    assert [u for p in parts for u in p] == plan.units  # contiguous, complete, in order
    assert WorkPlan.from_dict(plan.to_dict()) == plan  # what rank 0 broadcasts
    assert [e for r in range(4) for e in plan.lost_for_rank(r, 4)] == plan.lost  # each reported once
    with pytest.raises(ValueError, match="lower nproc_per_node to 12"):
        plan.for_rank(0, 13)


def test_balanced_split_is_contiguous_and_near_fair():
    weights = [5, 1, 1, 1, 1, 1, 10, 1, 1, 1, 2, 3]
    for parts in range(1, len(weights) + 1):
        cuts = balanced_split(weights, parts)
        assert cuts[0][0] == 0 and cuts[-1][1] == len(weights)
        assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:])) and all(s < e for s, e in cuts)
        fair = sum(weights) / parts
        assert all(sum(weights[s:e]) <= fair + max(weights) for s, e in cuts)
    with pytest.raises(ValueError):
        balanced_split([1, 2], 3)


def test_iter_units_numbers_rows_by_their_place_in_the_file(tmp_path):
    path = _write(tmp_path / "a.parquet", 10, 4)
    units, _ = file_units(path)
    assert units == [WorkUnit(path, 0, 0, 4), WorkUnit(path, 1, 4, 4), WorkUnit(path, 2, 8, 2)]
    assert [r.row for r in iter_units(units[1:])] == [4, 5, 6, 7, 8, 9]


def test_read_images_takes_bytes_paths_and_plain_binary(tmp_path):
    from vlmprobe.io.parquet import read_images

    (tmp_path / "pic.png").write_bytes(b"from-a-path")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": b"inline", "path": None}, {"bytes": None, "path": "pic.png"}, {"bytes": None, "path": None}]
    pq.write_table(pa.table({"image": pa.array(cells, struct), "question": ["q"] * 3, "answer": ["a"] * 3}),
                   tmp_path / "s.parquet", row_group_size=2)
    got = read_images(str(tmp_path / "s.parquet"), [2, 0, 1, 7])
    assert bytes(got[0]) == b"inline" and bytes(got[1]) == b"from-a-path"
    assert isinstance(got[2], ValueError) and isinstance(got[7], ValueError)
    pq.write_table(pa.table({"image": [b"raw0", b"raw1"], "question": ["q"] * 2, "answer": ["a"] * 2}),
                   tmp_path / "b.parquet")
    assert bytes(read_images(str(tmp_path / "b.parquet"), [1])[1]) == b"raw1"


def test_input_counts_say_when_the_step_must_fail():
    assert "no input row could be read" in InputCounts(files_lost=3).problem(0.1)
    assert InputCounts(files=2, rows_read=95, rows_lost=5).problem(0.1) is None
    assert "10.0%" in InputCounts(files=2, rows_read=90, rows_lost=10, row_groups_lost=1).problem(0.05)
    # one of two files lost with its row count unknown: taken as big as the readable one, 50%
    assert "50.0%" in InputCounts(files=1, rows_read=90, files_lost=1, files_lost_rows_unknown=1).problem(0.1)
    assert InputCounts(files=19, rows_read=1900, files_lost=1, files_lost_rows_unknown=1).problem(0.1) is None
    # a file without the answer column told its 100 rows: the unreadable one is taken as 100 too
    assert "200 of 1100" in InputCounts(files=9, rows_read=900, rows_lost=100, files_lost=2,
                                        files_lost_rows_unknown=1).problem(0.1)
    total = InputCounts(files=1, rows_read=5)
    total.merge(InputCounts(files=2, rows_read=7, rows_lost=1))
    assert (total.files, total.rows_read, total.rows_lost) == (3, 12, 1)
