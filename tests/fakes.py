"""Fabricated step outputs for tests of the later steps."""

from __future__ import annotations

from vlmprobe.io import JsonlWriter, RunLayout, list_files, write_json

RUN_DATE = "2026-11-25"


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
    n = len(records)
    write_json(lay.probe_success, {
        "failure_files": [lay.probe_rank(r) for r in range(ranks)], "world_size": ranks, "input_files": files,
        "counts": {"rows": n + 5, "passed": 3, "wrong": n + 1, "verified": n, "rejected": 1, "errors": 1},
        "tokens": {"prompt_tokens": 1000, "output_tokens": 100}, "target_model": "tiny", "teacher_model": "gemini-2.5-flash",
        "elapsed_s": 1.0})
    return lay


def crash_qa_shard_on(monkeypatch, n: int):
    """The QA shard's ``n``-th failure raises ``RuntimeError("pod evicted")``, a pod killed mid-shard.

    Returns the undo (the real handler back) for the rerun.
    """
    from vlmprobe.qa import run as qa_run

    real = qa_run.ShardQA.handle
    calls = {"n": 0}

    async def handle(self, seq, rec, image):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("pod evicted")
        return await real(self, seq, rec, image)

    monkeypatch.setattr(qa_run.ShardQA, "handle", handle)
    return lambda: monkeypatch.setattr(qa_run.ShardQA, "handle", real)
