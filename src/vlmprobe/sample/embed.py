"""Embedding images into sampled records, read and encoded in a thread pool.

Records are embedded a chunk at a time, in output order; within a chunk each parquet file is
one task (its rows read together, each needed row group decoded once), and the next chunk's
tasks run while the current chunk is written, so memory holds about two chunks of images.
Reading parquet and decompressing pages release the GIL; on object stores the pool also
overlaps request latency.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

try:  # SIMD base64, ~80x faster than the standard library's (which holds the GIL throughout)
    from pybase64 import b64encode
except ImportError:  # pragma: no cover - the package is a dependency; the fallback is only slower
    from base64 import b64encode

EMBED_CHUNK = 256  # records whose images are read together


def record_line(record: dict[str, Any]) -> bytes:
    """One record as its JSON line (no newline), as the sampled failures file holds it."""
    return json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")


def _image_ref(record: dict[str, Any]) -> tuple[str, int]:
    image = record.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("uri"), str) or not isinstance(image.get("row"), int):
        raise ValueError("the record has no image reference {uri, row}")
    return image["uri"], image["row"]


def _embed_file(uri: str, items: list[tuple[int, int, bytes]]) -> list[tuple[int, tuple[bytes, ...] | Exception]]:
    """(index, line with ``image_b64`` as parts, or the error) for records (index, row, line) of one file."""
    from vlmprobe.io.parquet import read_images

    try:
        images = read_images(uri, [row for _, row, _ in items])
    except Exception as e:  # the whole file is unreadable now: each record gets the reason
        return [(i, ValueError(f"{uri}: {type(e).__name__}: {e}")) for i, _, _ in items]
    out: list[tuple[int, tuple[bytes, ...] | Exception]] = []
    for i, row, line in items:
        data = images[row]
        if isinstance(data, Exception):
            out.append((i, data))
            continue
        # base64 needs no JSON escaping: splice it in instead of re-encoding the whole record; the
        # parts are written one after the other, never joined (a copy of every image, under the GIL)
        out.append((i, (line[:-1] + b', "image_b64": "', b64encode(data), b'"}')))
    return out


def _submit(pool: ThreadPoolExecutor, chunk: list[dict[str, Any]]) -> list[Future | Exception]:
    by_file: dict[str, list[tuple[int, int, bytes]]] = defaultdict(list)
    bad: dict[int, Exception] = {}
    for i, record in enumerate(chunk):
        try:
            uri, row = _image_ref(record)
        except ValueError as e:
            bad[i] = e
            continue
        by_file[uri].append((i, row, record_line(record)))
    futures: list[Future | Exception] = [pool.submit(_embed_file, uri, items) for uri, items in by_file.items()]
    return futures + [_Failed(i, e) for i, e in bad.items()]


class _Failed(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index, self.error = index, error


def _collect(chunk: list[dict[str, Any]], futures: list[Future | Exception]) -> list[tuple[bytes, ...] | Exception]:
    out: list[tuple[bytes, ...] | Exception | None] = [None] * len(chunk)
    for f in futures:
        if isinstance(f, _Failed):
            out[f.index] = f.error
            continue
        for i, result in f.result():
            out[i] = result
    return out  # type: ignore[return-value]


def embed_records(records: Iterable[dict[str, Any]], threads: int = 4,
                  chunk: int = EMBED_CHUNK) -> Iterator[tuple[dict[str, Any], tuple[bytes, ...] | Exception]]:
    """(record, its line with ``image_b64`` — as parts to write one after the other, never joined —
    or why its image could not be read), in input order."""
    it = iter(records)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="embed") as pool:
        current = list(islice(it, chunk))
        pending = _submit(pool, current) if current else []
        while current:
            following = list(islice(it, chunk))
            next_pending = _submit(pool, following) if following else []
            yield from zip(current, _collect(current, pending))
            current, pending = following, next_pending
