"""`vlmprobe qa` as the pod runs it: killed mid-run and rerun without paying twice; a dead teacher stops it.

The simulator runs in the test process and logs every request with a SHA-256 of its body, so a
test can tell which requests were sent again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmprobe.config import SampleConfig
from vlmprobe.io import exists, iter_jsonl, read_json, write_json
from vlmprobe.io.fs import write_bytes
from vlmprobe.sample.run import sample_keys
from vlmprobe.sim import GeminiSimulator
from fakes import RUN_DATE, fake_probe

pytestmark = pytest.mark.slow
VLMPROBE = str(Path(sys.executable).parent / "vlmprobe")
CONCURRENCY = 4


@pytest.fixture
def shard(tmp_path, demo_parquet):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 12, "count:3": 12, "shape:circle": 12})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    return lay


def _qa_cmd(tmp_path, *extra: str) -> list[str]:
    return [VLMPROBE, "qa", "--run-date", RUN_DATE, "--output-uri", str(tmp_path), "--shard-index", "0",
            "--concurrency", str(CONCURRENCY), *extra]


def _env(sim, key="qa-cli-test-key") -> dict[str, str]:
    return {**os.environ, "GEMINI_API_KEY": key, "GEMINI_BASE_URL": sim.base_url}


def _succeeded(log: list[dict]) -> set[str]:
    return {e["sha256"] for e in log if e["status"] == 200 and e["outcome"] == "ok"}


def test_a_killed_shard_is_rerun_without_paying_again_for_what_succeeded(tmp_path, shard):
    count = read_json(shard.shard_plan)["shards"][0]["count"]
    assert count == 36
    with GeminiSimulator(port=0, latency_ms=250, seed=6) as sim:
        proc = subprocess.Popen(_qa_cmd(tmp_path), env=_env(sim), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(_succeeded(sim.request_log())) < 12 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        time.sleep(0.5)  # requests in flight at the kill still reach the log
        before = sim.request_log()
        paid = _succeeded(before)
        assert 12 <= len(paid) < count, "the shard was not killed mid-run"
        assert not exists(shard.qa_shard(0)) and not exists(shard.qa_stats(0))

        rerun = subprocess.run(_qa_cmd(tmp_path), env=_env(sim), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        after = sim.request_log()[len(before):]
    again = [e for e in after if e["sha256"] in paid]
    # only the requests in flight at the kill (answered by the server, never recorded) are sent again
    assert len(again) <= CONCURRENCY, again
    assert len(after) <= count - len(paid) + CONCURRENCY
    stats = read_json(shard.qa_stats(0))
    c = stats["counts"]
    assert c["failures"] == count == c["failures_with_items"] + c["errors"]
    assert c["resumed"] >= len(paid) - CONCURRENCY
    items = list(iter_jsonl(shard.qa_shard(0)))
    assert len(items) == c["items"] > 0 and len({it["id"] for it in items}) == len(items)
    assert not (tmp_path / RUN_DATE / "qa" / "_journal" / "shard-00000").exists()


@pytest.mark.parametrize("fail,cause", [("401", "API key"), ("404", "not found")])
def test_a_dead_teacher_stops_qa_with_one_line_and_exit_3(tmp_path, shard, fail, cause):
    # what an earlier attempt and an earlier publish left: both stale once the shard reruns
    write_bytes(shard.qa_shard(0), b'{"id": "old"}\n')
    write_json(shard.manifest, {"earlier": "publish"})
    with GeminiSimulator(port=0, fail=fail) as sim:
        started = time.monotonic()
        proc = subprocess.run(_qa_cmd(tmp_path), env=_env(sim, key="qa-dead-teacher-secret-77"),
                              capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
        requests = sim.stats()["requests"]
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert took < 30 and requests <= CONCURRENCY
    lines = [line for line in proc.stderr.splitlines() if "vlmprobe qa: error:" in line]
    assert len(lines) == 1 and cause.lower() in lines[0].lower(), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "qa-dead-teacher-secret-77" not in proc.stderr
    assert not exists(shard.qa_shard(0)) and not exists(shard.qa_stats(0)) and not exists(shard.qa_errors(0))
    assert not exists(shard.manifest)


def test_batch_mode_killed_while_it_waits_is_rerun_without_a_second_job(tmp_path, shard):
    count = read_json(shard.shard_plan)["shards"][0]["count"]
    ledger = tmp_path / RUN_DATE / "qa" / "_batch" / "shard-00000.json"
    first_log = tmp_path / "first.log"
    batch = ("--qa-mode", "batch", "--batch-poll-s", "0.2")
    with GeminiSimulator(port=0, seed=6, batch_stay_pending=True) as sim:
        with open(first_log, "w") as log:
            proc = subprocess.Popen(_qa_cmd(tmp_path, *batch), env=_env(sim), stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and "waiting for the Gemini Batch API" \
                    not in first_log.read_text():
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # killed after its job was submitted, while it waits
            proc.wait(30)
        assert sim.batch_stats()["jobs_created"] == 1 and read_json(str(ledger))["jobs"][0]["name"]
        assert not exists(shard.qa_shard(0))
        sim.batch_stay_pending = False  # the job runs now
        rerun = subprocess.run(_qa_cmd(tmp_path, *batch), env=_env(sim), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        stats_sim = sim.batch_stats()
        online = sim.request_log()
    assert stats_sim["jobs_created"] == 1 and stats_sim["files_uploaded"] == 1 and online == []
    assert stats_sim["requests_answered"] == count
    stats = read_json(shard.qa_stats(0))
    c = stats["counts"]
    assert c["failures"] == count == c["failures_with_items"] + c["errors"] and c["items"] > 0
    assert stats["teacher"]["by_tier"]["batch"]["answers"] == count
    items = list(iter_jsonl(shard.qa_shard(0)))
    assert len(items) == c["items"] and {it["failure_id"] for it in items} <= {f"{k}-{i}" for k in (
        "color:red", "count:3", "shape:circle") for i in range(12)}
