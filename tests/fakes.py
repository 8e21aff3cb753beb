"""Fabricated step outputs for tests of the later steps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from vlmprobe.contracts import (InputAccounting, PipelineSummary, ProbeCounts, ProbeRankStats, ProbeSuccess, QACounts,
                                QAShardStats, RankPipeline, TargetCheckStats, TokenCounts)
from vlmprobe.io import JsonlWriter, RunLayout, list_files

RUN_DATE = "2026-11-25"
# The simulator answers in milliseconds: a probe against it plans with that (the param's default,
# Gemini's ~5 s, would leave most wrong answers unexplained at a test's small concurrency).
SIM_PLAN = {"teacher_latency_s": 0.05}
SIM_PLAN_ARGS = ["--teacher-latency-s", "0.05"]


def fake_pipeline(wall: float = 1.0, busy: float = 0.5, teacher_wait: float = 0.0, bound: str = "target",
                  tail: float = 0.0) -> RankPipeline:
    """One rank's pipeline stats, made up."""
    return RankPipeline(wall_s=wall, device_busy_s=busy, input_wait_s=0.5, teacher_wait_s=teacher_wait, tail_s=tail,
                        prepare_s=0.1, read_s=0.1, batches=2, busy_fraction=busy / wall, bound=bound)


def fake_rank(lay: RunLayout, rank: int, *, teacher: dict[str, Any] | None = None,
              pipeline: RankPipeline | None = None) -> ProbeRankStats:
    """One rank's stats in ``_SUCCESS.json``, made up (its counts are not summed into the step's)."""
    return ProbeRankStats(
        rank=rank, work_units=1, files=[], failures_uri=lay.probe_rank(rank), errors_uri=lay.probe_errors(rank),
        counts=ProbeCounts(rows=0, passed=0, wrong=0, verified=0, rejected=0, errors=0, read_errors=0, resumed=0,
                           probed=0),
        input=InputAccounting(files=0, files_lost=0, files_lost_rows_unknown=0, row_groups=0, row_groups_lost=0,
                              rows_read=0, rows_lost=0),
        error_reasons={}, tokens={}, teacher=teacher or {}, pipeline=pipeline or fake_pipeline(),
        finished_at=0.0, elapsed_s=1.0)


def fake_success(lay: RunLayout, failure_files: list[str], *, verified: int = 0, **fields: Any) -> ProbeSuccess:
    """Write ``probe/_SUCCESS.json`` as rank 0 would, with made-up figures; ``fields`` replace any of them.

    The counts add up: ``verified`` failures among ``verified + 5`` rows (3 passed, 1 rejected, 1 error).
    """
    rows = verified + 5
    values: dict[str, Any] = dict(
        run_date=lay.run_date, world_size=len(failure_files), input_uri="/in", input_files=[],
        failure_files=failure_files, error_files=[lay.probe_errors(r) for r in range(len(failure_files))],
        counts=ProbeCounts(rows=rows, passed=3, wrong=verified + 1, verified=verified, rejected=1, errors=1,
                           read_errors=0, resumed=0, probed=rows),
        input=InputAccounting(files=1, files_lost=0, files_lost_rows_unknown=0, row_groups=1, row_groups_lost=0,
                              rows_read=rows, rows_lost=0),
        error_reasons={"image_unreadable": 1}, tokens={"prompt_tokens": 1000, "output_tokens": 100}, teacher={},
        pipeline=PipelineSummary(ranks=len(failure_files), wall_s=1.0, device_busy_s=0.5, input_wait_s=0.0,
                                 teacher_wait_s=0.0, tail_s=0.0, busy_fraction=0.5, bound="target",
                                 devices_for_same_time=1),
        target_model="tiny", teacher_model="gemini-2.5-flash", template_version="v1", ranks=[],
        started_at="2026-11-26T02:00:00+00:00", elapsed_s=1.0)
    success = ProbeSuccess(**{**values, **fields})
    success.write(lay.probe_success)
    return success


def fake_probe(out: str, parquet_dir: str, per_key: dict[str, int], ranks: int = 2) -> RunLayout:
    """Write probe/rank-*.jsonl and _SUCCESS.json as step 1 would, pointing at real parquet rows."""
    lay = RunLayout(out, RUN_DATE)
    files = list_files(parquet_dir, ".parquet")
    records = []
    for key, n in per_key.items():
        for i in range(n):
            records.append({"id": f"{key}-{i}", "failure_key": key, "image": {"uri": files[i % len(files)], "row": 3 + i % 5},
                            "question": "q?", "answer": "red", "prediction": "blue",
                            "factor": {"category": key.split(":")[0], "completion": f"c {key}"}})
    for r in range(ranks):
        with JsonlWriter(lay.probe_rank(r)) as w:
            for rec in records[r::ranks]:
                w.write(rec)
    fake_success(lay, [lay.probe_rank(r) for r in range(ranks)], verified=len(records), input_files=files)
    return lay


def fake_qa_stats(lay: RunLayout, index: int, counts: QACounts, *, error_reasons: dict[str, int] | None = None,
                  elapsed_s: float = 0.1, checked: bool = False, tokens: TokenCounts | None = None,
                  teacher: dict[str, Any] | None = None) -> QAShardStats:
    """Write ``qa/_shard-NNNNN.stats.json`` as a QA shard would, with made-up figures."""
    stats = QAShardStats(
        shard_index=index, qa_uri=lay.qa_shard(index), errors_uri=lay.qa_errors(index), counts=counts,
        error_reasons=error_reasons or {},
        tokens=tokens or TokenCounts(prompt_tokens=10, output_tokens=5, thinking_tokens=0, cached_tokens=0),
        teacher=teacher or {}, teacher_model="gemini-2.5-flash",
        target_check=TargetCheckStats(enabled=checked, mode="on" if checked else "off", keep="all",
                                      target_model="tiny" if checked else None, device="cpu" if checked else None,
                                      busy_s=0.0, batches=0),
        elapsed_s=elapsed_s)
    stats.write(lay.qa_stats(index))
    return stats


def crash_qa_shard_on(monkeypatch, n: int):
    """The QA shard's ``n``-th failure raises ``RuntimeError("pod evicted")``, a pod killed mid-shard.

    Returns the undo (the real handler back) for the rerun.
    """
    from vlmprobe.qa import items as qa_items

    real = qa_items.ShardQA.handle
    calls = {"n": 0}

    async def handle(self, seq, rec, image):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("pod evicted")
        return await real(self, seq, rec, image)

    monkeypatch.setattr(qa_items.ShardQA, "handle", handle)
    return lambda: monkeypatch.setattr(qa_items.ShardQA, "handle", real)


@contextlib.contextmanager
def chat_server(answer: Callable[[str], str]) -> Iterator[tuple[str, list[tuple[str, str | None, dict]]]]:
    """A tiny OpenAI-compatible server on loopback (``/v1/chat/completions``; anything else 404):
    each request's first text part goes to ``answer``, whose return is the reply. Yields (its
    base URL, the requests as (path, Authorization header, body))."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    requests: list[tuple[str, str | None, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append((self.path, self.headers.get("Authorization"), body))
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            text = next(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer(text)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
