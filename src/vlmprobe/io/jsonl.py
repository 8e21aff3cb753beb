"""JSON Lines: an atomic, counting writer and streaming readers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from vlmprobe.io.fs import atomic_write, open_input_stream

LINE_CHUNK = 1 << 20


class JsonlWriter:
    """Write records one per line to ``uri``; the file appears only when the writer closes cleanly.

    With ``json_array=True`` the file is one JSON array instead, still written record by record
    (never held in memory). Use as a context manager; ``count`` is the number of records written.
    ``write`` is thread-safe: a step may write from its event loop and from a worker thread.
    """

    def __init__(self, uri: str, *, json_array: bool = False) -> None:
        self.uri = uri
        self.count = 0
        self.json_array = json_array
        self._cm = atomic_write(uri)
        self._f = None
        self._lock = threading.Lock()

    def __enter__(self) -> JsonlWriter:
        self._f = self._cm.__enter__()
        if self.json_array:
            self._f.write("[")
        return self

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            if self.json_array:
                self._f.write(",\n" if self.count else "\n")
                self._f.write(line)
            else:
                self._f.write(line + "\n")
            self.count += 1

    def __exit__(self, *exc) -> bool:
        if self.json_array and exc[0] is None:
            self._f.write("\n]\n")
        return bool(self._cm.__exit__(*exc))


def iter_lines(uri: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its newline) of every line of ``uri``, streamed in 1 MB reads.

    With ``start``/``stop``, only the lines that start in ``[start, stop)``; ``start`` must be
    the offset of a line's first byte (as this function reports them).
    """
    if start:
        from vlmprobe.io.fs import open_input_file

        f = open_input_file(uri)
        f.seek(start)
    else:
        f = open_input_stream(uri)
    with f:
        pos, rest = start, b""
        while stop is None or pos < stop:
            chunk = f.read(LINE_CHUNK)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if stop is not None and pos >= stop:
                    return
                yield pos, line
                pos += len(line) + 1
        if rest and (stop is None or pos < stop):
            yield pos, rest


def iter_jsonl(uri: str) -> Iterator[dict[str, Any]]:
    """Stream the records of a JSONL file, one line at a time."""
    for lineno, (_, line) in enumerate(iter_lines(uri), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{uri} line {lineno} is not JSON: {e}") from e


def iter_json_array(uri: str, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Stream the elements of a file holding one JSON array, a chunk at a time."""
    decoder = json.JSONDecoder()
    with open_input_stream(uri) as raw:
        import io

        text = io.TextIOWrapper(raw, encoding="utf-8")
        buf, pos, started, eof = "", 0, False, False
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if not started and pos < len(buf):
                if buf[pos] != "[":
                    raise ValueError(f"{uri} should hold a JSON array of records")
                started, pos = True, pos + 1
                continue
            if started and pos < len(buf) and buf[pos] == "]":
                return
            try:
                if pos >= len(buf):
                    raise json.JSONDecodeError("need more", buf, pos)
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if eof:
                    raise ValueError(f"{uri} is not a complete JSON array: {e}") from e
                chunk = text.read(chunk_chars)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            yield item
            pos = end


def iter_json_records(uri: str) -> Iterator[dict[str, Any]]:
    """Records of a ``.jsonl`` file or of a ``.json`` file holding one array, both streamed."""
    return iter_json_array(uri) if uri.endswith(".json") else iter_jsonl(uri)
