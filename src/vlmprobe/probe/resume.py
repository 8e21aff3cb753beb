"""The probe's resume journal: each input row's outcome, recorded as it finishes, so a rerun pays nothing twice.

Design (issue 5, "never pay twice"):

- **Where.** One journal folder per run date, ``probe/_journal/`` (:class:`vlmprobe.io.journal.Journal`).
  The probe's rerun invalidation keeps it; rank 0 clears it only after ``_SUCCESS.json`` is
  written, and only when no row waits for a retry (see "Not done" below). Each rank appends to segments of its own (writer ``rank-NNNNN``, new segments per
  attempt), so ranks and retried pods never share a file.
- **Keyed by the row, not the rank.** An entry names its input row by place — file URI and row
  number in the file — the same whatever rank read it. Ranks are assigned by the work plan, so a
  rerun with another ``nproc_per_node`` (another split) still finds every finished row: each rank
  reads the earlier attempts' entries for the rows of its own work units, whoever wrote them.
- **What.** One entry per finished row, appended as it finishes:
  ``{"uri", "row", "fp", "outcome": "passed" | "verified" | "rejected" | "error", "record", "usage"}``;
  ``record`` is the verified failure or the error row exactly as the outputs hold it, ``usage``
  the teacher tokens it cost. A rerun skips the rows finished before: a row group whose rows are
  all finished is not read at all, other finished rows are dropped before their image is decoded —
  no target inference, no teacher call.
- **Not done.** Error rows that a rerun should try again carry ``"done": false``: ``target_error``
  (no teacher money was spent on them; the device may have had a bad moment), and
  ``teacher_budget_reached`` in journals written before the night's plan (a budget now leaves
  wrong answers ``unexplained``, which is final). They reach the
  outputs only when the row has no done entry. Rows lost at reading (a bad row group, an
  unreadable file) are not journaled: the reader meets them again on every attempt.
- **Outputs from the journal.** At the end a rank writes ``probe/rank-NNNNN.jsonl`` and
  ``errors/probe-rank-NNNNN.jsonl`` from the entries for its rows — earlier attempts' and its
  own, one per row (the first done entry, else this attempt's not-done one) — and the counts
  come from the same entries, so the outputs of a resumed run equal those of an uninterrupted one.
- **Fingerprint.** What the outputs depend on (:func:`fingerprint_settings`): target model and
  its pinned revision (``target_revision``), ``max_new_tokens``, teacher model, template version, thinking budget, the image size and output
  token limits sent to the teacher, the journal format. Rank 0 keeps them in
  ``_journal/_fingerprint.json`` (:class:`vlmprobe.contracts.ProbeJournalHeader`, with a
  ``schema_version``: a header of a version this code does not read stops the step, one line)
  and, before the work plan goes out (so before any rank appends), discards a journal made with
  other settings — or with none recorded — with a warning naming what changed. Every entry also carries the settings' hash (``fp``); readers skip other hashes.
  Not in it: ``input_uri``, ``seed``, ``parquet_sample_size`` (another sample is other rows,
  matched or not by place), concurrency and quota settings (speed, not answers).

Durability: a local journal flushes each entry (a SIGKILL loses at most the entry being
written); on object stores a segment is written every 64 entries or 10 s
(:mod:`vlmprobe.io.journal`). After a kill the requests paid again are those of the rows that
were between their first and last teacher call — at most ``concurrency`` of them
(:class:`~vlmprobe.probe.loop.RankProbe`) — plus, on object stores, the last unwritten segment.
"""

from __future__ import annotations

import contextlib

import hashlib
import json
import logging
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlmprobe.contracts import ProbeJournalHeader
from vlmprobe.io import JsonlWriter, exists, join
from vlmprobe.io.fs import basename
from vlmprobe.io.journal import Journal, read_segment
from vlmprobe.io.parquet import ReadError, Row, WorkUnit

log = logging.getLogger("vlmprobe.probe")

JOURNAL_FORMAT = 1
OUTCOMES = ("passed", "verified", "rejected", "unexplained", "error")
# Error rows a rerun tries again (see the module docstring).
RETRIED_REASONS = ("teacher_budget_reached", "target_error")


def fingerprint_settings(cfg: Any) -> dict[str, Any]:
    """The settings a probe's outputs depend on (see the module docstring)."""
    return ProbeJournalHeader(
        journal_format=JOURNAL_FORMAT,
        target_model=cfg.target_model,
        max_new_tokens=cfg.max_new_tokens,
        gemini_model=cfg.gemini_model,
        template_version=cfg.template_version,
        thinking_budget=cfg.thinking_budget,
        teacher_image_max_side=cfg.teacher_image_max_side,
        max_output_tokens_factor=cfg.max_output_tokens_factor,
        max_output_tokens_verify=cfg.max_output_tokens_verify,
        target_revision=cfg.target_revision,
        teacher_media_resolution_factor=cfg.teacher_media_resolution_factor,
        teacher_media_resolution_verify=cfg.teacher_media_resolution_verify,
    ).settings()


def fingerprint_of(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def keep_or_discard(journal_dir: str, settings: dict[str, Any]) -> list[str]:
    """Rank 0, before any rank appends: the segments of earlier attempts that still apply.

    A journal made with other settings (or with none recorded) is removed, with a warning that
    names what changed; then the current settings are recorded. Returns the segments kept.
    """
    journal = Journal(journal_dir, "check")
    segments = journal.segments()
    fp_uri = join(journal_dir, ProbeJournalHeader.NAME)
    old = ProbeJournalHeader.recorded(fp_uri) if exists(fp_uri) else None
    if segments and old != settings:
        if old is None:
            why = "it records no settings"
        else:
            changed = sorted(k for k in {*settings, *old} if settings.get(k) != old.get(k))
            why = "; ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        log.warning("resume journal %s was made with other settings (%s): discarding its %d segment(s); "
                    "every row is probed again", journal_dir, why, len(segments))
        journal.clear()
        segments = []
    if old != settings or not segments:
        ProbeJournalHeader(**settings).write(fp_uri)
    if segments:
        log.info("resume journal %s: %d segment(s) of earlier attempts apply", journal_dir, len(segments))
    return segments


class RowRanges:
    """Row ranges by file, ``[first, stop)`` (``stop`` None: to the end); membership by (uri, row)."""

    def __init__(self, spans: Iterable[tuple[str, int, int | None]] = ()) -> None:
        by_file: dict[str, list[tuple[int, float]]] = {}
        for uri, first, stop in spans:
            by_file.setdefault(uri, []).append((first, float("inf") if stop is None else stop))
        self._starts: dict[str, list[int]] = {}
        self._stops: dict[str, list[float]] = {}
        for uri, spans_ in by_file.items():
            spans_.sort()
            self._starts[uri] = [a for a, _ in spans_]
            self._stops[uri] = [b for _, b in spans_]

    @classmethod
    def of_units(cls, units: Iterable[WorkUnit]) -> RowRanges:
        return cls((u.uri, u.first_row, u.first_row + u.num_rows) for u in units)

    @classmethod
    def of_errors(cls, errors: Iterable[ReadError]) -> RowRanges:
        """The rows read errors cover; an error without a row count covers its whole file."""
        return cls((e.uri, e.first_row or 0, None if e.num_rows is None else (e.first_row or 0) + e.num_rows)
                   for e in errors)

    def __contains__(self, key: tuple[str, int]) -> bool:
        uri, row = key
        starts = self._starts.get(uri)
        if not starts:
            return False
        i = bisect_right(starts, row) - 1
        return i >= 0 and row < self._stops[uri][i]


@dataclass
class Tally:
    """What a rank's outputs hold, counted as they are written."""

    counts: Counter = field(default_factory=Counter)
    error_reasons: Counter = field(default_factory=Counter)
    unexplained_reasons: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)

    def add(self, entry: dict[str, Any], resumed: bool) -> None:
        c = self.counts
        outcome = entry["outcome"]
        c["rows"] += 1
        c["resumed"] += resumed
        if outcome == "passed":
            c["passed"] += 1
        elif outcome in ("verified", "rejected"):
            c[outcome] += 1
            c["wrong"] += 1
        elif outcome == "unexplained":
            c["unexplained"] += 1
            c["wrong"] += 1
            self.unexplained_reasons[entry["record"]["reason"]] += 1
        else:
            reason = entry["record"]["reason"]
            c["errors"] += 1
            self.error_reasons[reason] += 1
            teacher = reason.startswith("teacher_")  # the teacher was asked: the target was wrong
            c["wrong"] += teacher
            c["teacher_errors"] += teacher
        self.tokens.update(entry.get("usage") or {})

    def add_read_error(self, record: dict[str, Any]) -> None:
        self.counts["read_errors"] += 1
        self.error_reasons[record["reason"]] += 1


class ProbeJournal:
    """One rank's view of the probe journal: the rows of its work units (see the module docstring).

    ``prior``: the segments of earlier attempts that apply (rank 0's :func:`keep_or_discard`,
    shared with every rank). :meth:`record` is thread-safe.
    """

    def __init__(self, journal_dir: str, rank: int, settings: dict[str, Any], units: list[WorkUnit],
                 prior: list[str]) -> None:
        self.fp = fingerprint_of(settings)
        self.journal = Journal(journal_dir, f"rank-{rank:05d}")
        self.mine = RowRanges.of_units(units)
        self.prior = list(prior)
        self.foreign = 0  # entries with another fingerprint, skipped

    def __enter__(self) -> ProbeJournal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.journal.close()

    # -- writing -----------------------------------------------------------------------------
    def record(self, row: Row, outcome: str, record: dict[str, Any] | None = None, *,
               usage: dict[str, int] | None = None, wrong: dict[str, Any] | None = None) -> None:
        """Append one row's outcome as it finishes (``record``: the failure, error row or unexplained
        wrong answer; ``wrong``: the wrong answer, for ``probe/wrong-rank-*.jsonl``)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        entry: dict[str, Any] = {"uri": row.uri, "row": row.row, "fp": self.fp, "outcome": outcome}
        if record is not None:
            entry["record"] = record
        if usage:
            entry["usage"] = usage
        if wrong is not None:
            entry["wrong"] = wrong
        if outcome == "error" and record is not None and record.get("reason") in RETRIED_REASONS:
            entry["done"] = False
        self.journal.append(entry)

    # -- reading -----------------------------------------------------------------------------
    def _own_segments(self) -> list[str]:
        return [u for u in self.journal.segments() if basename(u).split(".")[1] == self.journal.attempt]

    def _entries(self, segments: list[str], lost: RowRanges) -> Iterator[dict[str, Any]]:
        for uri in segments:
            for entry in read_segment(uri):
                if entry.get("fp") != self.fp:
                    self.foreign += 1
                    continue
                key = (entry["uri"], entry["row"])
                if key in self.mine and key not in lost:
                    yield entry

    def done_rows(self) -> dict[str, set[int]]:
        """Rows of this rank's units that earlier attempts finished for good, by file."""
        done: dict[str, set[int]] = {}
        for entry in self._entries(self.prior, RowRanges()):
            if entry.get("done", True):
                done.setdefault(entry["uri"], set()).add(entry["row"])
        if self.foreign:
            log.warning("resume journal: skipped %d entries made with other settings", self.foreign)
        return done

    def write_outputs(self, failures_uri: str, errors_uri: str, read_errors: list[ReadError],
                      where: dict[str, Any], wrong_uri: str | None = None) -> Tally:
        """Write the rank's output files from the journal (after :meth:`close`); what they hold.

        ``read_errors``: this attempt's rows lost at reading, written as error rows first (with
        ``where``: rank, run date); journal entries for those rows are left out (the rows could
        not be read this time). ``wrong_uri``: every wrong answer, explained or not, with its
        ``outcome`` (verified, rejected, unexplained or the teacher error's reason).
        """
        tally = Tally()
        lost = RowRanges.of_errors(read_errors)
        own = self._own_segments()
        done: dict[str, set[int]] = {}
        with JsonlWriter(failures_uri) as failures, JsonlWriter(errors_uri) as errors, \
                JsonlWriter(wrong_uri) if wrong_uri else contextlib.nullcontext() as wrongs:
            for err in read_errors:
                record = err.record("probe", **where)
                errors.write(record)
                tally.add_read_error(record)
            # One read of each segment (earlier attempts, then this one): a row's first done entry
            # is written; rows with only not-done entries get this attempt's error row, else an
            # earlier one (the later attempt's replaces the earlier in ``pending``; they are few).
            pending: dict[tuple[str, int], tuple[dict[str, Any], bool]] = {}
            for segments, resumed in ((self.prior, True), (own, False)):
                for entry in self._entries(segments, lost):
                    if not entry.get("done", True):
                        pending[(entry["uri"], entry["row"])] = (entry, resumed)
                        continue
                    rows = done.setdefault(entry["uri"], set())
                    if entry["row"] in rows:
                        continue
                    rows.add(entry["row"])
                    self._write(entry, failures, errors, wrongs)
                    tally.add(entry, resumed)
            for (uri, row), (entry, resumed) in pending.items():
                if row not in done.get(uri, ()):
                    self._write(entry, failures, errors, wrongs)
                    tally.add(entry, resumed)
        return tally

    @staticmethod
    def _write(entry: dict[str, Any], failures: JsonlWriter, errors: JsonlWriter, wrongs: Any = None) -> None:
        outcome = entry["outcome"]
        if outcome == "verified":
            failures.write(entry["record"])
        elif outcome not in ("passed", "unexplained"):
            errors.write(entry["record"])
        if wrongs is not None and entry.get("wrong") is not None:
            detail = entry["record"]["reason"] if outcome in ("error", "unexplained") else None
            wrongs.write({**entry["wrong"], "explained": outcome in ("verified", "rejected"), "outcome": outcome,
                          "reason": detail})

    @staticmethod
    def clear_dir(journal_dir: str) -> None:
        """Remove the whole journal (every rank's segments and the fingerprint): the step is done."""
        Journal(journal_dir, "clear").clear()
