"""Step 1 in one process (no torchrun): every row accounted for, clean reruns, user errors in plain words."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmprobe.config import ProbeConfig
from vlmprobe.errors import InputError
from vlmprobe.io import RunLayout, iter_jsonl, read_json, write_json
from vlmprobe.probe.run import main
from fakes import SIM_PLAN

RUN_DATE = "2026-11-25"


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _cfg(input_uri, out, model, **kw) -> ProbeConfig:
    kw = {"failure_batch_size": 8, "parquet_sample_size": 100, "concurrency": 4, **SIM_PLAN, **kw}
    return ProbeConfig(input_uri=str(input_uri), output_uri=str(out), run_date=RUN_DATE, target_model=model, **kw)


def _corrupt_page(path: str, row_group: int, column: str) -> None:
    """Overwrite bytes inside one data page of one column chunk (not its header)."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(meta.column(j) for j in range(meta.num_columns) if meta.column(j).path_in_schema == column)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    data = bytearray(Path(path).read_bytes())
    for k in range(end - 12, end - 2):
        data[k] ^= 0x5A
    Path(path).write_bytes(bytes(data))


@pytest.fixture
def messy_input(tmp_path, demo_parquet):
    src = tmp_path / "input"
    shutil.copytree(demo_parquet, src)
    (src / "not-parquet.parquet").write_bytes(b"this is not a parquet file")
    pq.write_table(pa.table({"image": [b"x"], "question": ["q?"]}), src / "no-answer.parquet")
    return str(src)


def test_bad_files_and_rows_are_error_rows(tmp_path, messy_input, tiny_llava, gemini_sim):
    # an unreadable footer counts as an average file: ~11 of 59 rows lost, within 30 %
    cfg = _cfg(messy_input, tmp_path / "out", tiny_llava, failure_batch_size=7, max_error_rate=0.3)
    result = main(cfg)
    success = read_json(result["success_uri"])
    c = success["counts"]
    assert success["input"]["files_lost"] == 2 and c["read_errors"] == 2 and len(success["input_files"]) == 6
    assert success["input"]["rows_read"] == c["rows"] == 48 == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    assert success["input"]["rows_lost"] == 1  # no-answer.parquet's one row (its footer says so)
    # provenance (issue 17): every input file with what the store says of it, and the code that ran
    fingerprints = {f["uri"]: f for f in success["provenance"]["input_files"]}
    assert set(fingerprints) == set(success["input_files"])
    assert all(f["size"] == Path(u).stat().st_size and f["mtime"] for u, f in fingerprints.items())
    assert success["provenance"]["code"]["version"]
    assert c["resumed"] == 0 and c["probed"] == 48
    errors = list(iter_jsonl(success["error_files"][0]))
    assert len(errors) == c["errors"] + c["rejected"] + c["read_errors"]
    bad = {e["file"].rsplit("/", 1)[1]: e for e in errors if e["reason"] in ("unreadable_file", "missing_columns")}
    assert set(bad) == {"not-parquet.parquet", "no-answer.parquet"}
    assert "answer" in bad["no-answer.parquet"]["detail"]
    rejected = [e for e in errors if e["reason"] == "factor_not_verified"]
    assert len(rejected) == c["rejected"] and all(e["failure"]["prediction"] is not None for e in rejected)
    assert success["tokens"]["prompt_tokens"] > 0 and success["teacher_model"] == cfg.gemini_model
    assert success["teacher"]["requests"] == success["ranks"][0]["teacher"]["requests"] > 0
    # the rank says how busy its device was and what held it back; the step sums it up
    pipeline = success["ranks"][0]["pipeline"]
    assert pipeline["batches"] == 7  # 48 rows in batches of 7; the 2 bad rows ride in their batch
    assert 0 < pipeline["device_busy_s"] <= pipeline["wall_s"]
    assert pipeline["busy_fraction"] == pytest.approx(pipeline["device_busy_s"] / pipeline["wall_s"], abs=2e-3)  # of unrounded times
    assert success["pipeline"]["bound"] in {"target", "input", "teacher"} and success["pipeline"]["ranks"] == 1
    failures = list(iter_jsonl(success["failure_files"][0]))
    assert len(failures) == c["verified"] and all(f["failure_key"].count(":") == 1 for f in failures)
    # the journal is gone once _SUCCESS.json is written
    assert not (tmp_path / "out" / RUN_DATE / "probe" / "_journal").exists()


def test_a_bug_while_explaining_fails_the_step_loudly(tmp_path, demo_parquet, tiny_llava, gemini_sim, monkeypatch):
    from vlmprobe.probe import loop as probe_loop

    real = probe_loop.RankProbe._explain

    async def explain_with_a_bug(self, ex, prediction, wrong):
        if ex.id.endswith("0005"):
            raise KeyError("a bug")
        await real(self, ex, prediction, wrong)

    monkeypatch.setattr(probe_loop.RankProbe, "_explain", explain_with_a_bug)
    with pytest.raises(KeyError, match="a bug"):
        main(_cfg(demo_parquet, tmp_path, tiny_llava))
    assert not (tmp_path / RUN_DATE / "probe" / "_SUCCESS.json").exists()


def test_all_unreadable_input_fails_the_probe(tmp_path, tiny_llava, gemini_sim):
    src = tmp_path / "input"
    src.mkdir()
    for i in range(3):
        (src / f"part-{i}.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(InputError, match="no input row could be read"):
        main(_cfg(src, tmp_path / "out", tiny_llava))
    lay = RunLayout(str(tmp_path / "out"), RUN_DATE)
    errors = list(iter_jsonl(lay.probe_errors(0)))  # the error rows are written first, for inspection
    assert sorted(e["file"].rsplit("/", 1)[1] for e in errors) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert {e["reason"] for e in errors} == {"unreadable_file"}
    assert not Path(lay.probe_success).exists()


def test_a_corrupt_middle_row_group_keeps_the_other_rows_and_counts_the_lost_ones(tmp_path, demo_parquet,
                                                                                  tiny_llava, gemini_sim):
    src = tmp_path / "input"
    shutil.copytree(demo_parquet, src)
    victim = str(src / "part-00002.parquet")
    table = pq.read_table(victim)
    pq.write_table(table, victim, row_group_size=4, write_page_checksum=True)  # 3 row groups of 4
    _corrupt_page(victim, 1, "question")
    result = main(_cfg(src, tmp_path / "out", tiny_llava, max_error_rate=0.2))
    success = read_json(result["success_uri"])
    assert success["input"] == {"files": 4, "files_lost": 0, "files_lost_rows_unknown": 0, "row_groups": 8,
                                "row_groups_lost": 1, "rows_read": 44, "rows_lost": 4}
    c = success["counts"]
    assert c["rows"] == 44 == c["passed"] + c["verified"] + c["rejected"] + c["errors"] and c["read_errors"] == 1
    errors = list(iter_jsonl(success["error_files"][0]))
    (lost,) = [e for e in errors if e["reason"] == "unreadable_row_group"]
    assert lost["file"] == victim and lost["rows"] == [4, 8] and lost["rows_lost"] == 4
    failures = list(iter_jsonl(success["failure_files"][0]))
    seen = {(r["image"]["uri"], r["image"]["row"]) for r in failures}
    seen |= {(e["image"]["uri"], e["image"]["row"]) for e in errors if "image" in e}
    assert {row for uri, row in seen if uri == victim} <= {0, 1, 2, 3, 8, 9, 10, 11}  # the other groups' rows
    # the same loss is too much at a lower max_error_rate: the step fails, the error rows stay
    with pytest.raises(InputError, match="could not be read, more than max_error_rate"):
        main(_cfg(src, tmp_path / "strict", tiny_llava, max_error_rate=0.05))
    strict = RunLayout(str(tmp_path / "strict"), RUN_DATE)
    assert not Path(strict.probe_success).exists()
    assert any(e["reason"] == "unreadable_row_group" for e in iter_jsonl(strict.probe_errors(0)))


def test_a_probe_rerun_leaves_no_stale_manifest_or_qa_shards(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    lay = RunLayout(str(tmp_path), RUN_DATE)
    stale = [lay.manifest, lay.shard_plan, lay.sampled_failures(), lay.qa_shard(0), lay.qa_shard(3), lay.qa_stats(0),
             lay.qa_errors(0), lay.sample_errors, lay.probe_rank(5), lay.probe_errors(5),
             f"{lay.errors_dir}/.probe-rank-00001.jsonl.tmp-1234abcd"]
    for uri in stale:
        write_json(uri, {"stale": True})
    kept = [f"{lay.teacher_dir}/ledger-probe-rank-00000.json"]
    write_json(kept[0], {"kept": True})
    main(_cfg(demo_parquet, tmp_path, tiny_llava, parquet_sample_size=1))
    assert [u for u in stale if Path(u).exists()] == []
    assert Path(kept[0]).exists() and Path(lay.probe_success).exists()
    assert sorted(p.name for p in Path(lay.probe_dir).iterdir()) == ["_SUCCESS.json", "rank-00000.jsonl",
                                                                    "wrong-rank-00000.jsonl"]


def test_user_errors_are_one_plain_sentence(tmp_path, demo_parquet, tiny_llava):
    with pytest.raises(InputError, match=r"does not exist: check input_uri"):
        main(_cfg(tmp_path / "missing", tmp_path / "out", tiny_llava))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no parquet here")
    with pytest.raises(InputError, match=r"no parquet files under .*empty: check input_uri"):
        main(_cfg(tmp_path / "empty", tmp_path / "out", tiny_llava))

    from vlmprobe.probe.run import _start

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(Path(demo_parquet) / "part-00001.parquet", one)  # 12 rows in 2 row groups of 8 and 4
    cfg = _cfg(one, tmp_path / "out", tiny_llava)
    with pytest.raises(InputError, match="lower nproc_per_node to 2"):
        _start(cfg, RunLayout(cfg.output_uri, RUN_DATE), {}, world_size=3)
