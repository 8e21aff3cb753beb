"""Step 1 in one process (no torchrun): bad rows and bad files become error rows, nothing is lost."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmprobe.config import ProbeConfig
from vlmprobe.io import iter_jsonl, read_json
from vlmprobe.probe.run import main

RUN_DATE = "2026-11-25"


@pytest.fixture
def messy_input(tmp_path, demo_parquet):
    src = tmp_path / "input"
    shutil.copytree(demo_parquet, src)
    (src / "not-parquet.parquet").write_bytes(b"this is not a parquet file")
    pq.write_table(pa.table({"image": [b"x"], "question": ["q?"]}), src / "no-answer.parquet")
    return str(src)


def test_bad_files_and_rows_are_error_rows(tmp_path, messy_input, tiny_llava, gemini_sim, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    cfg = ProbeConfig(input_uri=messy_input, output_uri=str(tmp_path / "out"), run_date=RUN_DATE,
                      target_model=tiny_llava, failure_batch_size=7, parquet_sample_size=100, concurrency=4)
    result = main(cfg)
    success = read_json(result["success_uri"])
    c = success["counts"]
    assert c["bad_files"] == 2 and len(success["input_files"]) == 6
    assert c["rows"] == 48 == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    errors = list(iter_jsonl(success["error_files"][0]))
    assert len(errors) == c["errors"] + c["rejected"] + c["bad_files"]
    bad = {e["file"].rsplit("/", 1)[1]: e for e in errors if e["reason"] == "unreadable_file"}
    assert set(bad) == {"not-parquet.parquet", "no-answer.parquet"}
    assert "answer" in bad["no-answer.parquet"]["detail"]
    rejected = [e for e in errors if e["reason"] == "factor_not_verified"]
    assert len(rejected) == c["rejected"] and all(e["failure"]["prediction"] is not None for e in rejected)
    assert success["tokens"]["prompt_tokens"] > 0 and success["teacher_model"] == cfg.gemini_model
    # the rank says how busy its device was and what held it back
    pipeline = success["ranks"][0]["pipeline"]
    assert pipeline["batches"] == 7  # 48 rows in batches of 7; the 2 bad rows ride in their batch
    assert 0 < pipeline["device_busy_s"] <= pipeline["wall_s"]
    assert pipeline["busy_fraction"] == round(pipeline["device_busy_s"] / pipeline["wall_s"], 3)
    assert pipeline["bound"] in {"target", "input", "teacher"}


def test_a_bug_while_explaining_fails_the_step_loudly(tmp_path, demo_parquet, tiny_llava, gemini_sim, monkeypatch):
    from vlmprobe.probe import run as probe_run

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    real = probe_run.RankProbe._explain

    async def explain_with_a_bug(self, ex, prediction):
        if ex.id.endswith("0005"):
            raise KeyError("a bug")
        await real(self, ex, prediction)

    monkeypatch.setattr(probe_run.RankProbe, "_explain", explain_with_a_bug)
    cfg = ProbeConfig(input_uri=demo_parquet, output_uri=str(tmp_path), run_date=RUN_DATE,
                      target_model=tiny_llava, failure_batch_size=8, concurrency=4)
    with pytest.raises(KeyError, match="a bug"):
        main(cfg)
    assert not (tmp_path / RUN_DATE / "probe" / "_SUCCESS.json").exists()
