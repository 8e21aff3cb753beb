"""Step 3: one shard of ``sample/failures.*`` → ``qa/shard-NNNNN.jsonl``.

Reads only the shard's own records (its byte range in ``sample/shards.json``, read through
:class:`vlmprobe.contracts.ShardPlan`; :func:`vlmprobe.sample.shards.iter_shard_records`), asks the teacher for QA pairs probing each
failure's factor — concurrently (at most ``batch_size`` failures outstanding, ``concurrency``
requests in flight, starts spaced by ``request_delay``, the client's quota shares and retries)
or one at a time with ``no_async`` — and writes the items. Every failure that enters leaves as
QA items (with ``qa_keep=target_failed``: counted in ``items_dropped_target_passed`` when the
target answered all of them) or as one error row in ``errors/qa-shard-NNNNN.jsonl`` with its reason (a record
without the fields QA needs, an unreadable image, a teacher error, no valid pair); one bad
record never stops the others. ``qa/_shard-NNNNN.stats.json`` (:class:`vlmprobe.contracts.QAShardStats`,
with its ``schema_version``: counts, tokens, the teacher's figures, timings) is written last and
marks the shard complete.

**The target check** (``qa_target_check``: ``auto`` = on when this process sees a CUDA GPU,
``on``, ``off``): the target (``target_model``) is loaded once per shard and every generated
item is put to it, in batches, on one device thread that runs while the teacher works on the
next failures; each item records ``target_answer`` and ``target_correct``. ``qa_keep=all``
writes every item, ``qa_keep=target_failed`` only those the target got wrong. The ``qa`` extra
has no torch: the check needs the probe's dependencies (a clear exit 2 otherwise).

**Resume** (never pay Gemini twice): each failure's outcome — its items or its error row — is
appended to the shard's journal (:class:`vlmprobe.io.journal.Journal` under
``qa/_journal/shard-NNNNN/``) as soon as it is known: locally flushed before the next one, on
object stores a segment every 64 outcomes or 10 s. A rerun skips the failures in the journal:
after a kill, only the requests in flight are sent again (on object stores, also the outcomes of
the last unwritten segment). The
journal is trusted only when its fingerprint (``_fingerprint.json``,
:class:`vlmprobe.contracts.QAJournalHeader`: the plan's SHA-256, the shard, the teacher model,
items per failure, the record format) matches; otherwise it is discarded with a warning. Rows of ``teacher_budget_reached`` are written but never journalled,
so a rerun with a larger ``max_cost_usd`` asks for them (and only them). The target's answers
are not journalled: they cost no Gemini request and are recomputed (with the rerun's target
settings). The outputs are written at the end from the outcomes — earlier attempts' from the
journal, read once at the start, and this attempt's; the journal is removed once
the stats file is written — unless the budget stopped some failures: then it stays for that
rerun (publish fails the run meanwhile).

Stopping teacher errors (dead key, unknown model: exit 3; daily quota: exit 4; circuit breaker:
exit 1) end the shard at once with nothing half-written: no shard file, no stats, the journal
kept for the rerun. Safe to rerun: the shard's earlier outputs and the manifest are removed
first (:meth:`vlmprobe.io.layout.RunLayout.invalidate`); outputs are replaced, never appended.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from vlmprobe.config import QAConfig
from vlmprobe.contracts import QACounts, QAJournalHeader, QAShardStats, ShardPlan, TargetCheckStats, TokenCounts
from vlmprobe.errors import InputError, UsageError, require_fields
from vlmprobe.io import Journal, JsonlWriter, RunLayout, exists, join
from vlmprobe.records import error_record, stable_id

log = logging.getLogger("vlmprobe.qa")

# What a journal record looks like; a change makes older journals another job (the fingerprint).
JOURNAL_FORMAT = 1
# The fields of a sampled failure that QA reads.
REQUIRED = ("id", "failure_key", "image", "question", "answer", "prediction", "factor")
TARGET_BATCH_ITEMS = 64  # QA items per batch of the target check
TOKEN_FIELDS = tuple(TokenCounts.model_fields)


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


# -- the target check ------------------------------------------------------------------------------

def check_mode(cfg: QAConfig) -> bool:
    """Whether this shard puts its items to the target; raises UsageError for settings that cannot work.

    ``on`` without torch/transformers installed (the ``qa`` extra has neither) and
    ``qa_keep=target_failed`` without the check are refused before anything is written.
    """
    from vlmprobe.vlm.check import target_check_enabled

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if cfg.qa_target_check == "on" and missing:
        raise UsageError(f"qa_target_check=on needs {' and '.join(missing)} in the QA image, which has "
                         "only the 'qa' extra: install vlmprobe[probe] there (the GPU worker image) or set "
                         "qa_target_check=off")
    # auto: on with a CUDA GPU, and only where the target can be loaded at all
    enabled = not (cfg.qa_target_check == "auto" and missing) and target_check_enabled(cfg.qa_target_check)
    if cfg.qa_keep == "target_failed" and not enabled:
        why = "is off" if cfg.qa_target_check == "off" else "found no CUDA GPU (qa_target_check=auto)"
        raise UsageError(f"qa_keep=target_failed keeps only the items the target got wrong, but the target "
                         f"check {why}: set qa_target_check=on or qa_keep=all")
    return enabled


class TargetCheck:
    """Puts QA items to the target in batches on one device thread, while the event loop goes on.

    :meth:`submit` queues one failure's items (all about one image, decoded once: the target
    encodes it once); full batches start at once, :meth:`finish` runs the rest and waits.
    ``results[(seq, j)]`` is the :class:`~vlmprobe.vlm.check.CheckedAnswer` of item ``j`` of
    failure ``seq``, or None when the target failed on that item alone.
    """

    def __init__(self, target: Any, batch_items: int = TARGET_BATCH_ITEMS) -> None:
        self.target, self.batch_items = target, batch_items
        bind = getattr(target, "bind_thread", None)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="qa-target", initializer=bind)
        self._pending: list[tuple[tuple[int, int], Any, dict[str, Any]]] = []
        self._running: list[asyncio.Future] = []
        self.results: dict[tuple[int, int], Any] = {}
        self.busy_s = 0.0
        self.batches = 0

    def submit(self, seq: int, image: Any, items: list[dict[str, Any]]) -> None:
        for j, item in enumerate(items):
            self._pending.append(((seq, j), image, item))
        while len(self._pending) >= self.batch_items:
            self._start(self._pending[: self.batch_items])
            del self._pending[: self.batch_items]

    def _start(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        self._running.append(loop.run_in_executor(self._executor, self._check, batch))

    def _check(self, batch: list) -> None:
        """Device thread: one batch; when it fails, each item alone (one bad item is one unknown answer)."""
        from vlmprobe.vlm.check import check_answers

        started = time.perf_counter()

        def ask(part: list) -> list:
            return check_answers(self.target, [im for _, im, _ in part], [it["question"] for _, _, it in part],
                                 [it["answer"] for _, _, it in part], [it["choices"] or None for _, _, it in part],
                                 batch_size=len(part))

        try:
            try:
                got = ask(batch)
            except Exception:
                log.exception("the target failed on a batch of %d QA items; asking them one at a time", len(batch))
                got = []
                for one in batch:
                    try:
                        got.extend(ask([one]))
                    except Exception as e:
                        log.error("the target failed on QA item %s: %s: %s", one[0], type(e).__name__, e)
                        got.append(None)
            for (key, _, _), answer in zip(batch, got):
                self.results[key] = answer
        finally:
            self.busy_s += time.perf_counter() - started
            self.batches += 1

    async def abandon(self) -> None:
        """The step stops: queue nothing more, let the batch on the device end (it cannot be interrupted)."""
        self._pending = []
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running = []

    async def finish(self) -> None:
        if self._pending:
            self._start(self._pending)
            self._pending = []
        try:
            await asyncio.gather(*self._running)
        finally:
            self._running = []

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# -- one failure -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one failure produced: items or an error row, the tokens it cost; as journalled."""

    seq: int
    id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # pairs the teacher wrote that did not hold together
    durable: bool = True  # recorded in the journal (False: asked again by a rerun)

    def to_record(self, fp: str) -> dict[str, Any]:
        rec: dict[str, Any] = {"fp": fp, "seq": self.seq, "id": self.id, "tokens": self.tokens,
                               "dropped": self.dropped}
        if self.error is not None:
            rec["error"] = self.error
        else:
            rec["items"] = self.items
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Outcome:
        return cls(int(rec["seq"]), str(rec["id"]), rec.get("items") or [], rec.get("error"),
                   dict(rec.get("tokens") or {}), int(rec.get("dropped") or 0))


def _tokens(usage: Any) -> dict[str, int]:
    return {k: int(getattr(usage, k, 0) or 0) for k in TOKEN_FIELDS} if usage is not None else {}


class ShardQA:
    """Turns failures into QA items with the teacher; one failure never stops the others."""

    def __init__(self, cfg: QAConfig, teacher: Any) -> None:
        self.cfg, self.teacher = cfg, teacher

    def error(self, seq: int, rec: dict[str, Any], reason: str, detail: str, *, tokens: dict[str, int] | None = None,
              durable: bool = True, **where: Any) -> Outcome:
        row = error_record("qa", reason, detail, id=rec.get("id"), image=rec.get("image"),
                           failure_key=rec.get("failure_key"), run_date=self.cfg.run_date,
                           shard_index=self.cfg.shard_index, **where)
        return Outcome(seq, str(rec.get("id")), error=row, tokens=tokens or {}, durable=durable)

    async def handle(self, seq: int, rec: dict[str, Any], image: bytes | Exception) -> tuple[Outcome, Any]:
        """One failure → (its outcome, its decoded image for the target check, or None)."""
        from vlmprobe.images import decode
        from vlmprobe.teacher.client import TeacherError
        from vlmprobe.teacher.prompts import qa_prompt
        from vlmprobe.teacher.schemas import QASet

        try:
            if isinstance(image, Exception):
                raise image
            rgb, data, mime = decode(image)
        except (ValueError, OSError, KeyError, IndexError) as e:
            return self.error(seq, rec, "image_unreadable", str(e)), None
        factor = rec["factor"]
        completion = factor.get("completion", "") if isinstance(factor, dict) else str(factor)
        prompt = qa_prompt(rec["question"], rec["answer"], rec["prediction"], rec["failure_key"], completion,
                           self.cfg.max_items)
        try:
            result = await self.teacher.generate(prompt, QASet, images=[(data, mime)], kind="qa")
        except TeacherError as e:  # failed attempts are billed too
            return self.error(seq, rec, f"teacher_{e.reason}", str(e), tokens=_tokens(e.usage),
                              durable=e.reason != "budget_reached"), None
        tokens = _tokens(result.usage)
        kept, dropped = clean_items(result.parsed.items)
        if not kept:
            out = self.error(seq, rec, "no_valid_items", "; ".join(dropped), tokens=tokens)
            out.dropped = len(dropped)
            return out, None
        items = [{
            "id": stable_id(rec["id"], self.cfg.run_date, i),
            "failure_id": rec["id"],
            "failure_key": rec["failure_key"],
            **item,
            "image": rec["image"],
            "teacher_model": self.cfg.gemini_model,
            "run_date": self.cfg.run_date,
            # the request that produced this item and its siblings
            "usage": tokens,
        } for i, item in enumerate(kept)]
        return Outcome(seq, str(rec["id"]), items=items, tokens=tokens, dropped=len(dropped)), rgb


def _load_images(records: list[dict[str, Any]]) -> list[bytes | Exception]:
    """Image bytes for each record: embedded base64, or read by reference (each file once)."""
    from vlmprobe.io.parquet import cell_image_bytes, read_cells

    out: list[bytes | Exception] = [b""] * len(records)
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        try:
            if r.get("image_b64"):
                out[i] = base64.b64decode(r["image_b64"])
            else:
                by_file[r["image"]["uri"]].append(i)
        except (ValueError, TypeError, KeyError) as e:
            out[i] = ValueError(f"no usable image reference ({type(e).__name__}: {e})")
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


def _batches(records: Iterator[tuple[int, Any, str | None]], size: int, want_image: Any) -> Iterator[list]:
    """Batches of (seq, record, problem, image bytes or exception or None); images are read per batch."""
    while batch := list(islice(records, size)):
        usable = [i for i, (seq, _, problem) in enumerate(batch) if problem is None and want_image(seq)]
        images: list[Any] = [None] * len(batch)
        for i, img in zip(usable, _load_images([batch[i][1] for i in usable])):
            images[i] = img
        yield [(*entry, img) for entry, img in zip(batch, images)]


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


def run_shard(cfg: QAConfig) -> dict[str, Any]:
    """Run step 3 for one shard; returns a small summary for XCom.

    Failures an earlier attempt finished (the journal) are not asked again (``resumed`` in
    the stats counts them).
    """
    from vlmprobe.progress import Progress
    from vlmprobe.teacher.factory import make_teacher

    t0 = time.monotonic()
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
    if checking:
        from vlmprobe.vlm import load_target

        target = load_target(cfg.target_model, max_new_tokens=cfg.max_new_tokens)  # before any Gemini request
        check = TargetCheck(target)
        log.info("target check on: QA items go to %s; qa_keep=%s", cfg.target_model, cfg.qa_keep)

    outcomes: dict[int, Outcome] = {}
    counts: Counter[str] = Counter()

    def want_image(seq: int) -> bool:
        return seq not in done or (check is not None and bool(done[seq].items))

    async def _run() -> dict[str, Any]:
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
            record(*await work.handle(seq, rec, image))

        with Progress(total=shard.count, desc=f"qa shard {index}", unit="failures", logger=log) as progress:
            async with make_teacher(cfg) as teacher:
                work = ShardQA(cfg, teacher)
                batches = _batches(_shard_records(plan, index), cfg.batch_size, want_image)
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
                                    rgb = await _decoded(image)
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
                return dict(teacher.stats)

    try:
        teacher_stats = asyncio.run(_run())
    finally:
        journal.close()
        if check is not None:
            check.close()

    # the outputs: earlier attempts' outcomes (read from the journal at the start) and this attempt's
    if len(outcomes) != shard.count:
        raise RuntimeError(f"qa shard {index} lost records: {len(outcomes)} outcome(s) for {shard.count} failure(s)")
    tokens: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    counts.update(failures=len(outcomes))
    with JsonlWriter(layout.qa_shard(index)) as items_out, JsonlWriter(layout.qa_errors(index)) as errors_out:
        for seq in sorted(outcomes):
            out = outcomes[seq]
            tokens.update({k: v for k, v in out.tokens.items() if k in TOKEN_FIELDS})
            counts["items_dropped"] += out.dropped
            if out.error is not None:
                errors_out.write(out.error)
                reasons[out.error["reason"]] += 1
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
    counts["errors"] = errors_out.count
    counts["items"] = items_out.count
    if counts["failures"] != counts["failures_with_items"] + counts["errors"]:
        raise RuntimeError(f"qa shard {index} counts do not add up: {dict(counts)}")
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
                                      batches=check.batches if check is not None else 0),
        elapsed_s=round(time.monotonic() - t0, 3),
    )
    stats.write(layout.qa_stats(index))
    if reasons["teacher_budget_reached"]:
        # publish fails this run ("budget reached"); a rerun with a larger max_cost_usd resumes
        log.warning("shard %d: %d failure(s) got no answer, the run's teacher budget (max_cost_usd) is spent; "
                    "the journal is kept: a rerun with a larger budget asks only for them", index,
                    reasons["teacher_budget_reached"])
    else:
        journal.clear()  # the shard is complete: nothing left to resume
    log.info("shard %d: %s", index, stats.counts.model_dump())
    return {"shard_index": stats.shard_index, "qa_uri": stats.qa_uri, "counts": stats.counts.model_dump()}


async def _decoded(image: Any) -> Any:
    """The RGB image of a resumed failure, for the target check (None when it cannot be read now)."""
    if image is None or isinstance(image, Exception):
        return None
    from vlmprobe.images import decode

    try:
        rgb, _, _ = await asyncio.to_thread(decode, image)
    except ValueError:
        return None
    return rgb
