"""Step 3: one shard of ``sample/failures.*`` → ``qa/shard-NNNNN.jsonl``.

Reads the shard's slice ``[start, stop)`` of the sampled failures (``sample/shards.json``) in
batches of ``batch_size``, asks the teacher for QA pairs probing each failure's factor —
concurrently (at most ``concurrency`` requests in flight, starts spaced by ``request_delay``,
retries in the client) or one at a time with ``no_async`` — and writes the items. A failure
that yields no valid item after the retry budget goes to ``errors/qa-shard-NNNNN.jsonl`` with
the reason; one bad request never stops the others. ``qa/_shard-NNNNN.stats.json`` (counts,
tokens, timings) is written last and marks the shard complete. Safe to rerun: files are
replaced, never appended.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from collections import Counter, defaultdict
from itertools import islice
from typing import Any

from vlmprobe.config import QAConfig
from vlmprobe.io import JsonlWriter, RunLayout, exists, iter_json_records, read_json, write_json
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


class ShardQA:
    def __init__(self, cfg: QAConfig, teacher, out: JsonlWriter, errors: JsonlWriter, progress) -> None:
        self.cfg, self.teacher, self.out, self.errors, self.progress = cfg, teacher, out, errors, progress
        self.counts: Counter[str] = Counter()
        self.error_reasons: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()

    def _error(self, rec: dict[str, Any], reason: str, detail: str) -> None:
        self.errors.write(error_record("qa", reason, detail, id=rec.get("id"), image=rec.get("image"),
                                       failure_key=rec.get("failure_key"), run_date=self.cfg.run_date,
                                       shard_index=self.cfg.shard_index))
        self.counts["errors"] += 1
        self.error_reasons[reason] += 1

    async def handle(self, rec: dict[str, Any], image: bytes | Exception) -> None:
        """One failure → QA items or one error row; the progress bar moves when it is done."""
        try:
            await self._handle(rec, image)
        finally:
            self.progress.update(1)

    async def _handle(self, rec: dict[str, Any], image: bytes | Exception) -> None:
        from vlmprobe.images import decode
        from vlmprobe.teacher.client import TeacherError
        from vlmprobe.teacher.prompts import qa_prompt
        from vlmprobe.teacher.schemas import QASet

        try:
            if isinstance(image, Exception):
                raise image
            _, data, mime = decode(image)
        except (ValueError, OSError, KeyError, IndexError) as e:
            self._error(rec, "image_unreadable", str(e))
            return
        factor = rec["factor"]
        prompt = qa_prompt(rec["question"], rec["answer"], rec["prediction"], rec["failure_key"],
                           factor["completion"], self.cfg.max_items)
        try:
            result = await self.teacher.generate(prompt, QASet, images=[(data, mime)])
        except TeacherError as e:
            if e.usage is not None:  # failed attempts are billed too
                self.tokens.update(prompt_tokens=e.usage.prompt_tokens, output_tokens=e.usage.output_tokens)
            self._error(rec, f"teacher_{e.reason}", str(e))
            return
        usage = {"prompt_tokens": result.usage.prompt_tokens, "output_tokens": result.usage.output_tokens}
        self.tokens.update(usage)
        kept, dropped = clean_items(result.parsed.items)
        self.counts["items_dropped"] += len(dropped)
        if not kept:
            self._error(rec, "no_valid_items", "; ".join(dropped))
            return
        for i, item in enumerate(kept):
            self.out.write({
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
        self.counts["items"] += len(kept)
        self.counts["failures_with_items"] += 1


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
    """Run step 3 for one shard; returns a small summary for XCom."""
    from tqdm import tqdm

    from vlmprobe.teacher.factory import make_teacher

    t0 = time.monotonic()
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    if not exists(layout.shard_plan):
        raise FileNotFoundError(f"{layout.shard_plan} is missing: run sample_keys for {cfg.run_date} first")
    plan = read_json(layout.shard_plan)
    if cfg.shard_index >= plan["num_shards"]:
        raise ValueError(f"shard {cfg.shard_index} does not exist: the plan has {plan['num_shards']} shard(s)")
    shard = plan["shards"][cfg.shard_index]
    records = islice(iter_json_records(plan["failures_uri"]), shard["start"], shard["stop"])

    async def _run() -> dict[str, Any]:
        with JsonlWriter(layout.qa_shard(cfg.shard_index)) as out, \
                JsonlWriter(layout.qa_errors(cfg.shard_index)) as errors, \
                tqdm(total=shard["count"], desc=f"qa shard {cfg.shard_index}", unit="failure",
                     file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 10.0) as progress:
            async with make_teacher(cfg) as teacher:
                work = ShardQA(cfg, teacher, out, errors, progress)
                while batch := list(islice(records, cfg.batch_size)):
                    work.counts["failures"] += len(batch)
                    images = await asyncio.to_thread(_load_images, batch)
                    if cfg.no_async:
                        for rec, img in zip(batch, images):
                            await work.handle(rec, img)
                    else:
                        await asyncio.gather(*(work.handle(r, i) for r, i in zip(batch, images)))
                teacher_stats = dict(teacher.stats)
        return {"work": work, "teacher": teacher_stats}

    res = asyncio.run(_run())
    work = res["work"]
    c = work.counts
    if c["failures"] != shard["count"] or c["failures"] != c["failures_with_items"] + c["errors"]:
        raise RuntimeError(f"qa shard {cfg.shard_index} lost records: {dict(c)}, expected {shard['count']}")
    stats = {
        "shard_index": cfg.shard_index,
        "qa_uri": layout.qa_shard(cfg.shard_index),
        "errors_uri": layout.qa_errors(cfg.shard_index),
        "counts": {k: c[k] for k in ("failures", "failures_with_items", "errors", "items", "items_dropped")},
        "error_reasons": dict(work.error_reasons),
        "tokens": dict(work.tokens),
        "teacher": res["teacher"],
        "teacher_model": cfg.gemini_model,
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
    write_json(layout.qa_stats(cfg.shard_index), stats)
    log.info("shard %d: %s", cfg.shard_index, stats["counts"])
    return {k: stats[k] for k in ("shard_index", "qa_uri", "counts")}
