"""Clean reruns (RunLayout.invalidate), local atomic writes and listing, and the local resume journal."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from vlmprobe.io import Journal, RunLayout, list_files
from vlmprobe.io.fs import atomic_write

RUN_DATE = "2026-11-25"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _full_run(root: Path) -> RunLayout:
    """Every kind of file a finished run (and a killed writer) leaves under the run date."""
    lay = RunLayout(str(root), RUN_DATE)
    d = root / RUN_DATE
    for rel in ["probe/rank-00000.jsonl", "probe/rank-00001.jsonl", "probe/_SUCCESS.json",
                "probe/_journal/rank-00000.a.jsonl", "probe/.rank-00001.jsonl.tmp-1234abcd",
                "sample/failures.jsonl", "sample/shards.json", "sample/.failures.jsonl.tmp-00ff00ff",
                "qa/shard-00000.jsonl", "qa/shard-00001.jsonl", "qa/shard-00002.jsonl",
                "qa/_shard-00000.stats.json", "qa/_shard-00001.stats.json", "qa/.shard-00001.jsonl.tmp-aaaa0000",
                "qa/_journal/shard-00001.b.jsonl",
                "errors/probe-rank-00000.jsonl", "errors/.probe-rank-00001.jsonl.tmp-deadbeef",
                "errors/sample.jsonl", "errors/qa-shard-00000.jsonl", "errors/qa-shard-00001.jsonl",
                "errors/.qa-shard-00001.jsonl.tmp-beefbeef",
                "_teacher/ledger.json", "_teacher/.ledger.json.tmp-12345678",
                "manifest.json", ".manifest.json.tmp-cafecafe"]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("{}\n")
    return lay


KEPT_ALWAYS = {"probe/_journal/rank-00000.a.jsonl", "qa/_journal/shard-00001.b.jsonl", "_teacher/ledger.json", "_teacher/.ledger.json.tmp-12345678"}


def test_a_probe_rerun_invalidates_everything_downstream_but_resume_state(tmp_path):
    lay = _full_run(tmp_path)
    removed = lay.invalidate("probe")
    assert _tree(tmp_path / RUN_DATE) == KEPT_ALWAYS
    assert lay.manifest in removed and len(removed) == 25 - len(KEPT_ALWAYS)


def test_a_sample_rerun_keeps_probe_outputs(tmp_path):
    lay = _full_run(tmp_path)
    lay.invalidate("sample")
    probe = {"probe/rank-00000.jsonl", "probe/rank-00001.jsonl", "probe/_SUCCESS.json",
             "probe/.rank-00001.jsonl.tmp-1234abcd", "errors/probe-rank-00000.jsonl",
             "errors/.probe-rank-00001.jsonl.tmp-deadbeef"}
    assert _tree(tmp_path / RUN_DATE) == KEPT_ALWAYS | probe


def test_a_qa_shard_rerun_touches_only_its_shard_and_the_manifest(tmp_path):
    lay = _full_run(tmp_path)
    before = _tree(tmp_path / RUN_DATE)
    lay.invalidate("qa", shard_index=1)
    gone = before - _tree(tmp_path / RUN_DATE)
    assert gone == {"qa/shard-00001.jsonl", "qa/_shard-00001.stats.json", "qa/.shard-00001.jsonl.tmp-aaaa0000",
                    "errors/qa-shard-00001.jsonl", "errors/.qa-shard-00001.jsonl.tmp-beefbeef", "manifest.json",
                    ".manifest.json.tmp-cafecafe"}
    lay = _full_run(tmp_path)
    assert {u.rsplit("/", 1)[1] for u in lay.invalidate("publish")} == {"manifest.json", ".manifest.json.tmp-cafecafe"}
    with pytest.raises(ValueError, match="unknown step"):
        lay.invalidate("nonsense")
    assert RunLayout(str(tmp_path / "nothing-yet"), RUN_DATE).invalidate("probe") == []


def test_listing_skips_hidden_and_underscore_paths(tmp_path):
    lay = _full_run(tmp_path)
    assert list_files(lay.root, ".jsonl") == sorted(str(tmp_path / RUN_DATE / p) for p in [
        "probe/rank-00000.jsonl", "probe/rank-00001.jsonl", "sample/failures.jsonl", "qa/shard-00000.jsonl",
        "qa/shard-00001.jsonl", "qa/shard-00002.jsonl", "errors/probe-rank-00000.jsonl", "errors/sample.jsonl",
        "errors/qa-shard-00000.jsonl", "errors/qa-shard-00001.jsonl"])


def test_atomic_write_replaces_or_leaves_nothing(tmp_path):
    uri = str(tmp_path / "d" / "x.bin")
    with atomic_write(uri, "wb") as f:
        f.write(b"old")
    with pytest.raises(RuntimeError), atomic_write(uri, "wb") as f:
        f.write(b"partial new")
        raise RuntimeError("crash")
    assert Path(uri).read_bytes() == b"old" and os.listdir(tmp_path / "d") == ["x.bin"]


# -- journal ----------------------------------------------------------------------------------

def test_journal_resumes_across_attempts_and_writers(tmp_path):
    d = str(tmp_path / "_journal")
    with Journal(d, "rank-00000") as j:
        assert list(j.finished()) == [] and j.done_ids() == set()
        j.append({"id": "a", "out": 1})
        j.append({"id": "b", "out": 2})
        assert j.done_ids() == {"a", "b"}  # flushed per record: readable at once
    with Journal(d, "rank-00001") as j:
        j.append({"id": "c", "error": "teacher_http_503"})
    again = Journal(d, "rank-00000")
    assert again.done_ids() == {"a", "b", "c"}
    assert [r["id"] for r in again.finished()] == ["a", "b", "c"]  # oldest attempt first
    again.append({"id": "d"})
    again.close()
    assert len(again.segments()) == 3  # one segment per attempt, never appended to by another
    again.clear()
    assert not (tmp_path / "_journal").exists()
    with pytest.raises(ValueError):
        Journal(d, "../escape")


def _append_forever(d: str) -> None:
    with Journal(d, "victim") as j:
        i = 0
        while True:
            j.append({"id": str(i), "pad": "x" * 2000})
            i += 1


def test_a_killed_writer_loses_at_most_the_record_in_flight(tmp_path):
    d = str(tmp_path / "_journal")
    p = multiprocessing.get_context("spawn").Process(target=_append_forever, args=(d,))
    p.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "_journal").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    (segment,) = (tmp_path / "_journal").iterdir()
    with open(segment, "ab") as f:
        f.write(b'{"id": "torn", "pad": "xx')  # what a kill mid-write leaves
    ids = [r["id"] for r in Journal(d, "reader").finished()]
    assert len(ids) > 10 and ids == [str(i) for i in range(len(ids))]  # every finished one, in order
    lines = segment.read_bytes().split(b"\n")
    assert len(ids) == len(lines) - 1  # only the torn last line was dropped
    json.loads(lines[-2])


# -- journal on an object store: the flusher thread does the I/O ------------------------------

class FakeStore:
    """Stands in for the object-store write of journal segments: records who wrote what, can hold or fail writes."""

    def __init__(self, hold: bool = False, fail: int = 0) -> None:
        import threading

        self.objects: dict[str, bytes] = {}
        self.threads: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail

    def write_bytes(self, uri: str, data: bytes) -> None:
        import threading

        self.threads.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(10), "the test never released the write"
        if self.fail:
            self.fail -= 1
            raise OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.")
        self.objects[uri] = data

    def ids(self) -> list[str]:
        return [json.loads(line)["id"] for uri in sorted(self.objects) for line in self.objects[uri].splitlines()]


def test_append_returns_while_a_segment_upload_is_still_in_progress(monkeypatch):
    import asyncio
    import threading

    import vlmprobe.io.journal as journal_mod

    store = FakeStore(hold=True)
    monkeypatch.setattr(journal_mod, "write_bytes", store.write_bytes)
    j = Journal("s3://bucket/run/qa/_journal/shard-00000", "shard-00000", flush_every=4, flush_interval_s=60)

    async def consumer() -> str:
        # as the QA step does: records appended from the event loop as Gemini answers arrive
        for i in range(4):
            j.append({"id": str(i)})
        assert await asyncio.to_thread(store.started.wait, 10)  # the 4th record started an upload...
        for i in range(4, 9):
            j.append({"id": str(i)})  # ...which is held: were append waiting for it, this would hang
        assert store.objects == {} and not store.release.is_set()  # still uploading, and appends returned
        return threading.current_thread().name

    loop_thread = asyncio.run(consumer())
    store.release.set()
    j.close()
    assert store.ids() == [str(i) for i in range(9)]  # nothing lost, in order: 4 in the first segment, 5 next
    assert [len(v.splitlines()) for _, v in sorted(store.objects.items())] == [4, 5]
    assert store.threads == ["journal-shard-00000"] * 2 and loop_thread not in store.threads


def test_a_store_error_is_retried_then_raised_by_the_next_append_and_no_record_is_lost(monkeypatch):
    import vlmprobe.io.journal as journal_mod

    store = FakeStore(fail=1)
    monkeypatch.setattr(journal_mod, "write_bytes", store.write_bytes)
    j = Journal("gs://bucket/_journal", "w", flush_every=2, flush_interval_s=60)
    j.retry_backoff_s = 0.01
    j.append({"id": "a"})
    j.append({"id": "b"})  # the first write fails once and its retry succeeds: nothing to report
    j.flush()
    assert store.ids() == ["a", "b"] and len(store.threads) == 2

    store.fail = 2  # one try and one retry: the write fails for good
    j.write_retries = 1
    j.append({"id": "c"})
    j.append({"id": "d"})
    appended, deadline = ["c", "d"], time.monotonic() + 10
    with pytest.raises(OSError, match=r"writing a segment failed, \d+ record\(s\) wait for the next try: .*SLOW_DOWN"):
        while time.monotonic() < deadline:  # the failure surfaces at the next append after the flusher gave up
            appended.append(f"x{len(appended)}")
            j.append({"id": appended[-1]})
            time.sleep(0.01)
    appended.pop()  # the append that raised did not record its record
    j.close()  # the store answers again: the records kept queued are written
    assert store.ids() == ["a", "b", *appended]


def test_close_raises_when_the_last_records_cannot_be_written(monkeypatch):
    import vlmprobe.io.journal as journal_mod

    store = FakeStore(fail=10**6)
    monkeypatch.setattr(journal_mod, "write_bytes", store.write_bytes)
    j = Journal("s3://bucket/_journal", "w", flush_every=100, flush_interval_s=60)
    j.write_retries, j.retry_backoff_s = 1, 0.01
    j.append({"id": "a"})
    with pytest.raises(OSError, match=r"1 record\(s\) could not be written: .*SLOW_DOWN"):
        j.close()
    assert store.objects == {} and set(store.threads) == {"journal-w"}
