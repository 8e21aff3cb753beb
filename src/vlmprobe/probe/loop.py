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
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlmprobe.budget.plan import Limit, NightPlan
from vlmprobe.budget.select import ExplainSelector, question_type, stratum_of
from vlmprobe.config import ProbeConfig
from vlmprobe.errors import QuotaExhausted
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
MAX_BACKLOG = 4096  # wrong answers (with their images) a rank may hold for the teacher at once


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
    finished before are counted from the journal), ``pipeline_stats``, ``oom_halvings`` (times the
    target ran out of GPU memory and ``batch_size`` was halved, :meth:`_infer`).
    """

    def __init__(self, cfg: ProbeConfig, rank: int, target, journal: ProbeJournal,
                 done: dict[str, set[int]] | None = None, night: NightPlan | None = None) -> None:
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
        # Rows per device call: failure_batch_size, halved for the rest of the rank each time the
        # target runs out of GPU memory (_infer); the reader's later batches follow it (_batches).
        self.batch_size = cfg.failure_batch_size
        self.oom_halvings = 0
        # At most this many rows between their first and last teacher call (see _explain)
        self._explaining = asyncio.Semaphore(self.concurrency)
        # The night's plan: which wrong answers are explained (None: every one, no limits)
        self.night = night
        self.selector: ExplainSelector | None = None
        self.limited: Limit = "none"  # the first limit this rank met; every later wrong answer is unexplained
        self._pass_started = 0.0
        self.pass_s = 0.0
        self.tail_limit_s: float | None = None
        self._deadline: float | None = None  # monotonic: explanations must end by then (set when the pass ends)
        self._window_closed = False  # the explanations still running at the deadline are being cancelled

    # -- records -----------------------------------------------------------------------------
    def _finish(self, row: Row, outcome: str, record: dict[str, Any] | None = None,
                usage: dict[str, int] | None = None, wrong: dict[str, Any] | None = None) -> None:
        """One row is done: into the journal at once, counted, shown in the progress line."""
        self.journal.record(row, outcome, record, usage=usage, wrong=wrong)
        with self._lock:
            self.counts[outcome] += 1
        if self.progress is not None:
            self.progress.update(1)

    def _error(self, reason: str, detail: str, row: Row, record_id: str | None = None,
               usage: dict[str, int] | None = None, wrong: dict[str, Any] | None = None) -> None:
        self._finish(row, "error", error_record("probe", reason, detail, id=record_id, image=row.ref,
                                                run_date=self.cfg.run_date, rank=self.rank), usage, wrong)

    def _wrong(self, ex: Example, prediction: str) -> dict[str, Any]:
        """A wrong answer as ``probe/wrong-rank-*.jsonl`` keeps it, explained or not."""
        source = ex.meta.get("source")
        return {"id": ex.id, "image": ex.row.ref, "question": ex.question, "answer": ex.answer,
                "choices": ex.choices, "prediction": prediction, "question_type": question_type(ex.choices),
                "source": source, "stratum": stratum_of(ex.choices, source),
                "run_date": self.cfg.run_date, "rank": self.rank}

    def _unexplained(self, ex: Example, wrong: dict[str, Any], reason: str,
                     usage: dict[str, int] | None = None) -> None:
        """A wrong answer the night leaves unexplained (``reason``: not_selected or the limit met)."""
        self._finish(ex.row, "unexplained", {**wrong, "reason": reason}, usage, wrong)

    def _limit(self, limit: Limit, why: str) -> None:
        """The first limit met ends the rank's explanations: later wrong answers are unexplained."""
        if self.limited == "none":
            self.limited = limit
            log.warning("rank %d: no more explanations this night (limited by %s): %s", self.rank, limit, why)

    def _too_late(self) -> bool:
        """After the pass: would an explanation started now end after the deadline?"""
        if self._deadline is None:
            return False
        expected = 2 * float(getattr(self.teacher, "expected_latency_s", 0.0) or 0.0)
        return time.monotonic() + expected > self._deadline

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
        """``batch_size`` rows at a time (``failure_batch_size`` until an out-of-memory halving), counted
        as they are read (in the reader thread)."""
        batch: list[Row] = []
        for row in rows:
            with self._lock:
                self.counts["probed"] += 1
            batch.append(row)
            if len(batch) >= self.batch_size:
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
        """Device thread: predictions for a batch, at most ``batch_size`` rows per target call.

        - The target runs out of GPU memory: the cache is freed, ``batch_size`` is halved for the
          rest of the rank (the reader's later batches shrink too; counted in ``oom_halvings``) and
          the rows not yet answered are retried at the new size. Out of memory on one row ends the
          rank (exit 1): the GPU cannot hold the model and a row.
        - Any other failure: that batch's rows are tried one at a time (the next batch runs whole).
          An example the target cannot answer alone (a batch of one included) becomes a
          ``target_error`` row, never a crash of the rank.
        """
        from vlmprobe.vlm.memory import is_out_of_memory

        batch = work.examples
        if not batch:
            return []
        if work.prepare_failed:
            return self._one_at_a_time(batch)
        preds: list[str | None] = []
        prepared = work.prepared  # made for the whole batch: usable while it runs whole
        start = 0
        while start < len(batch):
            chunk = batch[start:start + self.batch_size]
            whole = prepared if len(chunk) == len(batch) else None
            out_of_memory = False
            try:
                got = self._answer(chunk, whole)
            except Exception as err:
                out_of_memory = is_out_of_memory(err)
                if not out_of_memory:
                    got = self._after_failure(chunk, err)
            if out_of_memory:  # out of the except block: the failed call's tensors are free to go
                prepared = None
                self._halve(len(chunk))
                continue
            preds.extend(got)
            start += len(chunk)
        return preds

    def _answer(self, examples: list[Example], prepared: Any = None) -> list[str]:
        """The target's answers for ``examples`` in one call (its ``prepare`` then ``run`` when it has them)."""
        if prepared is not None:
            return self.target.run(prepared)
        images, questions, choices = [e.image for e in examples], [e.question for e in examples], \
            [e.choices for e in examples]
        if getattr(self.target, "prepare", None) is not None and getattr(self.target, "run", None) is not None:
            return self.target.run(self.target.prepare(images, questions, choices, [e.image_bytes for e in examples]))
        return self.target.answer(images, questions, choices)

    def _after_failure(self, examples: list[Example], err: Exception) -> list[str | None]:
        """A call on ``examples`` failed (not for memory): a lone example is an error row, more are tried alone."""
        if len(examples) == 1:
            log.warning("target failed on %s: %s: %s", examples[0].id, type(err).__name__, err)
            self._error("target_error", f"{type(err).__name__}: {err}", examples[0].row, examples[0].id)
            return [None]
        log.error("target failed on a batch of %d (%s: %s); trying them one at a time", len(examples),
                  type(err).__name__, err, exc_info=err)
        return self._one_at_a_time(examples)

    def _one_at_a_time(self, examples: list[Example]) -> list[str | None]:
        from vlmprobe.vlm.memory import is_out_of_memory

        preds: list[str | None] = []
        for e in examples:
            out_of_memory = False
            try:
                preds.extend(self.target.answer([e.image], [e.question], [e.choices]))
            except Exception as err:  # one bad example must not stop the rank
                out_of_memory = is_out_of_memory(err)
                if not out_of_memory:
                    log.warning("target failed on %s: %s: %s", e.id, type(err).__name__, err)
                    self._error("target_error", f"{type(err).__name__}: {err}", e.row, e.id)
                    preds.append(None)
            if out_of_memory:
                self._halve(1)  # raises: not even one row fits
        return preds

    def _halve(self, failed_rows: int) -> None:
        """The target ran out of GPU memory on ``failed_rows`` rows: free the cache, halve ``batch_size``.

        At one row there is nothing left to halve: raises (exit 1) with the line that says so.
        """
        from vlmprobe.vlm.memory import free_device_memory, out_of_memory_at_one_row

        free_device_memory()
        if failed_rows <= 1:
            raise out_of_memory_at_one_row(f"probe rank {self.rank}", self.oom_halvings, self.cfg.failure_batch_size)
        self.batch_size = max(1, min(self.batch_size, failed_rows) // 2)
        self.oom_halvings += 1
        log.warning("the target ran out of GPU memory on a batch of %d rows: %d rows per batch from now on "
                    "(halving %d; failure_batch_size %d is too large for this GPU)", failed_rows, self.batch_size,
                    self.oom_halvings, self.cfg.failure_batch_size)

    # -- teacher -----------------------------------------------------------------------------
    async def _explain(self, ex: Example, prediction: str, wrong: dict[str, Any]) -> None:
        from vlmprobe.teacher.prompts import factor_prompt, verify_prompt
        from vlmprobe.teacher.results import TeacherError
        from vlmprobe.teacher.schemas import FactorCompletion, Verification
        from vlmprobe.teacher.usage import Usage

        images = [(ex.image_bytes, ex.mime)]
        fc = None
        # At most `concurrency` rows between their first and last teacher call: a kill re-pays
        # at most their factor answers (the resume bound, vlmprobe.probe.resume).
        async with self._explaining:
            if self.limited == "none" and self._too_late():
                self._limit("time", f"the pass ended and its teacher window closes in "
                            f"{max(self._deadline - time.monotonic(), 0):.0f} s")  # type: ignore[operator]
            if self.limited != "none":
                self._unexplained(ex, wrong, self.limited)
                return
            try:
                fc = await self.teacher.generate(
                    factor_prompt(self.templates, ex.question, ex.answer, prediction, ex.choices),
                    FactorCompletion, images=images, kind="factor")
                factor: FactorCompletion = fc.parsed
                vr = await self.teacher.generate(
                    verify_prompt(ex.question, ex.answer, prediction, factor.category, factor.completion),
                    Verification, images=images, kind="verify", follow_up=True)  # the factor is paid
            except QuotaExhausted as e:  # the project's day, or this step's reservation: a limit
                self._limit("daily_quota", str(e))
                self._unexplained(ex, wrong, "daily_quota", fc.usage.as_dict() if fc else None)
                return
            except TeacherError as e:
                usage = e.usage + (fc.usage if fc else Usage())  # failed attempts are billed too
                if e.reason == "budget_reached":
                    self._limit("budget", str(e))
                    self._unexplained(ex, wrong, "budget", usage.as_dict())
                    return
                self._error(f"teacher_{e.reason}", str(e), ex.row, ex.id, usage.as_dict(), wrong)
                return
            except asyncio.CancelledError:
                if self._window_closed:  # the teacher window closed with this one in flight
                    self._unexplained(ex, wrong, "time", fc.usage.as_dict() if fc else None)
                raise  # else the step is stopping: the row is not done, a rerun explains it
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
            self._finish(ex.row, "verified", record, usage.as_dict(), wrong)
        else:
            self._finish(ex.row, "rejected", error_record(
                "probe", "factor_not_verified", verdict.rationale,
                **{k: record[k] for k in ("id", "image", "failure_key", "run_date", "rank")}, failure=record),
                usage.as_dict(), wrong)

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
        if self.night is not None:
            self.selector = ExplainSelector(self.night, sum(u.num_rows for u in units), self.cfg.seed)
        with Progress(total, f"probe rank {self.rank}", unit="rows", interval_s=PROGRESS_EVERY_S,
                      logger=log) as self.progress:
            async with make_teacher(self.cfg, **self._teacher_caps()) as teacher:
                self.teacher = teacher
                self.pipeline_stats = await self._probe(self._rows(units))
                return dict(teacher.stats)

    def _teacher_caps(self) -> dict[str, Any]:
        """The probe's share of the night: its reservation of requests, and the run's budget less
        what the plan keeps for QA."""
        if self.night is None:
            return {}
        caps: dict[str, Any] = {"step_cap": self.night.probe_requests}
        if self.cfg.max_cost_usd:
            # never 0, which would mean "no cap": a plan that kept all of it for QA leaves the probe nothing
            caps["max_cost_usd"] = max(self.cfg.max_cost_usd - self.night.qa_cost_reserved_usd, 1e-9)
        return caps

    def explain_stats(self) -> dict[str, Any]:
        """The rank's explanation sample and limits, for its stats."""
        base = self.selector.stats() if self.selector is not None else {
            "scale": 1.0, "lowered": 0, "chosen": 0, "wrong": 0, "budget": None, "wrong_by_stratum": {}}
        return {**base, "limited": self.limited, "pass_s": round(self.pass_s, 3),
                "tail_limit_s": None if self.tail_limit_s is None else round(self.tail_limit_s, 3)}

    async def _probe(self, rows: Iterable[Row]) -> PipelineStats:
        """Answer, judge and explain ``rows``: the device never waits for decoding, only for the teacher.

        Rows are read in one thread and decoded and preprocessed ``prefetch`` batches ahead by
        worker threads; the target runs in its own thread; each batch's wrong answers go to the
        teacher on this event loop while the next batch is on the device. At most
        ``max(4 * concurrency, failure_batch_size)`` failures wait for the teacher at once (with a
        night's plan, up to the rank's explain budget, ``MAX_BACKLOG`` at most); when
        that backlog is full the device stops after one more batch, and the wait is counted
        (``teacher_wait_s``).
        """
        from vlmprobe.vlm.answers import is_correct

        # The backlog of wrong answers waiting for the teacher. The night's plan sized the rank's
        # explanations to its teacher window, so the device need not wait for them: the backlog may
        # hold the rank's whole budget (up to MAX_BACKLOG rows with their images), and what is still
        # waiting when the window closes is left unexplained. Without a budget it stays small.
        budget = self.selector.budget if self.selector is not None else None
        backlog = max(4 * self.concurrency, self.cfg.failure_batch_size)
        if budget is not None:
            backlog = max(backlog, min(math.ceil(budget), MAX_BACKLOG))
        room = asyncio.Semaphore(backlog)
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
                wrong = self._wrong(ex, pred)
                if self.limited != "none":
                    self._unexplained(ex, wrong, self.limited)
                    continue
                if self.selector is not None and not self.selector.choose(wrong["stratum"], ex.id):
                    self._unexplained(ex, wrong, "not_selected")
                    continue
                await room.acquire()
                task = asyncio.create_task(self._explain(ex, pred, wrong))
                in_flight.add(task)
                task.add_done_callback(finished)
            if self.selector is not None:
                self.selector.after_batch(len(preds))
            if crashed:
                raise crashed[0]

        async def finish() -> None:
            # The pass is over: the teacher may go on for the plan's tail (probe_wall_factor of
            # the pass, at least probe_min_tail_s); what is still waiting then is left unexplained.
            self.pass_s = time.monotonic() - self._pass_started
            if self.night is None:
                await asyncio.gather(*in_flight, return_exceptions=True)
                return
            self.tail_limit_s = max((self.cfg.probe_wall_factor - 1) * self.pass_s, self.cfg.probe_min_tail_s)
            self._deadline = time.monotonic() + self.tail_limit_s
            if in_flight:
                _, late = await asyncio.wait(set(in_flight), timeout=self.tail_limit_s)
                if late:
                    self._limit("time", f"{len(late)} explanation(s) still running {self.tail_limit_s:.0f} s "
                                "after the pass")
                    self._window_closed = True
                    for task in late:
                        task.cancel()
                    await asyncio.gather(*late, return_exceptions=True)

        bind = getattr(self.target, "bind_thread", None)
        self._pass_started = time.monotonic()
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
