"""Step 3: one shard of ``sample/failures.*`` → ``qa/shard-NNNNN.jsonl``.

Reads only the shard's own records (its byte range in ``sample/shards.json``, read through
:class:`vlmprobe.contracts.ShardPlan`; :func:`vlmprobe.sample.shards.iter_shard_records`), asks
the teacher for QA pairs probing each failure's factor (:mod:`vlmprobe.qa.items`), in an order that
reads each parquet row group of the shard once (:func:`_reading_order`) — concurrently
(at most ``batch_size`` failures outstanding, ``concurrency`` requests in flight, starts spaced
by ``request_delay``, the client's quota shares and retries) or one at a time with ``no_async``
— and writes the items. Every failure that enters leaves as QA items (with
``qa_keep=target_failed``: counted in ``items_dropped_target_passed`` when the target answered
all of them) or as one error row in ``errors/qa-shard-NNNNN.jsonl`` with its reason (a record
without the fields QA needs, an unreadable image, a teacher error, no valid pair); one bad
record never stops the others. The written items also go to ``qa/parquet/shard-NNNNN.parquet``
with their images (:mod:`vlmprobe.qa.dataset`), a dataset ``datasets`` loads as it is.
``qa/_shard-NNNNN.stats.json``
(:class:`vlmprobe.contracts.QAShardStats`, with its ``schema_version``: counts, tokens, the
teacher's figures, timings) is written last and marks the shard complete.

**The target check** (``qa_target_check``: ``auto`` = on when this process sees a CUDA GPU,
``on``, ``off``; :mod:`vlmprobe.qa.target_check`): the target (``target_model``) is loaded once
per shard and every generated item is put to it, in batches, on one device thread that runs
while the teacher works on the next failures; each item records ``target_answer`` and
``target_correct``. ``qa_keep=all`` writes every item, ``qa_keep=target_failed`` only those the
target got wrong. The ``qa`` extra has no torch: the check needs the probe's dependencies (a
clear exit 2 otherwise).

**Resume** (never pay Gemini twice): each failure's outcome — its items or its error row — is
appended to the shard's journal (:class:`vlmprobe.io.journal.Journal` under
``qa/_journal/shard-NNNNN/``) as soon as it is known: locally flushed before the next one, on
object stores a segment every 64 outcomes or 10 s. A rerun skips the failures in the journal:
after a kill, only the requests in flight are sent again (on object stores, also the outcomes of
the last unwritten segment). The journal is trusted only when its fingerprint
(``_fingerprint.json``, :class:`vlmprobe.contracts.QAJournalHeader`: the plan's SHA-256, the
shard, the teacher model, items per failure, the record format) matches; otherwise it is
discarded with a warning. Rows left without a request because a limit was reached
(``limited_daily_quota``: QA's reservation in the night's plan or the project's daily quota;
``limited_budget``: ``max_cost_usd``) are written but never journalled, so a rerun (after the
quota resets, or with a larger budget) asks for them and only them. The target's answers
are not journalled: they cost no Gemini request and are recomputed (with the rerun's target
settings). The outputs are written at the end from the outcomes — earlier attempts' from the
journal, read once at the start, and this attempt's; the journal is removed once the stats file
is written — unless a limit left some failures without a request: then it stays for that rerun
(publish reports the limit; it does not fail the run for it).

**Batch mode** (``qa_mode=batch``, :mod:`vlmprobe.qa.batch`): the same requests go into one Batch
API job per shard; the loop answers each failure from the job (or online, for what the job did not
answer) and everything after is as above: same outputs, journal, error rows and stats.

Stopping teacher errors (dead key, unknown model: exit 3; circuit breaker: exit 1) end the shard
at once with nothing half-written: no shard file, no stats, the journal kept for the rerun. Safe to rerun: the shard's earlier outputs and the manifest are removed
first (:meth:`vlmprobe.io.layout.RunLayout.invalidate`); outputs are replaced, never appended.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from vlmprobe.config import QAConfig
from vlmprobe.contracts import (QACounts, QAJournalHeader, QAShardSpan, QAShardStats, ShardPlan, TargetCheckStats,
                                TokenCounts)
from vlmprobe.errors import InputError, require_fields
from vlmprobe.io import Journal, JsonlWriter, RunLayout, exists, join
from vlmprobe.qa.dataset import write_shard_parquet
from vlmprobe.qa.items import LIMITED_PREFIX, TOKEN_FIELDS, Outcome, RowGroupReader, ShardQA, load_images
from vlmprobe.qa.target_check import TargetCheck, check_mode, decoded_rgb

log = logging.getLogger("vlmprobe.qa")

# The images of failures with items a shard keeps for its Parquet file rather than read them again.
IMAGE_CACHE_BYTES = 512 * 1024 * 1024
# What a journal record looks like; a change makes older journals another job (the fingerprint).
JOURNAL_FORMAT = 1
# The fields of a sampled failure that QA reads.
REQUIRED = ("id", "failure_key", "image", "question", "answer", "prediction", "factor")


# -- the shard's input -----------------------------------------------------------------------------

def _shard_records(plan: ShardPlan, index: int) -> Iterator[tuple[int, Any, str | None]]:
    """(position in the shard, record, why QA cannot use it or None) for each of the shard's records.

    A record without the fields QA reads gets a reason (its error row names file and record);
    a byte range that no longer holds the plan's records is an InputError (rerun sample_keys).
    """
    from vlmprobe.sample.shards import iter_shard_records

    uri = plan.failures_uri
    # record numbers in the failures file, counted from 1 (a JSON array's "[" is line 1)
    first = plan.shards[index].start + (2 if plan.format == "json" else 1)
    n = 0
    try:
        for rec in iter_shard_records(plan, index):
            try:
                require_fields(rec, REQUIRED, source=uri, number=first + n)
                yield n, rec, None
            except InputError as e:
                yield n, rec if isinstance(rec, dict) else {}, str(e)
            n += 1
    except ValueError as e:
        if "not JSON" in str(e):
            raise InputError(f"{uri} line {first + n} is not JSON: the file changed since sample_keys planned "
                             "the shards; rerun sample_keys") from e
        raise InputError(str(e)) from e


def _image_place(rec: Any) -> tuple[str, int] | None:
    """(file URI, row) of a record's referenced image; None when it is embedded or has no usable reference."""
    try:
        if rec.get("image_b64"):
            return None
        return str(rec["image"]["uri"]), int(rec["image"]["row"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _reading_order(records: Iterator[tuple[int, Any, str | None]], want_image: Any
                   ) -> Iterator[tuple[int, Any, str | None]]:
    """The shard's records in the order they are processed: each parquet row group is read once.

    Records that need no parquet read (a problem, an embedded image, a resumed failure without the
    target check, no usable reference) come as they are read; the others follow, ordered by
    (file URI, row, position in the shard) — row groups are contiguous rows, so the shard's reader
    (:class:`vlmprobe.qa.items.RowGroupReader`, which keeps the last row group) reads each one
    once. Deterministic for a given shard. Only the processing order changes: the outputs are
    written in the shard's order (by position), as before.
    """
    referenced: list[tuple[tuple[str, int], int, Any]] = []
    for seq, rec, problem in records:
        place = _image_place(rec) if problem is None and want_image(seq) else None
        if place is None:
            yield seq, rec, problem
        else:
            referenced.append((place, seq, rec))
    referenced.sort(key=lambda x: (x[0], x[1]))
    for _, seq, rec in referenced:
        yield seq, rec, None


def _batches(records: Iterator[tuple[int, Any, str | None]], size: int, want_image: Any) -> Iterator[list]:
    """Batches of (seq, record, problem, image bytes or exception or None), in :func:`_reading_order`;
    images are read per batch, each row group of the shard once."""
    reader = RowGroupReader()
    ordered = _reading_order(records, want_image)
    try:
        while batch := list(islice(ordered, size)):
            usable = [i for i, (seq, _, problem) in enumerate(batch) if problem is None and want_image(seq)]
            images: list[Any] = [None] * len(batch)
            for i, img in zip(usable, load_images([batch[i][1] for i in usable], reader)):
                images[i] = img
            yield [(*entry, img) for entry, img in zip(batch, images)]
    finally:
        reader.close()


# -- the journal ------------------------------------------------------------------------------------

def _journal_dir(layout: RunLayout, index: int) -> str:
    # One folder per shard: a shard reads and clears only its own segments, never another's.
    return join(layout.qa_journal, f"shard-{index:05d}")


def _open_journal(layout: RunLayout, index: int, fingerprint: dict[str, Any]) -> tuple[Journal, str, dict[int, Outcome]]:
    """The shard's journal, its fingerprint's hash and the outcomes earlier attempts recorded.

    A journal made with other settings (another plan, model or items per failure) is another
    job: it is removed with a warning, never mixed in.
    """
    folder = _journal_dir(layout, index)
    journal = Journal(folder, f"shard-{index:05d}")
    marker = join(folder, QAJournalHeader.NAME)
    fp = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    if exists(marker) and QAJournalHeader.recorded(marker).get("fp") != fp:
        log.warning("discarding the resume journal of shard %d: it was made for other settings "
                    "(another shard plan, teacher model or max_items)", index)
        journal.clear()
    elif not exists(marker) and journal.segments():
        log.warning("discarding the resume journal of shard %d: it has no fingerprint", index)
        journal.clear()
    if not exists(marker):
        QAJournalHeader(fp=fp, **fingerprint).write(marker)
    done: dict[int, Outcome] = {}
    for rec in journal.finished():
        if rec.get("fp") == fp:
            done[int(rec["seq"])] = Outcome.from_record(rec)
    return journal, fp, done


# -- the step ---------------------------------------------------------------------------------------

def _read_plan(layout: RunLayout, cfg: QAConfig) -> tuple[ShardPlan, str]:
    """The shard plan and the SHA-256 of its bytes; InputError when it or the shard is missing."""
    if not exists(layout.shard_plan):
        raise InputError(f"{layout.shard_plan} is missing: run sample_keys for {cfg.run_date} first")
    plan, sha256 = ShardPlan.read_with_sha256(layout.shard_plan)
    if not 0 <= cfg.shard_index < len(plan.shards):
        raise InputError(f"shard {cfg.shard_index} does not exist: the plan {layout.shard_plan} has "
                         f"{len(plan.shards)} shard(s)")
    return plan, sha256


@dataclass
class _Shard:
    """One QA shard once set up: its plan and span, its journal and the outcomes of earlier attempts,
    the target check (None when off)."""

    cfg: QAConfig
    layout: RunLayout
    plan: ShardPlan
    index: int
    span: QAShardSpan
    journal: Journal
    fp: str  # the journal's fingerprint hash: records with another are not this shard's
    done: dict[int, Outcome]
    check: TargetCheck | None

    # the image bytes of failures that got items, kept for the Parquet file so that it reads no row
    # group again (up to IMAGE_CACHE_BYTES; the rest, and resumed failures, are read a second time)
    images: dict[int, bytes] = field(default_factory=dict)
    images_bytes: int = 0

    def want_image(self, seq: int) -> bool:
        """Whether failure ``seq`` needs its image: asked now, or resumed with items for the target check."""
        return seq not in self.done or (self.check is not None and bool(self.done[seq].items))

    def keep_image(self, seq: int, image: Any) -> None:
        if isinstance(image, bytes) and self.images_bytes + len(image) <= IMAGE_CACHE_BYTES:
            self.images[seq] = image
            self.images_bytes += len(image)


def _open_shard(cfg: QAConfig, load_target: bool = True) -> _Shard:
    """Setup: the plan (the shard must be in it), refused target-check settings fail before anything is
    removed, the shard's stale outputs removed, its journal opened, the target loaded (before any Gemini
    request; not with ``load_target=False``: a batch submit)."""
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    plan, plan_sha256 = _read_plan(layout, cfg)
    checking = check_mode(cfg)  # refused settings fail here, before anything is removed or written
    index = cfg.shard_index
    shard = plan.shards[index]
    layout.invalidate("qa", shard_index=index)

    fingerprint = {"format": JOURNAL_FORMAT, "plan_sha256": plan_sha256,
                   "shard_index": index, "start": shard.start, "stop": shard.stop,
                   "gemini_model": cfg.gemini_model, "max_items": cfg.max_items}
    journal, fp, done = _open_journal(layout, index, fingerprint)
    if done:
        log.info("shard %d resumes: %d of %d failure(s) finished in an earlier attempt", index, len(done),
                 shard.count)

    check: TargetCheck | None = None
    if checking and load_target:
        from vlmprobe.vlm import load_target

        # before any Gemini request; a hub id from its revision staged by the probe (vlmprobe.vlm.staging)
        target = load_target(cfg.target_model, revision=cfg.target_revision or None, max_new_tokens=cfg.max_new_tokens)
        check = TargetCheck(target)
        log.info("target check on: QA items go to %s; qa_keep=%s", cfg.target_model, cfg.qa_keep)
    return _Shard(cfg, layout, plan, index, shard, journal, fp, done, check)


async def _answer(s: _Shard, outcomes: dict[int, Outcome], counts: Counter[str]) -> dict[str, Any]:
    """The loop: the shard's failures read a batch at a time, each asked of the teacher (at most
    ``batch_size`` outstanding, one with ``no_async``) unless an earlier attempt finished it; each
    outcome into ``outcomes`` and the journal as it comes, its items to the target check.

    A stopping teacher error or a crash cancels what is in flight and is raised. Returns the
    teacher's stats.
    """
    from vlmprobe.progress import Progress
    from vlmprobe.qa.batch import batch_work
    from vlmprobe.teacher.factory import make_teacher

    cfg, plan, index, shard, check = s.cfg, s.plan, s.index, s.span, s.check
    journal, fp, done = s.journal, s.fp, s.done
    room = asyncio.Semaphore(1 if cfg.no_async else cfg.batch_size)
    tasks: set[asyncio.Task] = set()
    crashed: list[BaseException] = []

    def finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        room.release()
        if not task.cancelled() and task.exception() is not None:
            crashed.append(task.exception())

    def record(out: Outcome, rgb: Any) -> None:
        outcomes[out.seq] = out
        if out.durable:
            journal.append(out.to_record(fp))
        if check is not None and out.items and rgb is not None:
            check.submit(out.seq, rgb, out.items)
        progress.update(1)

    async def one(seq: int, rec: dict[str, Any], image: Any) -> None:
        out, rgb = await work.handle(seq, rec, image)
        s.keep_image(seq, image if out.items else None)
        record(out, rgb)

    with Progress(total=shard.count, desc=f"qa shard {index}", unit="failures", logger=log) as progress:
        # QA's reservation in the night's plan caps its requests (no cap without a plan)
        async with make_teacher(cfg, step_cap=plan.qa_reserved_requests) as teacher:
            # batch mode: the answers come from the shard's job, what it did not answer goes online
            work = await batch_work(cfg, s, teacher) if cfg.qa_mode == "batch" else ShardQA(cfg, teacher)
            batches = _batches(_shard_records(plan, index), cfg.batch_size, s.want_image)
            stopped = True  # until the loop ends normally
            try:
                while not crashed and (batch := await asyncio.to_thread(next, batches, None)) is not None:
                    for seq, rec, problem, image in batch:
                        if problem is not None:  # a record QA cannot use: its error row, at no cost
                            record(work.error(seq, rec, "bad_record", problem, durable=False,
                                              file=plan.failures_uri), None)
                            continue
                        if seq in done:
                            counts["resumed"] += 1
                            prior = done[seq]
                            if prior.id != str(rec["id"]):
                                raise RuntimeError(f"qa shard {index}: the journal's record {seq} is "
                                                   f"{prior.id}, the shard's is {rec['id']}")
                            outcomes[seq] = prior
                            if check is not None and prior.items:
                                rgb = await decoded_rgb(image)
                                if rgb is not None:
                                    check.submit(seq, rgb, prior.items)
                            progress.update(1)
                            continue
                        await room.acquire()
                        if crashed:
                            room.release()
                            break
                        task = asyncio.create_task(one(seq, rec, image))
                        tasks.add(task)
                        task.add_done_callback(finished)
                if not crashed:
                    await asyncio.gather(*tasks, return_exceptions=True)
                stopped = bool(crashed)
            finally:
                for task in list(tasks):  # a stopping error: what is still in flight is abandoned
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if check is not None and (stopped or crashed):
                    await check.abandon()
            if crashed:
                raise crashed[0]
            if check is not None:
                await check.finish()
            return work.teacher_stats()


def _write_outputs(s: _Shard, outcomes: dict[int, Outcome], counts: Counter[str], teacher_stats: dict[str, Any],
                   t0: float) -> QAShardStats:
    """The shard's items and error rows in the shard's order, the items again as Parquet, then its stats,
    written last: the shard is complete.

    ``outcomes`` holds earlier attempts' (read from the journal at the start) and this attempt's;
    the target's answers are added to the items here. Replaces the files of an earlier attempt.
    """
    cfg, layout, index, shard, check = s.cfg, s.layout, s.index, s.span, s.check
    if len(outcomes) != shard.count:
        raise RuntimeError(f"qa shard {index} lost records: {len(outcomes)} outcome(s) for {shard.count} failure(s)")
    tokens: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    kept: dict[int, list[dict[str, Any]]] = {}  # the items written, by failure: the Parquet file's rows
    counts.update(failures=len(outcomes))
    with JsonlWriter(layout.qa_shard(index)) as items_out, JsonlWriter(layout.qa_errors(index)) as errors_out:
        for seq in sorted(outcomes):
            out = outcomes[seq]
            tokens.update({k: v for k, v in out.tokens.items() if k in TOKEN_FIELDS})
            counts["items_dropped"] += out.dropped
            if out.error is not None:
                errors_out.write(out.error)
                reasons[out.error["reason"]] += 1
                counts["limited"] += out.error["reason"].startswith(LIMITED_PREFIX)
                continue
            counts["failures_with_items"] += 1
            for j, item in enumerate(out.items):
                counts["items_generated"] += 1
                if check is not None:
                    answer = check.results.get((seq, j))
                    item = {**item, "target_model": cfg.target_model,
                            "target_answer": answer.answer if answer is not None else None,
                            "target_correct": answer.correct if answer is not None else None}
                    if answer is None:
                        counts["items_check_errors"] += 1
                    else:
                        counts["items_checked"] += 1
                        if not answer.correct:
                            counts["items_target_failed"] += 1
                        elif cfg.qa_keep == "target_failed":
                            counts["items_dropped_target_passed"] += 1
                            continue
                items_out.write(item)
                kept.setdefault(seq, []).append(item)
    counts["errors"] = errors_out.count
    counts["items"] = items_out.count
    if counts["failures"] != counts["failures_with_items"] + counts["errors"]:
        raise RuntimeError(f"qa shard {index} counts do not add up: {dict(counts)}")
    # the same items as a dataset, with their images read again a batch at a time (vlmprobe.qa.dataset)
    parquet = write_shard_parquet(
        layout.qa_parquet(index), kept,
        _batches(_shard_records(s.plan, index), cfg.batch_size, lambda seq: seq in kept and seq not in s.images),
        s.images)
    device = getattr(check.target, "device", None) if check is not None else None
    stats = QAShardStats(
        shard_index=index,
        qa_uri=layout.qa_shard(index),
        errors_uri=layout.qa_errors(index),
        counts=QACounts(**{k: counts[k] for k in QACounts.model_fields}),
        error_reasons=dict(reasons),
        tokens=TokenCounts(**{k: tokens[k] for k in TOKEN_FIELDS}),
        teacher=teacher_stats,
        teacher_model=cfg.gemini_model,
        target_check=TargetCheckStats(enabled=check is not None, mode=cfg.qa_target_check, keep=cfg.qa_keep,
                                      target_model=cfg.target_model if check is not None else None,
                                      device=None if device is None else str(device),
                                      busy_s=round(check.busy_s, 3) if check is not None else 0.0,
                                      batches=check.batches if check is not None else 0,
                                      oom_halvings=check.oom_halvings if check is not None else 0),
        elapsed_s=round(time.monotonic() - t0, 3),
        parquet=parquet,
    )
    stats.write(layout.qa_stats(index))
    return stats


def run_shard(cfg: QAConfig) -> dict[str, Any]:
    """Run step 3 for one shard; returns a small summary for XCom.

    Setup (:func:`_open_shard`), the loop (:func:`_answer`), the outputs (:func:`_write_outputs`);
    then the journal goes unless budget rows wait for a rerun. Failures an earlier attempt
    finished (the journal) are not asked again (``resumed`` in the stats counts them). Batch mode
    (:mod:`vlmprobe.qa.batch`): ``qa_phase=submit`` only submits the shard's job; ``all`` submits and
    waits for it first; the loop then answers from the job.
    """
    t0 = time.monotonic()
    if cfg.qa_phase == "submit":  # the DAG's qa.submit: batch mode submits the job and exits
        if cfg.qa_mode != "batch":
            log.info("qa shard %d: qa_mode is online: nothing to submit", cfg.shard_index)
            return {"shard_index": cfg.shard_index, "qa_mode": cfg.qa_mode, "requests": 0, "jobs": {}}
        from vlmprobe.qa.batch import submit_shard

        return submit_shard(cfg)
    if cfg.qa_mode == "batch" and cfg.qa_phase == "all":  # one process: submit and wait before the target loads
        from vlmprobe.qa.batch import wait_for_batch

        wait_for_batch(cfg)
    shard = _open_shard(cfg)
    outcomes: dict[int, Outcome] = {}
    counts: Counter[str] = Counter()
    try:
        teacher_stats = asyncio.run(_answer(shard, outcomes, counts))
    finally:
        shard.journal.close()
        if shard.check is not None:
            shard.check.close()

    stats = _write_outputs(shard, outcomes, counts, teacher_stats, t0)
    index = shard.index
    limited = stats.counts.limited
    if limited:
        # a limit the night's plan allows for (QA's reservation, the day's quota, the budget): the
        # shard is complete; a rerun (after the quota resets, or with a larger budget) asks only for them
        log.warning("shard %d: %d failure(s) got no request, a limit was reached (%s); the journal is kept: a "
                    "rerun asks only for them", index, limited,
                    ", ".join(f"{r} {n}" for r, n in stats.error_reasons.items() if r.startswith(LIMITED_PREFIX)))
    else:
        shard.journal.clear()  # the shard is complete: nothing left to resume
    log.info("shard %d: %s", index, stats.counts.model_dump())
    return {"shard_index": stats.shard_index, "qa_uri": stats.qa_uri, "counts": stats.counts.model_dump()}
