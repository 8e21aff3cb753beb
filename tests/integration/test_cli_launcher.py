"""``vlmprobe probe --nproc-per-node N``: the ranks' own exit code comes out, not torchrun's 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
RUN_DATE = "2026-11-25"


def test_torchrun_alone_turns_a_rank_exit_2_into_1(tmp_path):
    # why the launcher exists: a deterministic failure must not look retryable
    script = tmp_path / "rank.py"
    script.write_text("import sys; sys.exit(2)\n")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1


def test_missing_input_under_two_ranks_exits_2_with_one_line_per_rank(tmp_path):
    missing = tmp_path / "missing"
    proc = subprocess.run([sys.executable, "-m", "vlmprobe.cli", "probe", "--nproc-per-node", "2", "--run-date",
                           RUN_DATE, "--input-uri", str(missing), "--output-uri", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 3, proc.stderr  # one per rank, one from the launcher
    assert any("[rank 0] vlmprobe probe: error: " in e for e in errors)
    assert any("[rank 1] vlmprobe probe: error: " in e for e in errors)
    assert f"{missing} does not exist" in errors[-1] and "exit code 2" in errors[-1]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert "OMP_NUM_THREADS" not in proc.stderr
