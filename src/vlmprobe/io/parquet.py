"""Parquet input: streamed in record batches, never a whole file in memory.

Input rows carry ``image`` (a ``{bytes, path}`` struct as Hugging Face datasets writes it, or
plain binary), ``question``, ``answer`` and optionally ``id``, ``choices`` and other columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from vlmprobe.io.fs import join, read_bytes, resolve

REQUIRED_COLUMNS = ("image", "question", "answer")


@dataclass
class Row:
    """One input row: where it came from and its cells."""

    uri: str
    row: int
    cells: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> dict[str, Any]:
        """The image reference stored in records: the file and the row, never the pixels."""
        return {"uri": self.uri, "row": self.row}


def open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = resolve(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def iter_rows(uri: str, batch_rows: int = 256) -> Iterator[Row]:
    """Every row of one parquet file, read ``batch_rows`` at a time.

    Raises ValueError naming the file when a required column is missing.
    """
    pf = open_parquet(uri)
    names = set(pf.schema_arrow.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{uri} lacks the column(s) {missing}; input rows need image, question and answer")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for cells in batch.to_pylist():
            yield Row(uri, row, cells)
            row += 1


def image_bytes(cell: Any, parquet_uri: str) -> bytes:
    """The encoded image of an ``image`` cell: struct ``{bytes, path}`` or plain binary.

    A struct with no bytes but a path is read from that path (relative paths are taken
    relative to the parquet file's folder). Raises ValueError when there is nothing to read.
    """
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        path = cell.get("path")
        if path:
            if "://" not in path and not path.startswith("/"):
                path = join(parquet_uri.rsplit("/", 1)[0], path)
            return read_bytes(path)
    raise ValueError("the image cell holds neither bytes nor a path")


def read_cells(uri: str, rows: list[int], columns: list[str]) -> dict[int, dict[str, Any]]:
    """Cells of the given rows of one file, reading only the row groups that hold them.

    Rows past the end of the file are left out of the result; the caller reports them.
    """
    pf = open_parquet(uri)
    wanted = sorted(set(rows))
    out: dict[int, dict[str, Any]] = {}
    start = 0
    meta = pf.metadata
    i = 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        stop = start + n
        hits = []
        while i < len(wanted) and wanted[i] < stop:
            if wanted[i] >= start:
                hits.append(wanted[i])
            i += 1
        if hits:
            table = pf.read_row_group(rg, columns=columns)
            for r in hits:
                out[r] = {c: table.column(c)[r - start].as_py() for c in columns}
        start = stop
    return out


def cell_image_bytes(cells: dict[int, dict[str, Any]], row: int, uri: str) -> bytes:
    """The image bytes of ``row`` from a :func:`read_cells` result; ValueError if the row is absent."""
    if row not in cells:
        raise ValueError(f"{uri} has no row {row}")
    return image_bytes(cells[row]["image"], uri)
