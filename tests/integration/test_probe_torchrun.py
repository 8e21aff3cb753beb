"""Step 1 under torchrun with 2 CPU ranks (gloo), the tiny LLaVA and the Gemini simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlmprobe.io import iter_jsonl, list_files, read_json

pytestmark = pytest.mark.slow
RUN_DATE = "2026-11-25"


def _torchrun(nproc: int, out: Path, parquet: str, model: str, sim, sample_size: int = 4):
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "--no-python",
           str(bin_dir / "vlmprobe"), "probe", "--run-date", RUN_DATE, "--input-uri", parquet,
           "--output-uri", str(out), "--target-model", model, "--failure-batch-size", "5",
           "--parquet-sample-size", str(sample_size), "--concurrency", "4", "--pg-timeout-s", "120"]
    env = {**os.environ, "GEMINI_API_KEY": "k", "GEMINI_BASE_URL": sim.base_url,
           "VLMPROBE_XCOM_FILE": str(out / "xcom.json")}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_probe_every_row_once(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    proc = _torchrun(2, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend=gloo world_size=2" in proc.stderr
    root = tmp_path / RUN_DATE
    success = read_json(str(root / "probe" / "_SUCCESS.json"))
    c = success["counts"]
    rows_in = sum(pq.ParquetFile(f).metadata.num_rows for f in list_files(demo_parquet, ".parquet"))
    assert c["rows"] == rows_in == 48
    assert c["rows"] == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    assert success["world_size"] == 2 and len(success["ranks"]) == 2
    # every rank read a different share of the files, together all of them
    shares = [r["files"] for r in success["ranks"]]
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == success["input_files"]
    failures = [r for f in success["failure_files"] for r in iter_jsonl(f)]
    errors = [e for f in success["error_files"] for e in iter_jsonl(f)]
    assert len(failures) == c["verified"] > 0
    assert len(errors) == c["errors"] + c["rejected"] + c["bad_files"]
    reasons = {e["reason"] for e in errors}
    assert {"image_unreadable", "missing_question"} <= reasons  # the demo's two bad rows
    ids = [r["id"] for r in failures] + [e["id"] for e in errors]
    assert len(ids) == len(set(ids))  # no row twice
    f = failures[0]
    assert f["failure_key"] == f"{f['factor']['category']}:{f['failure_key'].split(':', 1)[1]}"
    assert set(f["image"]) == {"uri", "row"} and f["verification"]["supported"] is True
    assert "image_b64" not in f  # references, never pixels
    assert read_json(str(tmp_path / "xcom.json"))["counts"] == c  # rank 0's return value for XCom

    # a rerun with one rank replaces the outputs: no stale rank-00001 mixes in
    proc = _torchrun(1, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (root / "probe").iterdir()) == ["_SUCCESS.json", "rank-00000.jsonl"]
    assert read_json(str(root / "probe" / "_SUCCESS.json"))["counts"]["rows"] == 48


def test_more_ranks_than_files_fails_fast_with_advice(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    proc = _torchrun(2, tmp_path, demo_parquet, tiny_llava, gemini_sim, sample_size=1)
    assert proc.returncode != 0
    assert "lower nproc_per_node" in proc.stderr
    assert not (tmp_path / RUN_DATE / "probe" / "_SUCCESS.json").exists()
