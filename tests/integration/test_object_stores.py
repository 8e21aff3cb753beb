"""gs:// and s3:// for real: an S3-compatible server (moto) and a GCS emulator, started here as processes.

The steps run through the same code path the pods use — the ``vlmprobe`` console script, with
the endpoint taken from the environment as in a pod (``AWS_ENDPOINT_URL``,
``STORAGE_EMULATOR_HOST``). Nothing needs to be running beforehand.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from vlmprobe.io import Journal, JsonlWriter, RunLayout, iter_jsonl, list_files, read_json, write_json
from vlmprobe.io.fs import atomic_write, exists, list_all, read_bytes, read_range, resolve, write_bytes
from vlmprobe.io.jsonl import iter_lines
from fakes import SIM_PLAN_ARGS

pytestmark = pytest.mark.slow
RUN_DATE = "2026-11-25"
BUCKET = "vlmprobe-test"
BIN = Path(sys.executable).parent


@dataclass
class Store:
    scheme: str
    env: dict[str, str]

    def uri(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{BUCKET}", *parts])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def _server(cmd: list[str], url: str, log: Path) -> Iterator[None]:
    # The servers log every request: to a file, never to a pipe nobody reads (it fills and stalls them).
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(url, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory) -> Iterator[Store]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with _server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], endpoint, log):
        req = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(req, timeout=10)
        yield Store("s3", {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"})


@pytest.fixture(scope="module")
def gcs_store(tmp_path_factory) -> Iterator[Store]:
    log = tmp_path_factory.mktemp("gcs") / "server.log"
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
           "--default-bucket", BUCKET, "--quiet"]
    with _server(cmd, f"{endpoint}/storage/v1/b/{BUCKET}", log):
        yield Store("gs", {"STORAGE_EMULATOR_HOST": endpoint})


@pytest.fixture(params=["s3", "gs"])
def store(request, monkeypatch) -> Store:
    s = request.getfixturevalue("s3_store" if request.param == "s3" else "gcs_store")
    for k, v in s.env.items():
        monkeypatch.setenv(k, v)
    return s


def _fresh(store: Store, name: str) -> str:
    """A folder of its own for one test."""
    return store.uri(f"{name}-{time.monotonic_ns()}")


def test_pyarrow_alone_publishes_a_partial_object_and_atomic_write_does_not(store):
    root = _fresh(store, "atomic")
    fs, path = resolve(f"{root}/raw.jsonl")
    # the problem: pyarrow completes the upload when the block raises
    with pytest.raises(RuntimeError), fs.open_output_stream(path) as f:
        f.write(b"x" * 65_000)
        raise RuntimeError("killed mid-write")
    assert fs.get_file_info(path).size == 65_000
    # the fix: nothing under the final name, no temporary object left, an old version kept
    write_bytes(f"{root}/rank.jsonl", b"old\n")
    with pytest.raises(RuntimeError), JsonlWriter(f"{root}/rank.jsonl") as w:
        for i in range(200):
            w.write({"i": i, "pad": "y" * 300})
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError), atomic_write(f"{root}/never.json") as f:
        f.write("{")
        raise RuntimeError("killed mid-write")
    assert read_bytes(f"{root}/rank.jsonl") == b"old\n" and not exists(f"{root}/never.json")
    assert [u.rsplit("/", 1)[1] for u in list_all(root)] == ["rank.jsonl", "raw.jsonl"]
    with JsonlWriter(f"{root}/rank.jsonl") as w:
        w.write({"i": 1})
    assert list(iter_jsonl(f"{root}/rank.jsonl")) == [{"i": 1}]


def test_listing_and_ranged_reads_match_local_behaviour(store):
    root = _fresh(store, "list")
    for rel in ["a/rank-00000.jsonl", "a/rank-00001.jsonl", "a/_SUCCESS.json", "a/_journal/x.jsonl",
                "a/.rank-00002.jsonl.tmp-00000000", "b.jsonl"]:
        write_bytes(f"{root}/{rel}", b'{"n": 1}\n{"n": 2}\n')
    assert list_files(root, ".jsonl") == [f"{root}/a/rank-00000.jsonl", f"{root}/a/rank-00001.jsonl", f"{root}/b.jsonl"]
    assert read_range(f"{root}/b.jsonl", 9, 17) == b'{"n": 2}'
    assert list(iter_lines(f"{root}/b.jsonl", 9, 18)) == [(9, b'{"n": 2}')]
    with pytest.raises(FileNotFoundError):
        list_files(f"{root}/missing")


def _eventually(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def test_journal_segments_on_an_object_store(store):
    d = _fresh(store, "journal") + "/_journal"
    with Journal(d, "shard-00000", flush_every=3, flush_interval_s=60) as j:
        for i in range(3):
            j.append({"id": str(i)})  # only queued: the flusher thread writes the segments
        assert _eventually(lambda: j.done_ids() == {"0", "1", "2"})  # one segment of 3 ...
        j.append({"id": "3"})
        time.sleep(0.5)
        assert j.done_ids() == {"0", "1", "2"}  # ... the 4th waits in the queue (interval: 60 s)
        j.flush()
        assert j.done_ids() == {"0", "1", "2", "3"}
        j.append({"id": "4"})
    assert Journal(d, "other").done_ids() == {"0", "1", "2", "3", "4"} and len(j.segments()) == 3
    with Journal(d, "shard-00001", flush_every=1000, flush_interval_s=0.3) as idle:
        idle.append({"id": "5"})
        assert _eventually(lambda: "5" in idle.done_ids())  # an idle queue is written after the interval


def _cli(store: Store, sim, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **store.env, "GEMINI_API_KEY": "k", "GEMINI_BASE_URL": sim.base_url}
    return subprocess.run([str(BIN / "vlmprobe"), *args], env=env, capture_output=True, text=True, timeout=600)


def test_the_steps_run_against_the_store_through_the_cli(store, demo_parquet, tiny_llava, gemini_sim, monkeypatch):
    root = _fresh(store, "run")
    for f in sorted(Path(demo_parquet).glob("*.parquet")):
        write_bytes(f"{root}/input/{f.name}", f.read_bytes())
    out = f"{root}/output"
    common = ["--run-date", RUN_DATE, "--output-uri", out]
    probe = _cli(store, gemini_sim, "probe", *common, "--input-uri", f"{root}/input", "--target-model", tiny_llava,
                 "--failure-batch-size", "8", "--concurrency", "4", *SIM_PLAN_ARGS)
    assert probe.returncode == 0, probe.stderr[-3000:]
    lay = RunLayout(out, RUN_DATE)
    success = read_json(lay.probe_success)
    assert success["counts"]["rows"] == 48 and success["failure_files"][0].startswith(f"{store.scheme}://")
    sample = _cli(store, gemini_sim, "sample-keys", *common, "--num-shards", "3", "--samples-per-key", "50")
    assert sample.returncode == 0, sample.stderr[-3000:]
    plan = read_json(lay.shard_plan)
    assert plan["counts"]["input_failures"] == success["counts"]["verified"] > 0
    for shard in plan["shards"]:
        qa = _cli(store, gemini_sim, "qa", *common, "--shard-index", str(shard["shard_index"]), "--concurrency", "4")
        assert qa.returncode == 0, qa.stderr[-3000:]
    pub = _cli(store, gemini_sim, "publish", *common)
    assert pub.returncode == 0, pub.stderr[-3000:]
    manifest = read_json(lay.manifest)
    assert manifest["sample"]["counts"]["sampled"] == plan["counts"]["sampled"]
    assert manifest["qa"]["counts"]["failures"] == plan["counts"]["sampled"]
    assert manifest["qa"]["counts"]["items"] == sum(1 for s in plan["shards"] for _ in iter_jsonl(lay.qa_shard(s["shard_index"])))
    # nothing temporary is left anywhere on the store
    assert not [u for u in list_all(lay.root) if "/." in u]

    # a sample rerun with fewer shards: no stale QA shard, no stale manifest, on the store too;
    # the images are embedded from the parquet files on the store
    again = _cli(store, gemini_sim, "sample-keys", *common, "--num-shards", "1", "--embed-images", "true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not exists(lay.manifest) and not [u for u in list_all(lay.qa_dir) if "shard-" in u]
    embedded = list(iter_jsonl(lay.sampled_failures()))
    assert len(embedded) == plan["counts"]["sampled"] and all(r["image_b64"] for r in embedded)

    # an injected failure while the sample is written leaves no object under the final name
    from vlmprobe.config import SampleConfig
    from vlmprobe.sample import run as sample_run

    calls = {"n": 0}
    real = sample_run._output_line

    def fail_on_the_third_record(line, mode):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("connection reset while writing")
        return real(line, mode)

    monkeypatch.setattr(sample_run, "_output_line", fail_on_the_third_record)
    with pytest.raises(OSError, match="connection reset"):
        sample_run.sample_keys(SampleConfig(output_uri=out, run_date=RUN_DATE))
    assert not exists(lay.sampled_failures()) and not exists(lay.shard_plan)
    assert not [u for u in list_all(lay.sample_dir)]


def test_credentials_and_endpoint_come_from_the_environment(store):
    fs, path = resolve(store.uri("x/y.json"))
    assert path == f"{BUCKET}/x/y.json"
    assert isinstance(fs, pafs.S3FileSystem if store.scheme == "s3" else pafs.GcsFileSystem)
    write_json(store.uri("env-check.json"), {"ok": True})
    assert json.loads(read_bytes(store.uri("env-check.json"))) == {"ok": True}


def test_the_preflight_checks_input_and_output_on_the_store(store, demo_parquet):
    """The probe's Airflow-side preflight against gs:// and s3:// (issue 15): a dated input found, a marker
    written and deleted under the output; a missing or parquet-less input fails without a retry."""
    import types

    import pendulum
    from airflow.sdk.exceptions import AirflowFailException

    from vlmprobe.params import defaults
    from vlmprobe.preflight import preflight

    root = _fresh(store, "preflight")
    for f in sorted(Path(demo_parquet).glob("*.parquet")):
        write_bytes(f"{root}/in/{RUN_DATE}/{f.name}", f.read_bytes())
    write_bytes(f"{root}/notes/{RUN_DATE}/notes.txt", b"no parquet here")
    night = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
    run = types.SimpleNamespace(data_interval_start=night, logical_date=night, run_after=None, conf={})
    params = {**defaults(), "target_model": "/models/tiny", "input_uri": f"{root}/in/{{run_date}}",
              "output_uri": f"{root}/out"}
    preflight({"params": params, "dag_run": run})
    assert list_all(f"{root}/out") == []  # the marker is gone again
    with pytest.raises(AirflowFailException, match=rf"input {root}/missing/{RUN_DATE} .* does not exist"):
        preflight({"params": {**params, "input_uri": f"{root}/missing/{{run_date}}"}, "dag_run": run})
    with pytest.raises(AirflowFailException, match=rf"input {root}/notes/{RUN_DATE} .* holds no .parquet files"):
        preflight({"params": {**params, "input_uri": f"{root}/notes/{{run_date}}"}, "dag_run": run})


def test_the_report_is_stored_as_html_and_its_link_serves_it(store):
    """The report's object keeps ``Content-Type: text/html`` through the atomic write's final copy (a browser
    shows it rather than downloading it), and the report link on an emulator's endpoint fetches it."""
    from vlmprobe.report.link import report_url
    from vlmprobe.report.render import HTML

    uri = f"{_fresh(store, 'report')}/2026-11-25/report.html"
    page = "<!DOCTYPE html><html><body>the night</body></html>"
    write_bytes(uri, page.encode(), content_type=HTML)
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        meta = {k.lower(): v for k, v in dict(f.metadata()).items()}
    assert meta.get("content-type", meta.get("contenttype", b"")).startswith(b"text/html"), meta
    if store.scheme == "s3":
        # a private bucket refuses the browser's anonymous GET: the link needs a readable bucket or the store's login
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(report_url(uri), timeout=10)
        return
    with urllib.request.urlopen(report_url(uri), timeout=10) as resp:  # the GCS emulator serves anyone
        assert resp.headers["Content-Type"].startswith("text/html") and resp.read().decode() == page
