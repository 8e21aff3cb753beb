"""Step 2: a reproducible, balanced sample of step 1's verified failures, and the QA shard plan.

Reads the failure files named in ``probe/_SUCCESS.json`` (never a glob, so a stale file from an
earlier attempt cannot mix in) in two streaming passes:

1. every line is parsed once for its ``failure_key`` and identity; per key the
   ``samples_per_key`` failures with the smallest seeded hash are kept as candidates — hash and
   byte offset only (:mod:`vlmprobe.sample.select`). A line that is not a JSON object with a
   ``failure_key`` becomes an error row naming its file and line.
2. the chosen records are read back by offset and written in a fixed order (keys sorted, then
   by hash) without the ``rank`` field, so the same input set and seed give a byte-identical
   ``sample/failures.jsonl`` (``failures.json``, one array, with ``error_output_format=json``)
   whatever the file order, rank count or completion order of step 1.

More unreadable records than ``max_error_rate`` of the input fail the step (``ValueError``,
naming the first) after their error rows are written, before any sample or plan is.
Optional ``max_per_category`` caps a category (balanced across its keys) and ``min_per_key``
drops keys with fewer distinct failures; both are counted and listed in ``shards.json``.
Duplicates (same image, same key) are kept once and counted. With ``embed_images`` each record
carries its image as base64, read and encoded in a thread pool; a record whose image cannot be
read goes to ``errors/sample.jsonl``. Every input record is counted in exactly one of sampled,
errors, over_cap, duplicates, below_min_per_key, over_category_cap, over_qa_reservation (more
verified failures than QA's reservation in the night's plan pays for: the sample is capped there,
balanced across keys, so QA never starts requests it cannot pay for).

``sample/shards.json`` (:class:`vlmprobe.contracts.ShardPlan`, with its ``schema_version``) plans
the QA shards: contiguous, balanced by estimated request tokens, each with its byte range so a
shard reads only its own records (:func:`vlmprobe.sample.shards.iter_shard_records`).

Memory is flat in the number of failures: a candidate costs 24 bytes (keys × samples_per_key of
them), a chosen record ~19 bytes of arrays in pass 2, images are embedded a chunk at a time. Object-store inputs are copied to a local spool
(``TMPDIR``) in pass 2, one sequential read per file. Safe to rerun: it first invalidates the
sample, the QA outputs and the manifest (:meth:`vlmprobe.io.layout.RunLayout.invalidate`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from vlmprobe.config import SampleConfig
from vlmprobe.contracts import CategoryCounts, KeyCounts, ProbeSuccess, SampleCounts, ShardPlan
from vlmprobe.errors import InputError
from vlmprobe.io import JsonlWriter, RunLayout, exists
from vlmprobe.io.fs import atomic_write, is_local, open_input_stream, resolve
from vlmprobe.io.jsonl import iter_lines
from vlmprobe.records import error_record, key_category
from vlmprobe.rundate import derive_seed
from vlmprobe.sample.embed import embed_records, record_line
from vlmprobe.sample.select import MAX_LINE, KeySampler, identity_hash, line_hash
from vlmprobe.sample.shards import estimate_request_tokens, plan_shards

log = logging.getLogger("vlmprobe.sample")
EMBED_THREADS = 8
DROPPED_FIELDS = ("rank",)  # where a failure was computed is not part of it


def _parse_failure(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(record, "") or (None, why it cannot be sampled)."""
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not JSON ({e})"
    if not isinstance(rec, dict):
        return None, f"a JSON {type(rec).__name__}, not an object"
    key = rec.get("failure_key")
    if not isinstance(key, str) or ":" not in key:
        return None, f"without a failure_key of the form category:value (got {key!r})"
    return rec, ""


class _ChosenLines:
    """The chosen records' lines, read in output order: straight from local files, else via a spool.

    ``file``, ``offset`` and ``length`` are parallel arrays, one entry per chosen record.
    """

    def __init__(self, files: list[str], file: array, offset: array, length: array) -> None:
        self.files, self.file, self.offset, self.length = files, file, offset, length
        self._stack = contextlib.ExitStack()
        self._handles: dict[int, Any] = {}
        self._spool_file: Any = None
        if not all(is_local(u) for u in files):
            self._spool()

    def _spool(self) -> None:
        """Copy the chosen lines to one local file, each source read once, front to back."""
        spool = self._stack.enter_context(tempfile.TemporaryFile(prefix="vlmprobe-sample-"))
        order = sorted(range(len(self.file)), key=lambda i: (self.file[i], self.offset[i]))
        moved = array("Q", bytes(8 * len(order)))
        pos, i = 0, 0
        while i < len(order):
            file_index = self.file[order[i]]
            with open_input_stream(self.files[file_index]) as src:
                at = 0
                while i < len(order) and self.file[order[i]] == file_index:
                    j = order[i]
                    while at < self.offset[j]:  # skip the lines nobody chose, a bounded read at a time
                        skipped = len(src.read(min(self.offset[j] - at, 8 << 20)))
                        if not skipped:
                            raise ValueError(f"{self.files[file_index]} ended before byte {self.offset[j]}")
                        at += skipped
                    data = src.read(self.length[j])
                    at += len(data)
                    spool.write(data)
                    moved[j] = pos
                    pos += len(data)
                    i += 1
        spool.flush()
        self.offset = moved
        self.file = array("H", bytes(2 * len(order)))  # every record is in "file" 0: the spool
        self._spool_file = spool

    def _fd(self, file_index: int) -> int:
        if file_index not in self._handles:
            f = self._spool_file
            if f is None:
                _, path = resolve(self.files[file_index])
                f = self._stack.enter_context(open(path, "rb", buffering=0))
            self._handles[file_index] = f.fileno()
        return self._handles[file_index]

    def __iter__(self) -> Iterator[bytes]:
        # one pread per record (not mmap: touched pages of a mapped file would count as our memory)
        file, offset, length = self.file, self.offset, self.length
        fd, current = -1, None
        for i in range(len(file)):
            if file[i] != current:
                current = file[i]
                fd = self._fd(current)
            yield os.pread(fd, length[i], offset[i])

    def close(self) -> None:
        self._stack.close()


class _FailuresWriter:
    """Writes the sampled failures as JSONL or one JSON array, keeping each record's byte range."""

    def __init__(self, uri: str, json_array: bool) -> None:
        self.uri, self.json_array = uri, json_array
        self.starts, self.stops = array("Q"), array("Q")  # each record's bytes in the file
        self._cm = atomic_write(uri, "wb")
        self._pos = 0

    def __enter__(self) -> _FailuresWriter:
        self._f = self._cm.__enter__()
        self._buf = bytearray()
        if self.json_array:
            self._put(b"[")
        return self

    def _put(self, data: bytes) -> None:
        self._buf += data
        self._pos += len(data)
        if len(self._buf) >= 1 << 20:
            self._f.write(self._buf)
            self._buf.clear()

    def write(self, line: bytes | tuple[bytes, ...]) -> None:
        """One record: a line, or the parts of one (large parts go straight to the file, unbuffered)."""
        buf = self._buf
        if self.json_array:
            buf += b",\n" if self.starts else b"\n"
            self._pos += 2 if self.starts else 1
        self.starts.append(self._pos)
        if isinstance(line, bytes):
            buf += line
            self._pos += len(line)
        else:
            for part in line:
                if len(part) >= 1 << 16:
                    self._f.write(buf)
                    buf.clear()
                    self._f.write(part)
                else:
                    buf += part
                self._pos += len(part)
        self.stops.append(self._pos)
        if not self.json_array:
            buf += b"\n"
            self._pos += 1
        if len(buf) >= 1 << 20:
            self._f.write(buf)
            buf.clear()

    @property
    def count(self) -> int:
        return len(self.starts)

    def __exit__(self, *exc: Any) -> bool:
        if exc[0] is None:
            if self.json_array:
                self._put(b"\n]\n")
            self._f.write(self._buf)
        return bool(self._cm.__exit__(*exc))


def sample_keys(cfg: SampleConfig) -> dict[str, Any]:
    """Run step 2; returns the shard plan, as written to ``sample/shards.json`` less its per-key tables."""
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    if not exists(layout.probe_success):
        raise FileNotFoundError(
            f"{layout.probe_success} is missing: step 1 (probe) has not finished for run date "
            f"{cfg.run_date}; run or rerun probe first")
    success = ProbeSuccess.read(layout.probe_success)
    files: list[str] = list(success.failure_files)
    night = success.night_plan
    qa_cap = night.qa_failures if night is not None else None  # what QA's reservation pays for
    removed = layout.invalidate("sample")
    if removed:
        log.info("rerun: removed %d stale output(s) of sample_keys and later steps", len(removed))

    seed_key = derive_seed(cfg.seed, cfg.run_date, "sample").to_bytes(8, "big")
    sampler = KeySampler(cfg.samples_per_key)
    seen = 0
    first_bad = ""
    error_reasons: Counter[str] = Counter()
    with JsonlWriter(layout.sample_errors) as errors:
        def error(reason: str, detail: str, **where: Any) -> None:
            errors.write(error_record("sample", reason, detail, run_date=cfg.run_date, **where))
            error_reasons[reason] += 1

        # pass 1: candidates per key, hash and location only
        for file_index, uri in enumerate(files):
            for lineno, (offset, line) in enumerate(iter_lines(uri), 1):
                if not line.strip():
                    continue
                seen += 1
                rec, why = _parse_failure(line)
                if rec is None:
                    error("bad_record", f"{uri} line {lineno} is {why}", file=uri, line=lineno)
                    first_bad = first_bad or f"{uri} line {lineno} is {why}"
                    continue
                if len(line) >= MAX_LINE:
                    too_long = f"a {len(line)}-byte record; the limit is {MAX_LINE - 1}"
                    error("bad_record", too_long, file=uri, line=lineno, id=rec.get("id"),
                          failure_key=rec["failure_key"])
                    first_bad = first_bad or f"{uri} line {lineno} is {too_long}"
                    continue
                key = rec["failure_key"]
                sampler.add(key, identity_hash(seed_key, key, rec.get("image"), rec.get("id")), line_hash(line),
                            file_index, offset, len(line), estimate_request_tokens(rec), _copy_mode(rec, line))
        bad_records = errors.count
        too_many = _too_many(bad_records, seen, cfg.max_error_rate)
        # When too_many, the error rows are still written (the with block ends normally), then the
        # step fails below with one message; nothing else is written.
        selection = sampler.selection(cfg.min_per_key, cfg.max_per_category, qa_cap)
        del sampler
        per_key = _per_key_table(selection)
        file, offset, length, tokens, mode = array("H"), array("Q"), array("I"), array("I"), array("B")
        for _, c in selection.candidates():
            file.append(c.file)
            offset.append(c.offset)
            length.append(c.length)
            tokens.append(c.tokens)
            mode.append(c.mode)
        selection.kept.clear()  # from here on memory holds five flat arrays, one entry per chosen record

        # pass 2: the chosen records, read back by offset, in output order
        failures_uri = layout.sampled_failures(cfg.error_output_format)
        if not too_many:
            out, weights = _write_sample(cfg, files, (file, offset, length, tokens, mode), failures_uri, error)
    if too_many:
        raise InputError(f"{too_many}; the first: {first_bad}; all are in {layout.sample_errors}")
    sampled = out.count
    shards = plan_shards(weights, out.starts, out.stops, cfg.num_shards)
    per_category: dict[str, Counter[str]] = defaultdict(Counter)
    for key, row in per_key.items():
        per_category[key_category(key)].update(keys=1, failures=row.seen, kept=row.kept,
                                               keys_kept=1 if row.kept else 0)
    counts = SampleCounts(
        input_failures=seen,
        sampled=sampled,
        errors=errors.count,
        bad_records=bad_records,
        over_cap=sum(r.over_cap for r in per_key.values()),
        duplicates=sum(r.duplicates for r in per_key.values()),
        below_min_per_key=sum(r.below_min_per_key for r in per_key.values()),
        over_category_cap=sum(r.over_category_cap for r in per_key.values()),
        keys=len(per_key),
        keys_sampled=sum(1 for r in per_key.values() if r.kept),
        over_qa_reservation=sum(r.over_qa_reservation for r in per_key.values()),
    )
    accounted = (counts.sampled + counts.errors + counts.over_cap + counts.duplicates + counts.below_min_per_key
                 + counts.over_category_cap + counts.over_qa_reservation)
    if accounted != seen:
        raise RuntimeError(f"sample_keys lost records: {seen} read, {accounted} accounted for: {counts.model_dump()}")
    plan = ShardPlan(
        run_date=cfg.run_date,
        failures_uri=failures_uri,
        format=cfg.error_output_format,
        embed_images=cfg.embed_images,
        total=sampled,
        num_shards=len(shards),
        shards=shards,
        counts=counts,
        error_reasons=dict(error_reasons),
        keys_per_category={c: CategoryCounts(**v) for c, v in sorted(per_category.items())},
        keys_below_min_per_key={k: r.seen for k, r in per_key.items() if r.below_min_per_key},
        per_key=per_key,
        samples_per_key=cfg.samples_per_key,
        min_per_key=cfg.min_per_key,
        max_per_category=cfg.max_per_category,
        seed=cfg.seed,
        qa_reserved_requests=None if night is None else night.qa_requests,
    )
    plan.write(layout.shard_plan)
    if counts.over_qa_reservation:
        log.warning("QA's reservation pays for %d failure(s): %d verified failure(s) left out of the sample "
                    "(balanced across keys)", qa_cap, counts.over_qa_reservation)
    log.info("sampled %d of %d failures over %d key(s) into %d shard(s); %d duplicate(s), %d error(s)",
             sampled, seen, counts.keys, len(shards), counts.duplicates, counts.errors)
    # The plan minus the per-key tables: small enough for XCom at the 256-shard bound.
    small = plan.model_dump(exclude={"schema_version", "per_key", "keys_below_min_per_key"})
    return {"shard_plan_uri": layout.shard_plan, **small}


def _write_sample(cfg: SampleConfig, files: list[str], chosen_arrays: tuple[array, ...], failures_uri: str,
                  error: Any) -> tuple[_FailuresWriter, array]:
    """Pass 2: the chosen records, read back by offset and written in output order.

    Returns the writer (its byte ranges) and each written record's estimated tokens.
    """
    file, offset, length, tokens, mode = chosen_arrays
    chosen = _ChosenLines(files, file, offset, length)
    try:
        lines = (_output_line(line, m) for line, m in zip(chosen, mode))
        with _FailuresWriter(failures_uri, cfg.error_output_format == "json") as out:
            if not cfg.embed_images:
                for line in lines:
                    out.write(line)
                return out, tokens
            weights = array("I")
            records = (json.loads(line) for line in lines)
            for i, (rec, line) in enumerate(embed_records(records, threads=EMBED_THREADS)):
                if isinstance(line, Exception):
                    error("image_unreadable", str(line), id=rec.get("id"), image=rec.get("image"),
                          failure_key=rec.get("failure_key"))
                    continue
                out.write(line)
                weights.append(tokens[i])
            return out, weights
    finally:
        chosen.close()


def _too_many(errors: int, seen: int, max_error_rate: float) -> str:
    """Why the step fails for its unreadable input records (more than ``max_error_rate``), or "".

    Only records that cannot be read at all count here (a damaged probe output); images that
    cannot be embedded are error rows that publish weighs with the run's other errors.
    """
    if seen and errors / seen > max_error_rate:
        return (f"{errors} of {seen} failure records ({errors / seen:.1%}) could not be sampled, more than "
                f"max_error_rate {max_error_rate:.0%}")
    return ""


# How pass 2 turns an input line into the sampled record's line without parsing it again: the
# record minus ``rank`` (where a failure was computed is not part of it). Decided per record from
# its own content in pass 1, so the output is the same whatever the order of the input.
COPY, CUT_RANK, REENCODE = 0, 1, 2
_RANK = b'"rank"'
_RANK_FIELD = re.compile(rb', "rank": -?\d+')


def _copy_mode(rec: dict[str, Any], line: bytes) -> int:
    if line.endswith(b"\r"):
        return REENCODE
    at = line.find(_RANK)
    if at < 0:
        return COPY  # no rank anywhere: the line is the record
    rank = rec.get("rank")
    if (type(rank) is int and line.find(_RANK, at + 1) < 0 and line.startswith(b', "rank": %d' % rank, at - 2)
            and not line[at + 9 + len(str(rank)):at + 10 + len(str(rank))].isdigit()):
        return CUT_RANK  # exactly one "rank" in the line, and it is the top-level one
    return REENCODE


def _output_line(line: bytes, mode: int) -> bytes:
    """The sampled record's line for an input line, as :func:`_copy_mode` decided."""
    if mode == COPY:
        return line
    if mode == CUT_RANK:
        return _RANK_FIELD.sub(b"", line, count=1)
    rec = json.loads(line)
    for name in DROPPED_FIELDS:
        rec.pop(name, None)
    return record_line(rec)


def _per_key_table(selection: Any) -> dict[str, KeyCounts]:
    """Per failure key: records seen, kept, and how many were left out for which reason."""
    return {key: KeyCounts(seen=n, kept=selection.count(key), duplicates=selection.duplicates(key),
                           over_cap=selection.over_cap.get(key, 0),
                           over_category_cap=selection.over_category_cap.get(key, 0),
                           below_min_per_key=selection.below_min.get(key, 0),
                           over_qa_reservation=selection.over_total_cap.get(key, 0))
            for key, n in sorted(selection.seen.items())}
