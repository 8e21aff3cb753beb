"""Step 1 entrypoint, run by ``torchrun --no-python vlmprobe probe ...``.

Each rank reads its contiguous share of the sampled parquet files in record batches, asks the
target VLM the dataset's question about ``failure_batch_size`` images at a time, and for each
wrong answer has the teacher complete a probing-factor template and then verify it against the
image. Rows are decoded and preprocessed ahead by worker threads, the target runs in its own
thread, and teacher calls run concurrently (``concurrency`` per rank) on the event loop while the
target works on the next batch (:mod:`vlmprobe.probe.pipeline`). Each rank's stats say how busy
its device was and what held it back (``pipeline``: input, teacher, or the target itself).

Outputs (under ``{output_uri}/{run_date}/``): ``probe/rank-NNNNN.jsonl`` (verified failures),
``errors/probe-rank-NNNNN.jsonl`` (unreadable rows, teacher errors, unverified factors, each
with its reason), and ``probe/_SUCCESS.json`` written by rank 0 after all ranks finished, with
the counts. Safe to rerun: rank 0 first removes the step's earlier outputs for the run date,
and every file is written under a temporary name and renamed when complete.

Every row read ends as exactly one of: passed, verified failure, or error row. A file that
cannot be read (not parquet, required columns missing) gets one ``unreadable_file`` error row
and the rank goes on with the next file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from vlmprobe.config import ProbeConfig
from vlmprobe.io import JsonlWriter, RunLayout, exists, list_files, remove_tree, write_json
from vlmprobe.io.fs import remove_file
from vlmprobe.io.parquet import REQUIRED_COLUMNS, Row, image_bytes, iter_rows
from vlmprobe.probe.pipeline import PipelineStats, run_pipeline
from vlmprobe.probe.plan import sample_files, split_for_rank
from vlmprobe.records import error_record, failure_key, row_id
from vlmprobe.teacher.factory import make_teacher

log = logging.getLogger("vlmprobe.probe")

_KNOWN_COLUMNS = {*REQUIRED_COLUMNS, "id", "choices"}
PROGRESS_EVERY_S = 30.0  # one progress line per rank this often: pod logs stay readable
PREFETCH_BATCHES = 4  # batches decoded and preprocessed ahead of the device


@dataclass
class Example:
    row: Row
    id: str
    image: Any  # PIL image, RGB
    image_bytes: bytes = field(repr=False)
    mime: str
    question: str
    answer: str
    choices: list[str] | None
    meta: dict[str, Any]


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def to_example(row: Row, decoded: dict[bytes, tuple[Any, bytes, str]] | None = None) -> Example:
    """Validate and decode one input row. Raises ValueError(reason, detail) for a bad row.

    ``decoded`` (encoded bytes -> :func:`vlmprobe.images.decode` result) lets rows that share an
    image decode it once and share one PIL image.
    """
    from vlmprobe.images import decode

    c = row.cells
    question, answer = c.get("question"), c.get("answer")
    if question is None or not str(question).strip():
        raise ValueError("missing_question", "the row has no question")
    if answer is None or not str(answer).strip():
        raise ValueError("missing_answer", "the row has no ground-truth answer")
    try:
        raw = image_bytes(c.get("image"), row.uri)
        if decoded is not None and raw in decoded:
            img, data, mime = decoded[raw]
        else:
            img, data, mime = decode(raw)
            if decoded is not None:
                decoded[raw] = (img, data, mime)
    except (ValueError, OSError) as e:
        raise ValueError("image_unreadable", str(e)) from e
    choices = c.get("choices")
    if choices is not None:
        choices = [str(x) for x in choices] or None
    meta = {k: _json_safe(v) for k, v in c.items() if k not in _KNOWN_COLUMNS}
    return Example(row, row_id(row.uri, row.row, c.get("id")), img, data, mime,
                   str(question), str(answer), choices, meta)


@dataclass
class _Work:
    """One batch between the pipeline's stages: the decoded examples and the target's CPU work."""

    examples: list[Example]
    prepared: Any = None  # the target's PreparedBatch, when the target splits prepare/run
    prepare_failed: bool = False


def default_prepare_workers() -> int:
    """Preprocessing threads per rank: the pod's cores shared by its ranks, 1 to 4."""
    per_rank = (os.cpu_count() or 2) // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(1, min(4, per_rank))


class RankProbe:
    """One rank's work: reading, preprocessing and the target in threads, the teacher on the event loop."""

    def __init__(self, cfg: ProbeConfig, rank: int, target, failures: JsonlWriter, errors: JsonlWriter) -> None:
        from vlmprobe.teacher.templates import load_templates

        self.cfg, self.rank, self.target = cfg, rank, target
        self.teacher = None  # set by run(), inside the client's context
        self.templates = load_templates(cfg.template_version)
        self.failures, self.errors = failures, errors
        self.counts: Counter[str] = Counter()
        self.error_reasons: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self._lock = threading.Lock()  # rows are read and errors written from worker threads too
        self.prepare_workers = default_prepare_workers()
        self.pipeline_stats = PipelineStats()

    # -- records -----------------------------------------------------------------------------
    def _error(self, reason: str, detail: str, row: Row, record_id: str | None = None) -> None:
        self.errors.write(error_record("probe", reason, detail, id=record_id, image=row.ref,
                                       run_date=self.cfg.run_date, rank=self.rank))
        with self._lock:
            self.error_reasons[reason] += 1
            self.counts["errors"] += 1

    def _rows(self, files: list[str]) -> Iterator[Row]:
        """Every row of ``files``; a file that cannot be read (any more) becomes one error row."""
        for uri in files:
            try:
                yield from iter_rows(uri, batch_rows=max(self.cfg.failure_batch_size, 64))
            except (ValueError, OSError, pa.ArrowException) as e:
                # A file we cannot read (any more): one error row for it; the rows read so far stay.
                log.error("skipping the rest of %s: %s", uri, e)
                self.errors.write(error_record("probe", "unreadable_file", f"{type(e).__name__}: {e}",
                                               file=uri, run_date=self.cfg.run_date, rank=self.rank))
                with self._lock:
                    self.counts["bad_files"] += 1
                    self.error_reasons["unreadable_file"] += 1

    def _batches(self, rows: Iterable[Row]) -> Iterator[list[Row]]:
        """``failure_batch_size`` rows at a time, counted as they are read (in the reader thread)."""
        batch: list[Row] = []
        for row in rows:
            with self._lock:
                self.counts["rows"] += 1
            batch.append(row)
            if len(batch) == self.cfg.failure_batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # -- target ------------------------------------------------------------------------------
    def _prepare(self, rows: list[Row]) -> _Work:
        """Worker thread: decode the rows (bad ones become error rows) and the target's CPU work."""
        examples: list[Example] = []
        decoded: dict[bytes, tuple] = {}  # rows of one batch that share an image decode it once
        for row in rows:
            try:
                examples.append(to_example(row, decoded))
            except ValueError as e:
                reason, detail = e.args if len(e.args) == 2 else ("bad_row", str(e))
                self._error(reason, detail, row, row_id(row.uri, row.row, row.cells.get("id")))
        work = _Work(examples)
        prepare = getattr(self.target, "prepare", None)
        if examples and prepare is not None:
            try:
                work.prepared = prepare([e.image for e in examples], [e.question for e in examples],
                                        [e.choices for e in examples], [e.image_bytes for e in examples])
            except Exception:  # the device thread retries the examples one at a time
                log.exception("target could not prepare a batch of %d; it will answer them one at a time",
                              len(examples))
                work.prepare_failed = True
        return work

    def _infer(self, work: _Work) -> list[str | None]:
        """Device thread: predictions for a batch; if the batch fails, each example is retried alone."""
        batch = work.examples
        if not batch:
            return []
        if not work.prepare_failed:
            try:
                if work.prepared is not None:
                    return self.target.run(work.prepared)
                return self.target.answer([e.image for e in batch], [e.question for e in batch],
                                          [e.choices for e in batch])
            except Exception:
                if len(batch) == 1:
                    raise
                log.exception("target failed on a batch of %d; retrying one at a time", len(batch))
        preds: list[str | None] = []
        for e in batch:
            try:
                preds.extend(self.target.answer([e.image], [e.question], [e.choices]))
            except Exception as err:  # one bad example must not stop the rank
                self._error("target_error", f"{type(err).__name__}: {err}", e.row, e.id)
                preds.append(None)
        return preds

    # -- teacher -----------------------------------------------------------------------------
    def _count_tokens(self, *usages) -> None:
        for u in usages:
            if u is not None:
                self.tokens["prompt_tokens"] += u.prompt_tokens
                self.tokens["output_tokens"] += u.output_tokens

    async def _explain(self, ex: Example, prediction: str) -> None:
        from vlmprobe.teacher.client import TeacherError
        from vlmprobe.teacher.prompts import factor_prompt, verify_prompt
        from vlmprobe.teacher.schemas import FactorCompletion, Verification

        images = [(ex.image_bytes, ex.mime)]
        fc = None
        try:
            fc = await self.teacher.generate(
                factor_prompt(self.templates, ex.question, ex.answer, prediction, ex.choices),
                FactorCompletion, images=images, kind="factor")
            factor: FactorCompletion = fc.parsed
            vr = await self.teacher.generate(
                verify_prompt(ex.question, ex.answer, prediction, factor.category, factor.completion),
                Verification, images=images, kind="verify")
        except TeacherError as e:
            self._count_tokens(e.usage, fc.usage if fc else None)  # failed attempts are billed too
            self._error(f"teacher_{e.reason}", str(e), ex.row, ex.id)
            return
        usage = fc.usage + vr.usage
        self._count_tokens(usage)
        verdict: Verification = vr.parsed
        record = {
            "id": ex.id,
            "image": ex.row.ref,
            "question": ex.question,
            "answer": ex.answer,
            "choices": ex.choices,
            "prediction": prediction,
            "factor": {
                "category": factor.category,
                "value": factor.value,
                "template": self.templates.get(factor.category).template,
                "completion": factor.completion,
                "explanation": factor.explanation,
                "template_version": self.templates.version,
            },
            "verification": {"supported": verdict.supported, "rationale": verdict.rationale},
            "failure_key": failure_key(factor.category, factor.value),
            "target_model": self.cfg.target_model,
            "teacher_model": self.cfg.gemini_model,
            "run_date": self.cfg.run_date,
            "rank": self.rank,
            "meta": ex.meta,
            "usage": {"prompt_tokens": usage.prompt_tokens, "output_tokens": usage.output_tokens},
        }
        if verdict.supported:
            self.failures.write(record)
            self.counts["verified"] += 1
        else:
            self.errors.write(error_record("probe", "factor_not_verified", verdict.rationale,
                                           **{k: record[k] for k in ("id", "image", "failure_key", "run_date", "rank")},
                                           failure=record))
            self.counts["rejected"] += 1

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, files: list[str]) -> dict[str, Any]:
        """Probe ``files`` with one teacher client; returns the client's stats.

        The pipeline's stats (device busy time, waits, what bound the rank) are left in
        ``self.pipeline_stats``.
        """
        async with make_teacher(self.cfg) as teacher:
            self.teacher = teacher
            self.pipeline_stats = await self._probe(self._rows(files))
            return dict(teacher.stats)

    def _log_progress(self, started: float) -> None:
        c = self.counts
        log.info("%d rows: %d passed, %d wrong (%d verified, %d rejected so far), %d errors; %.1f rows/s",
                 c["rows"], c["passed"], c["wrong"], c["verified"], c["rejected"], c["errors"],
                 c["rows"] / max(time.monotonic() - started, 1e-9))

    async def _probe(self, rows: Iterable[Row]) -> PipelineStats:
        """Answer, judge and explain ``rows``: the device never waits for decoding, only for the teacher.

        Rows are read in one thread and decoded and preprocessed ``prefetch`` batches ahead by
        worker threads; the target runs in its own thread; each batch's wrong answers go to the
        teacher on this event loop while the next batch is on the device. At most
        ``max(4 * concurrency, failure_batch_size)`` failures wait for the teacher at once; when
        that backlog is full the device stops after one more batch, and the wait is counted
        (``teacher_wait_s``).
        """
        from vlmprobe.target.answers import is_correct

        room = asyncio.Semaphore(max(4 * self.cfg.concurrency, self.cfg.failure_batch_size))
        in_flight: set[asyncio.Task] = set()
        crashed: list[BaseException] = []  # a bug in _explain must fail the step, not vanish
        started = time.monotonic()
        last_log = [started]

        def finished(task: asyncio.Task) -> None:
            in_flight.discard(task)
            room.release()
            if not task.cancelled() and task.exception() is not None:
                crashed.append(task.exception())

        async def consume(work: _Work, preds: list[str | None]) -> None:
            for ex, pred in zip(work.examples, preds):
                if pred is None:
                    continue
                if is_correct(pred, ex.answer, ex.choices):
                    self.counts["passed"] += 1
                    continue
                self.counts["wrong"] += 1
                await room.acquire()
                task = asyncio.create_task(self._explain(ex, pred))
                in_flight.add(task)
                task.add_done_callback(finished)
            if time.monotonic() - last_log[0] >= PROGRESS_EVERY_S:
                last_log[0] = time.monotonic()
                self._log_progress(started)
            if crashed:
                raise crashed[0]

        async def finish() -> None:
            await asyncio.gather(*in_flight, return_exceptions=True)

        bind = getattr(self.target, "bind_thread", None)
        try:
            stats = await run_pipeline(self._batches(rows), self._prepare, self._infer, consume, finish=finish,
                                       workers=self.prepare_workers, prefetch=PREFETCH_BATCHES, device_init=bind)
        finally:
            await asyncio.gather(*in_flight, return_exceptions=True)
        self._log_progress(started)
        if crashed:
            raise crashed[0]
        s = stats
        log.info("device busy %.0f%% of %.1fs (waited %.1fs for input, %.1fs for the teacher, %.1fs tail): "
                 "bound by %s", 100 * s.busy_fraction, s.wall_s, s.input_wait_s, s.teacher_wait_s, s.tail_s, s.bound)
        return stats


def _clear_previous_outputs(layout: RunLayout) -> None:
    remove_tree(layout.probe_dir)
    if exists(layout.errors_dir):
        for uri in list_files(layout.errors_dir, suffix=".jsonl"):
            if uri.rsplit("/", 1)[1].startswith("probe-"):
                remove_file(uri)


def main(cfg: ProbeConfig) -> dict[str, Any] | None:
    """Run this process's rank of step 1; rank 0 returns the summary (for XCom), others None."""
    import torch
    import torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def _main() -> dict[str, Any] | None:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        distributed = "RANK" in os.environ and "MASTER_ADDR" in os.environ
        cuda = torch.cuda.is_available()
        if distributed:
            if cuda:
                torch.cuda.set_device(local_rank)
            backend = "nccl" if cuda else "gloo"
            dist.init_process_group(backend, timeout=dt.timedelta(seconds=cfg.pg_timeout_s))
            log.info("process group: backend=%s world_size=%d timeout=%ds", backend, world_size, cfg.pg_timeout_s)
        try:
            return _run_rank(cfg, rank, world_size, distributed)
        finally:
            if distributed and dist.is_initialized():
                dist.destroy_process_group()

    return _main()


def _run_rank(cfg: ProbeConfig, rank: int, world_size: int, distributed: bool) -> dict[str, Any] | None:
    import torch.distributed as dist

    from vlmprobe.target import load_target

    started_at = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    files = sample_files(cfg.input_uri, cfg.parquet_sample_size, cfg.seed, cfg.run_date)
    mine = split_for_rank(files, rank, world_size)  # every rank raises alike when ranks outnumber files
    if rank == 0:
        _clear_previous_outputs(layout)
    if distributed:
        dist.barrier()
    log.info("rank %d/%d reads %d of %d sampled file(s)", rank, world_size, len(mine), len(files))

    target = load_target(cfg.target_model, max_new_tokens=cfg.max_new_tokens)
    with JsonlWriter(layout.probe_rank(rank)) as failures, JsonlWriter(layout.probe_errors(rank)) as errors:
        probe = RankProbe(cfg, rank, target, failures, errors)
        teacher_stats = asyncio.run(probe.run(mine))
    c = probe.counts
    if c["rows"] != c["passed"] + c["verified"] + c["rejected"] + c["errors"]:
        raise RuntimeError(f"rank {rank} lost records: {dict(c)}")
    rank_stats = {
        "rank": rank,
        "files": mine,
        "failures_uri": layout.probe_rank(rank),
        "errors_uri": layout.probe_errors(rank),
        "counts": {k: c[k] for k in ("rows", "passed", "wrong", "verified", "rejected", "errors", "bad_files")},
        "error_reasons": dict(probe.error_reasons),
        "tokens": dict(probe.tokens),
        "teacher": teacher_stats,
        "pipeline": probe.pipeline_stats.as_dict(),  # device busy time, waits, what bound the rank
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
    log.info("rank %d done: %s", rank, rank_stats["counts"])

    gathered: list[Any] = [None] * world_size
    if distributed:
        dist.all_gather_object(gathered, rank_stats)
    else:
        gathered = [rank_stats]
    if rank != 0:
        if distributed:
            dist.barrier()
        return None
    total: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for s in gathered:
        total.update(s["counts"])
        reasons.update(s["error_reasons"])
        tokens.update(s["tokens"])
    success = {
        "run_date": cfg.run_date,
        "world_size": world_size,
        "input_uri": cfg.input_uri,
        "input_files": files,
        "failure_files": [s["failures_uri"] for s in gathered],
        "error_files": [s["errors_uri"] for s in gathered],
        "counts": dict(total),
        "error_reasons": dict(reasons),
        "tokens": dict(tokens),
        "target_model": cfg.target_model,
        "teacher_model": cfg.gemini_model,
        "template_version": cfg.template_version,
        "ranks": gathered,
        "started_at": started_at.isoformat(),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
    write_json(layout.probe_success, success)
    if distributed:
        dist.barrier()
    return {"success_uri": layout.probe_success, "counts": dict(total)}
