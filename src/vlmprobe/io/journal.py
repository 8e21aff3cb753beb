"""Resume journals: finished records appended as they finish, so a killed process loses little.

A step that pays for each record (Gemini calls) appends every finished record — its output or
its error row — to a journal; a rerun reads what earlier attempts finished and skips it. One
journal folder (``probe/_journal/``, ``qa/_journal/``) holds segments of any number of writers
(ranks, shards) and attempts; each attempt of a writer writes its own segments, never touching
another's, so concurrent writers and retried pods need no locking.

Durability bound:
- local disks: one segment file per attempt, ``{writer}.{attempt}.jsonl``; every record is
  written and flushed to the OS before :meth:`Journal.append` returns (fsync'd at most every
  ``flush_interval_s`` and on close). A killed process loses only the record being written; the
  reader drops a torn last line.
- object stores (no appends): records are buffered and written as one small segment object
  ``{writer}.{attempt}.{seq:06d}.jsonl`` (atomically, see :mod:`vlmprobe.io.fs`) every
  ``flush_every`` records or ``flush_interval_s`` seconds, whichever comes first (a background
  thread flushes an idle buffer). A killed process loses at most the records of the last
  ``flush_interval_s`` seconds, and never more than ``flush_every - 1`` of them.

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
    ``append`` is thread-safe. Records are JSON objects.
    """

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
        self._file = None  # local segment, opened on the first append
        self._last_sync = time.monotonic()
        self._buffer: list[bytes] = []  # object stores: lines not yet in a segment
        self._seq = 0
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- writing -----------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Record one finished record (flushed as the module docstring says)."""
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                raise ValueError("append to a closed journal")
            self.appended += 1
            if self.local:
                self._append_local(line)
                return
            self._buffer.append(line)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_idle, name=f"journal-{self.writer}",
                                                 daemon=True)
                self._flusher.start()
            if len(self._buffer) >= self.flush_every:
                self._flush_buffer()

    def _append_local(self, line: bytes) -> None:
        if self._file is None:
            fs, path = resolve(self.dir_uri)
            fs.create_dir(path, recursive=True)
            self._file = open(os.path.join(path, f"{self.writer}.{self.attempt}.jsonl"), "ab")
        self._file.write(line)
        self._file.flush()
        if time.monotonic() - self._last_sync >= self.flush_interval_s:
            os.fsync(self._file.fileno())
            self._last_sync = time.monotonic()

    def _flush_buffer(self) -> None:
        """Write the buffered lines as one segment object (call with the lock held)."""
        if not self._buffer:
            return
        data, self._buffer = b"".join(self._buffer), []
        write_bytes(join(self.dir_uri, f"{self.writer}.{self.attempt}.{self._seq:06d}.jsonl"), data)
        self._seq += 1
        self._last_sync = time.monotonic()

    def _flush_idle(self) -> None:
        while not self._stop.wait(self.flush_interval_s / 4):
            with self._lock:
                if self._buffer and time.monotonic() - self._last_sync >= self.flush_interval_s:
                    try:
                        self._flush_buffer()
                    except Exception:  # the next append or close retries; never kill the thread
                        log.exception("journal %s: flushing %d record(s) failed", self.dir_uri, len(self._buffer))

    def flush(self) -> None:
        """Make every appended record durable now."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._flush_buffer()

    def close(self) -> None:
        """Flush and stop; safe to call twice."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None

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
