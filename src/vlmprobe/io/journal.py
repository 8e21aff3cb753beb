"""Resume journals: finished records appended as they finish, so a killed process loses little.

A step that pays for each record (Gemini calls) appends every finished record — its output or
its error row — to a journal; a rerun reads what earlier attempts finished and skips it. One
journal folder (``probe/_journal/``, ``qa/_journal/``) holds segments of any number of writers
(ranks, shards) and attempts; each attempt of a writer writes its own segments, never touching
another's, so concurrent writers and retried pods need no locking.

Durability bound, and where the I/O runs (``append`` is called from async code: whatever it
blocks on stalls every request in flight, so it never waits for a store):
- local disks: one segment file per attempt, ``{writer}.{attempt}.jsonl``; every record is
  written and flushed to the OS before :meth:`Journal.append` returns (on the caller's thread: a
  write into the page cache, cheap; the file is opened on the first append). A background thread
  fsyncs it at most every ``flush_interval_s`` (an fsync on a network volume is a round trip) and
  :meth:`Journal.close` fsyncs it. A killed process loses only the record being written; the
  reader drops a torn last line.
- object stores (no appends): :meth:`Journal.append` only queues the record; a background thread
  writes the queued records as one small segment object ``{writer}.{attempt}.{seq:06d}.jsonl``
  (atomically, see :mod:`vlmprobe.io.fs`) once ``flush_every`` records are queued or the oldest
  has waited ``flush_interval_s`` seconds, whichever comes first; records queued while it
  uploads go into the next segment. Each segment is a new object, written once. A killed process
  loses the records of the last ``flush_interval_s`` seconds at most, plus those queued during
  an upload in progress.

A write that fails is retried by the thread (:attr:`Journal.write_retries` times, backing off);
if it still fails its records stay queued for the next try and the error is raised by the next
:meth:`Journal.append`, :meth:`Journal.flush` or :meth:`Journal.close`: never lost silently.

Safe to read while writers run (a reader sees complete segments, local segments up to their
last complete line). A journal says nothing about *which settings* produced its records: the
caller stores a fingerprint in them (or checks one) before trusting them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from vlmprobe.io.fs import basename, is_local, join, list_dir, open_input_stream, remove_tree, resolve, write_bytes

log = logging.getLogger("vlmprobe.io.journal")
_WRITER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_CHUNK = 1 << 20


class Journal:
    """Append finished records of one writer; read the finished records of every writer.

    ``Journal(dir_uri, writer_name)``; use as a context manager (or call :meth:`close`).
    ``append`` is thread-safe and never waits for a store (see the module docstring). Records are
    JSON objects.
    """

    write_retries = 3  # further attempts of a failed segment write, before the error is raised
    retry_backoff_s = 0.5  # first wait between attempts; doubled each time

    def __init__(self, dir_uri: str, writer_name: str, *, flush_every: int = 64,
                 flush_interval_s: float = 10.0) -> None:
        if not _WRITER.match(writer_name):
            raise ValueError(f"journal writer name {writer_name!r}: letters, digits, '_' and '-' only")
        if flush_every < 1 or flush_interval_s <= 0:
            raise ValueError("flush_every must be >= 1 and flush_interval_s > 0")
        self.dir_uri, self.writer = dir_uri, writer_name
        self.flush_every, self.flush_interval_s = flush_every, flush_interval_s
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.attempt = f"{stamp}-{uuid.uuid4().hex[:6]}"
        self.local = is_local(dir_uri)
        self.appended = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the queue, a request or the flusher's state moved
        self._file = None  # local segment, opened on the first append
        self._unsynced = False  # local: lines written since the last fsync
        self._buffer: list[bytes] = []  # object stores: lines not yet in a segment
        self._oldest = 0.0  # when the oldest queued line was appended
        self._queued = 0  # lines ever queued (object stores)
        self._durable = 0  # of them, lines in a written segment
        self._wanted = 0  # flush(): make lines up to this count durable now
        self._seq = 0
        self._error: BaseException | None = None  # the flusher's last failure, not yet raised
        self._closed = False
        self._stopping = False
        self._flusher: threading.Thread | None = None

    # -- writing -----------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Record one finished record (durable as the module docstring says; no store I/O here)."""
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                raise ValueError("append to a closed journal")
            self._raise_error()
            self.appended += 1
            if self.local:
                self._append_local(line)
            else:
                if not self._buffer:
                    self._oldest = time.monotonic()
                self._buffer.append(line)
                self._queued += 1
                if len(self._buffer) >= self.flush_every:
                    self._changed.notify_all()
            self._start_flusher()

    def _raise_error(self) -> None:
        """Raise the flusher's failure once (call with the lock held); its records stay queued."""
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"journal {self.dir_uri}: writing a segment failed, {len(self._buffer)} record(s) "
                          f"wait for the next try: {error}") from error

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name=f"journal-{self.writer}", daemon=True)
            self._flusher.start()

    def _append_local(self, line: bytes) -> None:
        if self._file is None:
            fs, path = resolve(self.dir_uri)
            fs.create_dir(path, recursive=True)
            self._file = open(os.path.join(path, f"{self.writer}.{self.attempt}.jsonl"), "ab")
        self._file.write(line)
        self._file.flush()
        self._unsynced = True

    # -- the flusher thread ------------------------------------------------------------------
    def _due(self, retry_at: float) -> bool:
        """Should the flusher act now? (call with the lock held)"""
        if self._stopping:
            return True
        if not self._buffer or time.monotonic() < retry_at:
            return False
        return (self._wanted > self._durable or len(self._buffer) >= self.flush_every
                or time.monotonic() - self._oldest >= self.flush_interval_s)

    def _wait_s(self, retry_at: float) -> float:
        now = time.monotonic()
        if now < retry_at:
            return retry_at - now
        if self._buffer:
            return max(self._oldest + self.flush_interval_s - now, 0.01)
        return self.flush_interval_s

    def _flush_loop(self) -> None:
        if self.local:
            self._sync_loop()
            return
        retry_at = 0.0
        while True:
            with self._changed:
                while not self._due(retry_at):
                    self._changed.wait(self._wait_s(retry_at))
                if not self._buffer or (self._stopping and self._error is not None):
                    self._changed.notify_all()
                    return  # closing with nothing left, or the last try failed: close() raises it
                lines, self._buffer = self._buffer, []
                name = f"{self.writer}.{self.attempt}.{self._seq:06d}.jsonl"
            try:
                self._write_segment(name, b"".join(lines))
            except Exception as e:  # kept queued; raised by the next append, flush or close
                log.warning("journal %s: writing %d record(s) failed after %d tries: %s", self.dir_uri, len(lines),
                            self.write_retries + 1, e)
                with self._changed:
                    self._buffer[:0] = lines
                    self._oldest = time.monotonic() - self.flush_interval_s  # due again once the backoff ends
                    self._error = e
                    self._changed.notify_all()
                retry_at = time.monotonic() + self.flush_interval_s / 4
                continue
            with self._changed:
                self._seq += 1
                self._durable += len(lines)
                self._changed.notify_all()
            retry_at = 0.0

    def _sync_loop(self) -> None:
        """Local segments: fsync every ``flush_interval_s`` while lines arrive, once more on close."""
        while True:
            with self._changed:
                if not self._stopping:
                    self._changed.wait(self.flush_interval_s)
                stopping = self._stopping
            self._sync_local()
            if stopping:
                return

    def _write_segment(self, name: str, data: bytes) -> None:
        """One segment object, retried with backoff (runs on the flusher thread)."""
        delay = self.retry_backoff_s
        for attempt in range(self.write_retries + 1):
            try:
                write_bytes(join(self.dir_uri, name), data)
                return
            except Exception:
                if attempt == self.write_retries:
                    raise
                time.sleep(delay)
                delay *= 2

    def _sync_local(self) -> None:
        """fsync the local segment if lines were written since the last one (flusher thread, or close)."""
        with self._lock:
            if self._file is None or not self._unsynced:
                return
            self._unsynced = False
            fileno = self._file.fileno()
        os.fsync(fileno)

    # -- durability on demand ----------------------------------------------------------------
    def flush(self) -> None:
        """Make every record appended so far durable now (waits for the flusher; not for async code)."""
        if self.local:
            with self._lock:
                if self._file is not None:
                    self._file.flush()
            self._sync_local()
            return
        with self._changed:
            self._raise_error()
            target = self._queued
            if self._durable >= target:
                return
            self._wanted = max(self._wanted, target)
            self._start_flusher()
            self._changed.notify_all()
            while self._durable < target and self._error is None:
                self._changed.wait(1.0)
            self._raise_error()

    def close(self) -> None:
        """Write what is queued, stop the flusher, fsync; safe to call twice. Raises what failed."""
        if self._closed:
            return
        with self._changed:
            self._closed = True  # appends are refused from here on
            self._stopping = True
            self._error = None  # the last try below decides
            self._changed.notify_all()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            if self._file is not None:
                self._file.flush()
        self._sync_local()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._buffer:  # the last try failed: say so, never drop them silently
                error, self._error = self._error, None
                raise OSError(f"journal {self.dir_uri}: {len(self._buffer)} record(s) could not be written: "
                              f"{error}") from error

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def segments(self) -> list[str]:
        """Every writer's complete segments, oldest attempt first."""
        return sorted((u for u in list_dir(self.dir_uri)
                       if u.endswith(".jsonl") and not basename(u).startswith((".", "_"))),
                      key=lambda u: (basename(u).split(".")[1:], basename(u)))

    def finished(self) -> Iterator[dict[str, Any]]:
        """The records every writer has made durable so far (earlier attempts', and this one's)."""
        for uri in self.segments():
            yield from read_segment(uri)

    def done_ids(self, field: str = "id") -> set[str]:
        """The ``field`` of every finished record (records without it are left out)."""
        return {str(r[field]) for r in self.finished() if r.get(field) is not None}

    def clear(self) -> None:
        """Remove the whole journal folder (every writer's segments): its step finished for good."""
        remove_tree(self.dir_uri)


def read_segment(uri: str) -> Iterator[dict[str, Any]]:
    """Records of one segment (a URI from :meth:`Journal.segments`), streamed; a torn last line (a
    killed writer's) is dropped. For readers that pick segments themselves (e.g. only those of
    earlier attempts)."""
    n = 0
    with open_input_stream(uri) as f:
        rest = b""
        while chunk := f.read(_CHUNK):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                n += 1
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"journal segment {uri} line {n} is not JSON: {e}") from e
    if rest.strip():
        log.warning("journal segment %s ends with a torn record (its writer was killed mid-line); dropped", uri)
