"""Step 3: one shard of ``sample/failures.*`` → ``qa/shard-NNNNN.jsonl``.

Reads the shard's slice ``[start, stop)`` of the sampled failures (``sample/shards.json``) in
batches of ``batch_size``, asks the teacher for QA pairs probing each failure's factor —
concurrently (at most ``concurrency`` requests in flight, starts spaced by ``request_delay``,
retries in the client) or one at a time with ``no_async`` — and writes the items. A failure
that yields no valid item after the retry budget goes to ``errors/qa-shard-NNNNN.jsonl`` with
the reason; one bad request never stops the others. ``qa/_shard-NNNNN.stats.json`` (counts,
tokens, timings) is written last and marks the shard complete.

Safe to rerun: each finished batch is checkpointed under ``qa/_checkpoint-NNNNN/``, so a retried
pod resumes where the last attempt stopped (same plan and settings only, never mixing two), and
the output files are replaced, never appended.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from vlmprobe.config import QAConfig
from vlmprobe.io import (JsonlWriter, RunLayout, exists, iter_json_records, iter_jsonl, join, read_bytes,
                         read_json, remove_tree, write_json)
from vlmprobe.records import error_record, stable_id

log = logging.getLogger("vlmprobe.qa")


def clean_items(items: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep the QA pairs that hold together; return (kept, reasons for the dropped ones)."""
    kept, dropped = [], []
    for it in items:
        q, a = it.question.strip(), it.answer.strip()
        choices = [c.strip() for c in it.choices if c.strip()]
        if not q or not a:
            dropped.append("empty question or answer")
            continue
        if it.answer_type == "yes_no":
            a = a.lower().rstrip(".!")
            if a not in ("yes", "no"):
                dropped.append(f"yes_no answer {it.answer!r} is neither yes nor no")
                continue
            choices = ["yes", "no"]
        elif it.answer_type == "multiple_choice":
            match = [c for c in choices if c.lower() == a.lower()]
            if len(choices) < 2 or not match:
                dropped.append(f"multiple_choice answer {it.answer!r} is not one of {choices}")
                continue
            a = match[0]
        else:
            choices = []
        kept.append({"question": q, "answer": a, "answer_type": it.answer_type, "choices": choices,
                     "rationale": it.rationale.strip()})
    return kept, dropped


@dataclass
class BatchResult:
    """What one batch of failures produced: records for the output files, and counts."""

    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    error_reasons: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)

    def merge_counts(self, other: BatchResult) -> None:
        self.counts.update(other.counts)
        self.error_reasons.update(other.error_reasons)
        self.tokens.update(other.tokens)


class ShardQA:
    """Turns failures into QA items with the teacher; one failure never stops the others."""

    def __init__(self, cfg: QAConfig, teacher, progress) -> None:
        self.cfg, self.teacher, self.progress = cfg, teacher, progress

    def _error(self, out: BatchResult, rec: dict[str, Any], reason: str, detail: str) -> None:
        out.errors.append(error_record("qa", reason, detail, id=rec.get("id"), image=rec.get("image"),
                                       failure_key=rec.get("failure_key"), run_date=self.cfg.run_date,
                                       shard_index=self.cfg.shard_index))
        out.counts["errors"] += 1
        out.error_reasons[reason] += 1

    async def batch(self, records: list[dict[str, Any]]) -> BatchResult:
        out = BatchResult()
        out.counts["failures"] = len(records)
        images = await asyncio.to_thread(_load_images, records)
        if self.cfg.no_async:
            for rec, img in zip(records, images):
                await self.handle(out, rec, img)
        else:
            await asyncio.gather(*(self.handle(out, r, i) for r, i in zip(records, images)))
        return out

    async def handle(self, out: BatchResult, rec: dict[str, Any], image: bytes | Exception) -> None:
        """One failure → QA items or one error row; the progress bar moves when it is done."""
        try:
            await self._handle(out, rec, image)
        finally:
            self.progress.update(1)

    async def _handle(self, out: BatchResult, rec: dict[str, Any], image: bytes | Exception) -> None:
        from vlmprobe.images import decode
        from vlmprobe.teacher.client import TeacherError
        from vlmprobe.teacher.prompts import qa_prompt
        from vlmprobe.teacher.schemas import QASet

        try:
            if isinstance(image, Exception):
                raise image
            _, data, mime = decode(image)
        except (ValueError, OSError, KeyError, IndexError) as e:
            self._error(out, rec, "image_unreadable", str(e))
            return
        factor = rec["factor"]
        prompt = qa_prompt(rec["question"], rec["answer"], rec["prediction"], rec["failure_key"],
                           factor["completion"], self.cfg.max_items)
        try:
            result = await self.teacher.generate(prompt, QASet, images=[(data, mime)], kind="qa")
        except TeacherError as e:
            if e.usage is not None:  # failed attempts are billed too
                out.tokens.update(prompt_tokens=e.usage.prompt_tokens, output_tokens=e.usage.output_tokens)
            self._error(out, rec, f"teacher_{e.reason}", str(e))
            return
        usage = {"prompt_tokens": result.usage.prompt_tokens, "output_tokens": result.usage.output_tokens}
        out.tokens.update(usage)
        kept, dropped = clean_items(result.parsed.items)
        out.counts["items_dropped"] += len(dropped)
        if not kept:
            self._error(out, rec, "no_valid_items", "; ".join(dropped))
            return
        for i, item in enumerate(kept):
            out.items.append({
                "id": stable_id(rec["id"], self.cfg.run_date, i),
                "failure_id": rec["id"],
                "failure_key": rec["failure_key"],
                **item,
                "image": rec["image"],
                "teacher_model": self.cfg.gemini_model,
                "run_date": self.cfg.run_date,
                # the request that produced this item and its siblings
                "usage": usage,
            })
        out.counts["items"] += len(kept)
        out.counts["failures_with_items"] += 1


class Checkpoint:
    """Finished batches of a shard, kept so a retried pod resumes instead of paying Gemini again.

    ``qa/_checkpoint-NNNNN/`` holds a fingerprint of what the batches depend on (the shard plan,
    batch size, model, items per failure) and one file per finished batch, written atomically
    (so object stores work too). A different fingerprint means a different job: the old
    checkpoint is discarded, never mixed in. Removed once the shard's outputs are written.
    """

    def __init__(self, layout: RunLayout, cfg: QAConfig, fingerprint: dict[str, Any]) -> None:
        self.dir = join(layout.qa_dir, f"_checkpoint-{cfg.shard_index:05d}")
        self.fingerprint = fingerprint
        marker = join(self.dir, "fingerprint.json")
        if exists(marker) and read_json(marker) != fingerprint:
            log.warning("discarding the checkpoint of shard %d: it was made for other settings", cfg.shard_index)
            remove_tree(self.dir)
        if not exists(marker):
            write_json(marker, fingerprint)

    def part(self, n: int) -> str:
        return join(self.dir, f"batch-{n:05d}.jsonl")

    def load(self, n: int) -> BatchResult | None:
        """Counts of batch ``n`` if it finished in an earlier attempt (its records stay on disk)."""
        if not exists(self.part(n)):
            return None
        done = BatchResult()
        for line in iter_jsonl(self.part(n)):
            if line["kind"] == "summary":
                done.counts.update(line["counts"])
                done.error_reasons.update(line["error_reasons"])
                done.tokens.update(line["tokens"])
        return done

    def save(self, n: int, result: BatchResult) -> None:
        with JsonlWriter(self.part(n)) as w:
            for item in result.items:
                w.write({"kind": "item", "record": item})
            for err in result.errors:
                w.write({"kind": "error", "record": err})
            w.write({"kind": "summary", "counts": result.counts, "error_reasons": result.error_reasons,
                     "tokens": result.tokens})

    def records(self, n_batches: int, kind: str) -> Iterator[dict[str, Any]]:
        for n in range(n_batches):
            for line in iter_jsonl(self.part(n)):
                if line["kind"] == kind:
                    yield line["record"]

    def remove(self) -> None:
        remove_tree(self.dir)


def _load_images(records: list[dict[str, Any]]) -> list[bytes | Exception]:
    """Image bytes for each record: embedded base64, or read by reference (each file once)."""
    from vlmprobe.io.parquet import cell_image_bytes, read_cells

    out: list[bytes | Exception] = [b""] * len(records)
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.get("image_b64"):
            out[i] = base64.b64decode(r["image_b64"])
        else:
            by_file[r["image"]["uri"]].append(i)
    for uri, idx in by_file.items():
        try:
            cells = read_cells(uri, [records[i]["image"]["row"] for i in idx], ["image"])
        except Exception as e:  # unreadable now: every record of the file gets the reason
            for i in idx:
                out[i] = ValueError(f"{uri}: {e}")
            continue
        for i in idx:
            try:
                out[i] = cell_image_bytes(cells, records[i]["image"]["row"], uri)
            except (ValueError, OSError) as e:
                out[i] = e
    return out


def run_shard(cfg: QAConfig) -> dict[str, Any]:
    """Run step 3 for one shard; returns a small summary for XCom.

    Each finished batch is checkpointed: a retried pod skips the batches an earlier attempt
    finished with the same settings (``resumed`` in the stats counts their failures).
    """
    from vlmprobe.progress import Progress
    from vlmprobe.teacher.factory import make_teacher

    t0 = time.monotonic()
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    if not exists(layout.shard_plan):
        raise FileNotFoundError(f"{layout.shard_plan} is missing: run sample_keys for {cfg.run_date} first")
    plan_bytes = read_bytes(layout.shard_plan)
    plan = json.loads(plan_bytes)
    if cfg.shard_index >= plan["num_shards"]:
        raise ValueError(f"shard {cfg.shard_index} does not exist: the plan has {plan['num_shards']} shard(s)")
    shard = plan["shards"][cfg.shard_index]
    checkpoint = Checkpoint(layout, cfg, {
        "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(), "shard": shard, "batch_size": cfg.batch_size,
        "gemini_model": cfg.gemini_model, "max_items": cfg.max_items})
    records = islice(iter_json_records(plan["failures_uri"]), shard["start"], shard["stop"])
    total = BatchResult()

    async def _run() -> tuple[int, dict[str, Any]]:
        n = 0
        with Progress(total=shard["count"], desc=f"qa shard {cfg.shard_index}", unit="failures",
                      logger=log) as progress:
            async with make_teacher(cfg) as teacher:
                work = ShardQA(cfg, teacher, progress)
                while batch := list(islice(records, cfg.batch_size)):
                    done = checkpoint.load(n)
                    if done is not None and done.counts["failures"] == len(batch):
                        total.merge_counts(done)
                        total.counts["resumed"] += len(batch)
                        progress.update(len(batch))
                    else:
                        result = await work.batch(batch)
                        checkpoint.save(n, result)
                        total.merge_counts(result)
                    n += 1
                return n, dict(teacher.stats)

    n_batches, teacher_stats = asyncio.run(_run())
    c = total.counts
    if c["failures"] != shard["count"] or c["failures"] != c["failures_with_items"] + c["errors"]:
        raise RuntimeError(f"qa shard {cfg.shard_index} lost records: {dict(c)}, expected {shard['count']}")
    with JsonlWriter(layout.qa_shard(cfg.shard_index)) as out:
        for item in checkpoint.records(n_batches, "item"):
            out.write(item)
    with JsonlWriter(layout.qa_errors(cfg.shard_index)) as errors:
        for err in checkpoint.records(n_batches, "error"):
            errors.write(err)
    if out.count != c["items"] or errors.count != c["errors"]:
        raise RuntimeError(f"qa shard {cfg.shard_index}: checkpoint holds {out.count} items and {errors.count} "
                           f"errors, counts say {dict(c)}")
    stats = {
        "shard_index": cfg.shard_index,
        "qa_uri": layout.qa_shard(cfg.shard_index),
        "errors_uri": layout.qa_errors(cfg.shard_index),
        "counts": {k: c[k] for k in ("failures", "failures_with_items", "errors", "items", "items_dropped",
                                     "resumed")},
        "error_reasons": dict(total.error_reasons),
        "tokens": dict(total.tokens),
        "teacher": teacher_stats,
        "teacher_model": cfg.gemini_model,
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
    write_json(layout.qa_stats(cfg.shard_index), stats)
    checkpoint.remove()
    log.info("shard %d: %s", cfg.shard_index, stats["counts"])
    return {k: stats[k] for k in ("shard_index", "qa_uri", "counts")}
