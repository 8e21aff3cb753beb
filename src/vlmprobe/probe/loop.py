"""One probe rank's loop (:class:`RankProbe`): its rows read, answered by the target, and explained
by the teacher, each row's outcome journaled as it finishes.

Rows are decoded and preprocessed ahead by worker threads, the target runs in its own thread,
teacher calls run concurrently on the event loop while the target works on the next batch
(:mod:`vlmprobe.probe.pipeline`). Every row read ends as exactly one of: passed, verified
failure, rejected factor, error row; rows that could not be read are kept as read errors. The
rank's output files are written afterwards, from the journal (:mod:`vlmprobe.probe.finish`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlmprobe.config import ProbeConfig
from vlmprobe.io.parquet import REQUIRED_COLUMNS, InputCounts, ReadError, Row, WorkUnit, image_bytes, iter_units
from vlmprobe.probe.pipeline import PipelineStats, run_pipeline
from vlmprobe.probe.resume import ProbeJournal
from vlmprobe.progress import Progress
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
    """One rank's work: reading, preprocessing and the target in threads, the teacher on the event loop.

    Every finished row goes to ``journal`` (:class:`~vlmprobe.probe.resume.ProbeJournal`) as it
    finishes; ``done`` (rows finished by earlier attempts, by file) are skipped before decoding.
    After :meth:`run`: ``input`` (rows read and lost), ``read_errors``, ``counts`` (this
    attempt's work: ``probed`` rows sent to the target, and the outcomes of this attempt; rows
    finished before are counted from the journal), ``pipeline_stats``.
    """

    def __init__(self, cfg: ProbeConfig, rank: int, target, journal: ProbeJournal,
                 done: dict[str, set[int]] | None = None) -> None:
        from vlmprobe.teacher.retry import tier_timing
        from vlmprobe.teacher.templates import load_templates

        self.cfg, self.rank, self.target, self.journal = cfg, rank, target, journal
        # 0 = auto: the teacher's ceiling at its tier (64 standard, 512 flex: Little's law at minutes per answer)
        self.concurrency = cfg.concurrency or tier_timing(cfg.teacher_service_tier).max_concurrency
        self.done = done or {}
        self.teacher = None  # set by run(), inside the client's context
        self.templates = load_templates(cfg.template_version)
        self.input = InputCounts()
        self.read_errors: list[ReadError] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # rows are read and errors recorded from worker threads too
        self.prepare_workers = default_prepare_workers()
        self.pipeline_stats = PipelineStats()
        self.progress: Progress | None = None
        # At most this many rows between their first and last teacher call (see _explain)
        self._explaining = asyncio.Semaphore(self.concurrency)

    # -- records -----------------------------------------------------------------------------
    def _finish(self, row: Row, outcome: str, record: dict[str, Any] | None = None,
                usage: dict[str, int] | None = None) -> None:
        """One row is done: into the journal at once, counted, shown in the progress line."""
        self.journal.record(row, outcome, record, usage=usage)
        with self._lock:
            self.counts[outcome] += 1
        if self.progress is not None:
            self.progress.update(1)

    def _error(self, reason: str, detail: str, row: Row, record_id: str | None = None,
               usage: dict[str, int] | None = None) -> None:
        self._finish(row, "error", error_record("probe", reason, detail, id=record_id, image=row.ref,
                                                run_date=self.cfg.run_date, rank=self.rank), usage)

    def _read_error(self, err: ReadError) -> None:
        self.read_errors.append(err)
        if err.file_lost:
            log.error("cannot read %s: %s", err.uri, err.detail)
        if self.progress is not None and err.num_rows:
            self.progress.update(err.num_rows)

    def _rows(self, units: list[WorkUnit]) -> Iterator[Row]:
        """The rows of ``units`` still to probe: finished ones skipped, lost ones reported."""
        todo = []
        for u in units:
            finished = self.done.get(u.uri)
            if finished and all(r in finished for r in range(u.first_row, u.first_row + u.num_rows)):
                # the whole row group was finished before: not even read again
                self.input.rows_read += u.num_rows
                self.input.row_groups += 1
            else:
                todo.append(u)
        self.input.files += len({u.uri for u in units} - {u.uri for u in todo})
        for item in iter_units(todo, batch_rows=max(self.cfg.failure_batch_size, 64), counts=self.input):
            if isinstance(item, ReadError):
                self._read_error(item)
                continue
            finished = self.done.get(item.uri)
            if finished and item.row in finished:
                continue
            yield item

    def _batches(self, rows: Iterable[Row]) -> Iterator[list[Row]]:
        """``failure_batch_size`` rows at a time, counted as they are read (in the reader thread)."""
        batch: list[Row] = []
        for row in rows:
            with self._lock:
                self.counts["probed"] += 1
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
        """Device thread: predictions for a batch; if the batch fails, each example is tried alone.

        An example the target cannot answer alone (a batch of one included) becomes a
        ``target_error`` row, never a crash of the rank.
        """
        batch = work.examples
        if not batch:
            return []
        if not work.prepare_failed:
            try:
                if work.prepared is not None:
                    return self.target.run(work.prepared)
                return self.target.answer([e.image for e in batch], [e.question for e in batch],
                                          [e.choices for e in batch])
            except Exception as err:
                if len(batch) == 1:
                    log.warning("target failed on %s: %s: %s", batch[0].id, type(err).__name__, err)
                    self._error("target_error", f"{type(err).__name__}: {err}", batch[0].row, batch[0].id)
                    return [None]
                log.exception("target failed on a batch of %d; trying them one at a time", len(batch))
        preds: list[str | None] = []
        for e in batch:
            try:
                preds.extend(self.target.answer([e.image], [e.question], [e.choices]))
            except Exception as err:  # one bad example must not stop the rank
                log.warning("target failed on %s: %s: %s", e.id, type(err).__name__, err)
                self._error("target_error", f"{type(err).__name__}: {err}", e.row, e.id)
                preds.append(None)
        return preds

    # -- teacher -----------------------------------------------------------------------------
    async def _explain(self, ex: Example, prediction: str) -> None:
        from vlmprobe.teacher.results import TeacherError
        from vlmprobe.teacher.usage import Usage
        from vlmprobe.teacher.prompts import factor_prompt, verify_prompt
        from vlmprobe.teacher.schemas import FactorCompletion, Verification

        images = [(ex.image_bytes, ex.mime)]
        fc = None
        # At most `concurrency` rows between their first and last teacher call: a kill re-pays
        # at most their factor answers (the resume bound, vlmprobe.probe.resume).
        async with self._explaining:
            try:
                fc = await self.teacher.generate(
                    factor_prompt(self.templates, ex.question, ex.answer, prediction, ex.choices),
                    FactorCompletion, images=images, kind="factor")
                factor: FactorCompletion = fc.parsed
                vr = await self.teacher.generate(
                    verify_prompt(ex.question, ex.answer, prediction, factor.category, factor.completion),
                    Verification, images=images, kind="verify", follow_up=True)  # the factor is paid
            except TeacherError as e:
                usage = e.usage + (fc.usage if fc else Usage())  # failed attempts are billed too
                self._error(f"teacher_{e.reason}", str(e), ex.row, ex.id, usage.as_dict())
                return
        usage = fc.usage + vr.usage
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
            "failure_key": failure_key(factor.category, factor.value, self.templates.version),
            "target_model": self.cfg.target_model,
            "teacher_model": self.cfg.gemini_model,
            "run_date": self.cfg.run_date,
            "rank": self.rank,
            "meta": ex.meta,
            "usage": usage.as_dict(),
        }
        if verdict.supported:
            self._finish(ex.row, "verified", record, usage.as_dict())
        else:
            self._finish(ex.row, "rejected", error_record(
                "probe", "factor_not_verified", verdict.rationale,
                **{k: record[k] for k in ("id", "image", "failure_key", "run_date", "rank")}, failure=record),
                usage.as_dict())

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, units: list[WorkUnit], lost: Iterable[ReadError] = ()) -> dict[str, Any]:
        """Probe the rows of ``units`` with one teacher client; returns the client's stats.

        ``lost``: files of this rank's share of the plan that cannot be read at all (counted and
        reported with the rank's read errors). The pipeline's stats (device busy time, waits,
        what bound the rank) are left in ``self.pipeline_stats``.
        """
        for err in lost:
            self.input.add_error(err)
            self._read_error(err)
        finished = sum(len(rows) for rows in self.done.values())
        total = sum(u.num_rows for u in units) - finished
        if finished:
            log.info("resuming: %d row(s) of this rank were finished by an earlier attempt; %d to go",
                     finished, total)
        with Progress(total, f"probe rank {self.rank}", unit="rows", interval_s=PROGRESS_EVERY_S,
                      logger=log) as self.progress:
            async with make_teacher(self.cfg) as teacher:
                self.teacher = teacher
                self.pipeline_stats = await self._probe(self._rows(units))
                return dict(teacher.stats)

    async def _probe(self, rows: Iterable[Row]) -> PipelineStats:
        """Answer, judge and explain ``rows``: the device never waits for decoding, only for the teacher.

        Rows are read in one thread and decoded and preprocessed ``prefetch`` batches ahead by
        worker threads; the target runs in its own thread; each batch's wrong answers go to the
        teacher on this event loop while the next batch is on the device. At most
        ``max(4 * concurrency, failure_batch_size)`` failures wait for the teacher at once; when
        that backlog is full the device stops after one more batch, and the wait is counted
        (``teacher_wait_s``).
        """
        from vlmprobe.vlm.answers import is_correct

        room = asyncio.Semaphore(max(4 * self.concurrency, self.cfg.failure_batch_size))
        in_flight: set[asyncio.Task] = set()
        crashed: list[BaseException] = []  # a bug in _explain must fail the step, not vanish

        def finished(task: asyncio.Task) -> None:
            in_flight.discard(task)
            room.release()
            if not task.cancelled() and task.exception() is not None:
                crashed.append(task.exception())

        async def consume(work: _Work, preds: list[str | None]) -> None:
            for ex, pred in zip(work.examples, preds):
                if pred is None:
                    continue  # its error row is recorded
                if is_correct(pred, ex.answer, ex.choices):
                    self._finish(ex.row, "passed")
                    continue
                self.counts["wrong"] += 1
                await room.acquire()
                task = asyncio.create_task(self._explain(ex, pred))
                in_flight.add(task)
                task.add_done_callback(finished)
            if crashed:
                raise crashed[0]

        async def finish() -> None:
            await asyncio.gather(*in_flight, return_exceptions=True)

        bind = getattr(self.target, "bind_thread", None)
        try:
            stats = await run_pipeline(self._batches(rows), self._prepare, self._infer, consume, finish=finish,
                                       workers=self.prepare_workers, prefetch=PREFETCH_BATCHES, device_init=bind)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        if crashed:
            raise crashed[0]
        s = stats
        log.info("device busy %.0f%% of %.1fs (waited %.1fs for input, %.1fs for the teacher, %.1fs tail): "
                 "bound by %s", 100 * s.busy_fraction, s.wall_s, s.input_wait_s, s.teacher_wait_s, s.tail_s, s.bound)
        return stats
