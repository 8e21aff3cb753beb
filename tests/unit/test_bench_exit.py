"""The benchmarks fail when they miss: a GPU check that ran nothing, batching below its goal."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _junit(tmp_path, body: str):
    (tmp_path / "test_x.py").write_text("import pytest\n" + body)
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
                    "--rootdir", str(tmp_path), str(tmp_path / "test_x.py"), f"--junitxml={report}"],
                   capture_output=True, text=True, timeout=120)
    return str(report)


def test_probe_gpu_fails_a_gpu_test_run_where_everything_skipped(tmp_path, capsys):
    junit_passed = _load("junit_passed")
    skipped = _junit(tmp_path, "@pytest.mark.skip(reason='no CUDA')\ndef test_a(): pass\n"
                               "def test_b(): pytest.skip('no GPU')\n")
    assert junit_passed.main([skipped]) == 1
    assert capsys.readouterr().out.splitlines() == ["0 passed, 2 skipped, 0 failed, 0 errors",
                                                    "no GPU test passed: the check ran nothing"]
    one = _junit(tmp_path, "def test_a(): pass\ndef test_b(): pytest.skip('no GPU')\n")
    assert junit_passed.main([one]) == 0
    assert junit_passed.main([str(tmp_path / "missing.xml")]) == 1
    # and probe_gpu.sh runs it after the GPU tests, as a step of its own that can fail the script
    script = (REPO / "bench" / "probe_gpu.sh").read_text()
    assert 'step tests-passed 30 "$PYTHON" bench/junit_passed.py "$OUT/pytest_gpu.xml"' in script


def test_batching_summary_and_goal(monkeypatch, capsys):
    batching = _load("bench_target_batching")
    rounds = [{1: 10.0, 8: 40.0, 32: 60.0}, {1: 20.0, 8: 60.0, 32: 90.0}, {1: 5.0, 8: 30.0, 32: 40.0}]
    assert batching.summarize(rounds) == {1: (10.0, 1.0), 8: (40.0, 4.0), 32: (60.0, 6.0)}
    # a batch path that fell back to one image per call: the same rate at every size, exit 1
    monkeypatch.setattr(batching, "build_tiny_llava", lambda path: path, raising=False)
    monkeypatch.setattr(batching, "load_target", lambda *a, **k: object(), raising=False)
    monkeypatch.setattr(batching, "_throughput", lambda target, examples, batch: 50.0)
    assert batching.main() == 1
    assert capsys.readouterr().out.splitlines()[-1] == "goal: batch 32 >= 5x batch 1: 1.00x, MISSED"
