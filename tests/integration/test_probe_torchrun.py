"""Step 1 with several CPU ranks (gloo), the tiny LLaVA and the Gemini simulator, through the CLI launcher.

``vlmprobe probe --nproc-per-node N`` is what the DAG's probe pod runs: it starts the torchrun
ranks and exits with the first failing rank's own code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlmprobe.io import RunLayout, iter_jsonl, list_files, read_json, write_json
from vlmprobe.sim import GeminiSimulator
from fakes import SIM_PLAN_ARGS

pytestmark = pytest.mark.slow
RUN_DATE = "2026-11-25"
BIN = Path(sys.executable).parent


def _torchrun(nproc: int, out: Path, parquet: str, model: str, sim, sample_size: int = 4, *extra: str):
    """torchrun itself starting the ranks (the GPU tests use it too)."""
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "--no-python",
           str(BIN / "vlmprobe"), "probe", "--run-date", RUN_DATE, "--input-uri", parquet,
           "--output-uri", str(out), "--target-model", model, "--failure-batch-size", "5",
           "--parquet-sample-size", str(sample_size), "--concurrency", "4", "--pg-timeout-s", "120",
           *SIM_PLAN_ARGS, *extra]
    env = {**os.environ, "GEMINI_API_KEY": "k", "GEMINI_BASE_URL": sim.base_url,
           "VLMPROBE_XCOM_FILE": str(out / "xcom.json")}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _probe_args(nproc: int, out: Path, parquet: str, model: str, *extra: str) -> list[str]:
    return [str(BIN / "vlmprobe"), "probe", "--nproc-per-node", str(nproc), "--run-date", RUN_DATE,
            "--input-uri", parquet, "--output-uri", str(out), "--target-model", model, *SIM_PLAN_ARGS, *extra]


def _env(sim) -> dict[str, str]:
    return {**os.environ, "GEMINI_API_KEY": "k", "GEMINI_BASE_URL": sim.base_url}


def test_two_ranks_probe_every_row_once(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    proc = _torchrun(2, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend=gloo world_size=2" in proc.stderr
    root = tmp_path / RUN_DATE
    success = read_json(str(root / "probe" / "_SUCCESS.json"))
    c = success["counts"]
    rows_in = sum(pq.ParquetFile(f).metadata.num_rows for f in list_files(demo_parquet, ".parquet"))
    assert c["rows"] == rows_in == 48 == success["input"]["rows_read"]
    assert c["rows"] == c["passed"] + c["verified"] + c["rejected"] + c["unexplained"] + c["errors"]
    assert success["world_size"] == 2 and len(success["ranks"]) == 2
    # the plan split the rows, not the files: each rank about half
    assert sorted(r["input"]["rows_read"] for r in success["ranks"]) == [24, 24]
    failures = [r for f in success["failure_files"] for r in iter_jsonl(f)]
    errors = [e for f in success["error_files"] for e in iter_jsonl(f)]
    assert len(failures) == c["verified"] > 0
    assert len(errors) == c["errors"] + c["rejected"] + c["read_errors"]
    reasons = {e["reason"] for e in errors}
    assert {"image_unreadable", "missing_question"} <= reasons  # the demo's two bad rows
    ids = [r["id"] for r in failures] + [e["id"] for e in errors]
    assert len(ids) == len(set(ids))  # no row twice
    f = failures[0]
    assert f["failure_key"] == f"{f['factor']['category']}:{f['failure_key'].split(':', 1)[1]}"
    assert set(f["image"]) == {"uri", "row"} and f["verification"]["supported"] is True
    assert "image_b64" not in f  # references, never pixels
    assert read_json(str(tmp_path / "xcom.json"))["counts"] == c  # rank 0's return value for XCom
    assert success["pipeline"]["ranks"] == 2 and success["teacher"]["requests"] > 0

    # a retry of the finished probe (one rank now: the same work plan) is skipped, not paid again
    paid = gemini_sim.stats()["requests"]
    proc = _torchrun(1, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probe already succeeded for this work plan" in proc.stderr and gemini_sim.stats()["requests"] == paid
    assert read_json(str(root / "probe" / "_SUCCESS.json")) == success
    # a forced rerun with one rank replaces the outputs: no stale rank-00001 mixes in
    proc = _torchrun(1, tmp_path, demo_parquet, tiny_llava, gemini_sim, 4, "--force", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (root / "probe").iterdir()) == ["_SUCCESS.json", "rank-00000.jsonl",
                                                                  "wrong-rank-00000.jsonl"]
    assert read_json(str(root / "probe" / "_SUCCESS.json"))["counts"]["rows"] == 48


def test_more_ranks_than_row_groups_fails_fast_with_advice(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    one = tmp_path / "one"
    one.mkdir()
    table = pq.read_table(Path(demo_parquet) / "part-00001.parquet")
    pq.write_table(table, one / "single.parquet", row_group_size=1000)  # one row group
    (tmp_path / "out" / RUN_DATE).mkdir(parents=True)
    write_json(str(tmp_path / "out" / RUN_DATE / "manifest.json"), {"kept": "a refused run removes nothing"})
    proc = subprocess.run(_probe_args(2, tmp_path / "out", str(one), tiny_llava), env=_env(gemini_sim),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert "lower nproc_per_node to 1" in errors[-1] and "exit code 2" in errors[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / RUN_DATE / "probe" / "_SUCCESS.json").exists()
    assert (tmp_path / "out" / RUN_DATE / "manifest.json").exists()


@pytest.fixture(scope="module")
def uneven_input(tmp_path_factory) -> str:
    """Two files of one row group each, 80 and 8 rows: the plan gives rank 0 ten times rank 1's rows."""
    from vlmprobe.demo.data import write_demo_parquet

    root = tmp_path_factory.mktemp("uneven")
    out = root / "input"
    out.mkdir()
    for name, rows, seed in (("a.parquet", 80, 3), ("b.parquet", 8, 4)):
        (part,) = write_demo_parquet(str(root / name), n_files=1, rows_per_file=rows, seed=seed)
        pq.write_table(pq.read_table(part), out / name, row_group_size=1000)
    return str(out)


def test_ranks_finishing_far_apart_outlast_a_shorter_process_group_timeout(tmp_path, uneven_input, tiny_llava):
    pg_timeout_s = 5
    with GeminiSimulator(port=0, latency_ms=300, seed=1) as sim:  # the teacher makes rank 0 slow
        proc = subprocess.run(_probe_args(2, tmp_path, uneven_input, tiny_llava, "--concurrency", "2",
                                          "--failure-batch-size", "8", "--pg-timeout-s", str(pg_timeout_s)),
                              env=_env(sim), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend=gloo world_size=2 timeout=5s (start-up), 86400s (waiting for the slowest rank)" in proc.stderr
    success = read_json(str(tmp_path / RUN_DATE / "probe" / "_SUCCESS.json"))
    r0, r1 = success["ranks"]
    assert (r0["input"]["rows_read"], r1["input"]["rows_read"]) == (80, 8)
    # rank 1 waited for rank 0 longer than the process-group timeout, and nothing failed
    assert r0["finished_at"] - r1["finished_at"] > pg_timeout_s
    for r in (r0, r1):
        c = r["counts"]
        assert c["rows"] == c["passed"] + c["verified"] + c["rejected"] + c["unexplained"] + c["errors"]
        assert Path(r["failures_uri"]).exists() and Path(r["errors_uri"]).exists()
    assert success["counts"]["rows"] == 88


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun rank ``rank`` among the launcher's descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [launcher], []
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            found.append(child)
    for pid in found:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
            return pid
    return None


def _teacher_outcomes(journal: Path, rank: int) -> int:
    n = 0
    for seg in journal.glob(f"rank-{rank:05d}.*.jsonl"):
        for line in seg.read_text().splitlines():
            try:
                n += json.loads(line)["outcome"] != "passed"
            except ValueError:
                pass  # the line being written
    return n


def test_a_killed_rank_ends_the_job_at_once_and_the_rerun_pays_nothing_twice(tmp_path, uneven_input, tiny_llava):
    concurrency = 2
    args = _probe_args(2, tmp_path, uneven_input, tiny_llava, "--concurrency", str(concurrency),
                       "--failure-batch-size", "8")
    lay = RunLayout(str(tmp_path), RUN_DATE)
    journal = Path(lay.probe_journal)
    log = tmp_path / "first.log"
    with GeminiSimulator(port=0, latency_ms=300, seed=1) as slow:
        with open(log, "w") as err:
            launcher = subprocess.Popen(args, env=_env(slow), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 240
            # rank 1 (8 rows) is done and waits for rank 0; rank 0 has finished some rows with the teacher
            while not ("[rank 1] rank 1 done" in log.read_text() and _teacher_outcomes(journal, 0) >= 10):
                assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            pid = _rank_pid(launcher.pid, 0)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            before = slow.request_log()
            code = launcher.wait(timeout=120)
            ended = time.monotonic() - killed
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    # the job ends within seconds, though rank 1 was waiting on a 24-hour finish group
    assert code == 1 and ended < 30, (code, ended, log.read_text()[-2000:])
    assert "rank 0 of 2 failed first" in log.read_text()
    assert not Path(lay.probe_success).exists()
    done_before = _teacher_outcomes(journal, 0)

    with GeminiSimulator(port=0, seed=1) as fast:
        proc = subprocess.run(args, env=_env(fast), capture_output=True, text=True, timeout=600)
        after = fast.request_log()
    assert proc.returncode == 0, proc.stderr[-3000:]
    success = read_json(lay.probe_success)
    c = success["counts"]
    assert c["rows"] == 88 == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    assert c["resumed"] >= done_before + 8 and c["probed"] + c["resumed"] == 88
    succeeded = {e["sha256"] for e in before if e["status"] == 200}
    resent = [e for e in after if e["sha256"] in succeeded]
    # the requests paid twice: at most those of rank 0's rows between their two teacher calls
    assert len(succeeded) >= 20 and len(resent) <= concurrency, (len(succeeded), len(resent))
    assert not journal.exists()


@pytest.mark.parametrize("fail, nproc, cause", [("401", 2, "the Gemini API key was not accepted (HTTP 401"),
                                                ("404", 1, "not found (HTTP 404")])
def test_a_dead_teacher_stops_the_probe_through_the_launcher(tmp_path, demo_parquet, tiny_llava, fail, nproc, cause):
    lay = RunLayout(str(tmp_path), RUN_DATE)
    write_json(lay.manifest, {"stale": "from an earlier run"})
    with GeminiSimulator(port=0, fail=fail) as sim:
        proc = subprocess.run(_probe_args(nproc, tmp_path, demo_parquet, tiny_llava, "--concurrency", "4"),
                              env=_env(sim), capture_output=True, text=True, timeout=300)
        ended = time.time()
        requests = sim.request_log()
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert requests and ended - requests[0]["time"] < 30  # stopped within seconds of the first answer
    assert len(requests) <= 4 * nproc  # no retries, no request per row
    last = [line for line in proc.stderr.splitlines() if " ERROR " in line][-1]
    assert "vlmprobe probe: error: rank " in last and cause in last and "exit code 3" in last
    assert "Traceback" not in proc.stderr
    assert not Path(lay.probe_success).exists() and not Path(lay.manifest).exists()
