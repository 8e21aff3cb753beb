"""Parquet input, read one row group at a time, with every row accounted for.

Input rows carry ``image`` (a ``{bytes, path}`` struct as Hugging Face datasets writes it, or
plain binary), ``question``, ``answer`` and optionally ``id``, ``choices`` and other columns.

A file's footer says how many rows each row group holds, so rows that cannot be read are
counted, not guessed: a row group that fails to read or decode becomes one :class:`ReadError`
with its file and row range and the rest of the file goes on; a file whose footer cannot be
read is lost whole (its row count unknown); a file without the required columns is lost with
the row count its footer gives. :func:`iter_units` is the iterator the probe uses; it yields
rows and errors in file order and keeps an :class:`InputCounts`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import groupby
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlmprobe.io.fs import join, read_bytes, resolve
from vlmprobe.records import error_record

log = logging.getLogger("vlmprobe.io.parquet")
REQUIRED_COLUMNS = ("image", "question", "answer")
# What reading a damaged file can raise: Arrow's errors (ArrowException, and OSError for I/O and
# corrupt pages), decoding problems surfacing as ValueError/IndexError, thrift as EOFError.
READ_ERRORS = (pa.ArrowException, OSError, ValueError, IndexError, EOFError)


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


@dataclass(frozen=True)
class WorkUnit:
    """One row group of one file: the unit of work the probe splits across ranks."""

    uri: str
    row_group: int
    first_row: int  # the file's row number of the group's first row
    num_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkUnit:
        return cls(d["uri"], int(d["row_group"]), int(d["first_row"]), int(d["num_rows"]))


@dataclass(frozen=True)
class ReadError:
    """Rows that could not be read: part of a row group, a row group, or a whole file.

    ``num_rows`` is how many rows were lost (from the footer); None when the footer itself is
    unreadable. ``reason``: ``unreadable_row_group``, ``unreadable_file`` or ``missing_columns``.
    """

    uri: str
    reason: str
    detail: str
    row_group: int | None = None
    first_row: int | None = None
    num_rows: int | None = None

    @property
    def file_lost(self) -> bool:
        return self.reason in ("unreadable_file", "missing_columns")

    def record(self, step: str = "probe", **where: Any) -> dict[str, Any]:
        """The error row: the file, the row group and the rows ``[first_row, first_row + num_rows)``."""
        rows = None
        if self.first_row is not None and self.num_rows is not None:
            rows = [self.first_row, self.first_row + self.num_rows]
        return error_record(step, self.reason, self.detail, file=self.uri, row_group=self.row_group,
                            rows=rows, rows_lost=self.num_rows, **where)


@dataclass
class InputCounts:
    """Input accounting of a set of files: what was read, what was lost."""

    files: int = 0  # files whose footer was read
    files_lost: int = 0  # unreadable footer, or required columns missing
    files_lost_rows_unknown: int = 0  # of those, the ones whose row count nobody knows
    row_groups: int = 0  # row groups read whole
    row_groups_lost: int = 0  # row groups with at least one row lost
    rows_read: int = 0
    rows_lost: int = 0  # known from the footers

    def add_error(self, err: ReadError) -> None:
        if err.file_lost:
            self.files_lost += 1
            if err.num_rows is None:
                self.files_lost_rows_unknown += 1
        else:
            self.row_groups_lost += 1
        self.rows_lost += err.num_rows or 0

    def problem(self, max_error_rate: float) -> str | None:
        """Why a step that read this input must fail, or None: no row read at all, or more rows
        lost than ``max_error_rate`` of all rows. A file lost with an unknown row count is taken
        to hold as many rows as the average readable file. A sentence for the user."""
        if self.rows_read == 0:
            return (f"no input row could be read ({self.files_lost} file(s) lost, {self.rows_lost} row(s) lost): "
                    "check input_uri and the files' format (parquet with image, question and answer columns)")
        readable = self.files + self.files_lost - self.files_lost_rows_unknown  # files that told their row count
        per_file = (self.rows_read + self.rows_lost) / max(readable, 1)
        lost = self.rows_lost + self.files_lost_rows_unknown * per_file
        total = self.rows_read + lost
        if lost / total > max_error_rate:
            return (f"about {lost:.0f} of {total:.0f} input rows ({lost / total:.1%}) could not be read, more than "
                    f"max_error_rate {max_error_rate:.1%}: see the error rows for the files and row ranges")
        return None

    def merge(self, other: InputCounts) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = resolve(uri)
    # Page checksums, where the writer stored them, turn silent corruption into a read error.
    return pq.ParquetFile(fs.open_input_file(path), page_checksum_verification=True)


def file_units(uri: str) -> tuple[list[WorkUnit], ReadError | None]:
    """The row groups of one file as work units, or why the file cannot be read at all.

    Reads only the footer. Empty row groups are left out (nothing to read).
    """
    try:
        pf = open_parquet(uri)
        meta = pf.metadata
        names = set(pf.schema_arrow.names)
    except READ_ERRORS as e:
        return [], ReadError(uri, "unreadable_file", f"{type(e).__name__}: {e}")
    total = meta.num_rows
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        return [], ReadError(uri, "missing_columns",
                             f"{uri} lacks the column(s) {missing}; input rows need image, question and answer",
                             first_row=0, num_rows=total)
    units, start = [], 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if n:
            units.append(WorkUnit(uri, rg, start, n))
        start += n
    return units, None


def iter_units(units: Iterable[WorkUnit], batch_rows: int = 256,
               counts: InputCounts | None = None) -> Iterator[Row | ReadError]:
    """Rows of the given row groups, in order, ``batch_rows`` decoded at a time.

    A row group that fails part way yields the rows read before the failure, then one
    :class:`ReadError` for the rest of the group; the next group goes on. A file that cannot be
    opened any more yields one error covering its units' rows. ``counts``, when given, is
    updated as rows and errors are yielded.
    """
    counts = counts if counts is not None else InputCounts()
    for uri, group in groupby(units, key=lambda u: u.uri):
        group = list(group)
        try:
            pf = open_parquet(uri)
        except READ_ERRORS as e:
            err = ReadError(uri, "unreadable_file", f"{type(e).__name__}: {e}",
                            first_row=group[0].first_row, num_rows=sum(u.num_rows for u in group))
            counts.add_error(err)
            yield err
            continue
        counts.files += 1
        for unit in group:
            done = 0
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[unit.row_group]):
                    rows = batch.to_pylist()
                    for cells in rows:
                        yield Row(uri, unit.first_row + done, cells)
                        done += 1
                        counts.rows_read += 1
            except READ_ERRORS as e:
                err = ReadError(uri, "unreadable_row_group", f"{type(e).__name__}: {e}", row_group=unit.row_group,
                                first_row=unit.first_row + done, num_rows=unit.num_rows - done)
                log.error("%s row group %d: rows %d-%d lost: %s", uri, unit.row_group, err.first_row,
                          err.first_row + err.num_rows - 1, err.detail)
                counts.add_error(err)
                yield err
                continue
            if done != unit.num_rows:  # the footer promised more (or fewer) rows than the group had
                err = ReadError(uri, "unreadable_row_group",
                                f"row group {unit.row_group} holds {done} rows, its footer says {unit.num_rows}",
                                row_group=unit.row_group, first_row=unit.first_row + done,
                                num_rows=max(unit.num_rows - done, 0))
                counts.add_error(err)
                yield err
                continue
            counts.row_groups += 1


def iter_file(uri: str, batch_rows: int = 256, counts: InputCounts | None = None) -> Iterator[Row | ReadError]:
    """Every row of one file, row group by row group, with errors as :func:`iter_units` yields them."""
    counts = counts if counts is not None else InputCounts()
    units, lost = file_units(uri)
    if lost is not None:
        counts.add_error(lost)
        yield lost
        return
    if not units:
        counts.files += 1
        return
    yield from iter_units(units, batch_rows, counts)


def iter_rows(uri: str, batch_rows: int = 256) -> Iterator[Row]:
    """Every row of one parquet file; raises ValueError at the first rows that cannot be read.

    The older, all-or-nothing interface; :func:`iter_file` and :func:`iter_units` go on past a
    bad row group instead.
    """
    for item in iter_file(uri, batch_rows):
        if isinstance(item, ReadError):
            raise ValueError(item.detail)
        yield item


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


def read_images(uri: str, rows: list[int]) -> dict[int, Any]:
    """The encoded image of each of ``rows`` of one file: bytes-like (zero-copy where the column
    allows), or the exception saying why that row has none. Reads only the ``image`` column of
    the row groups that hold the rows; rows past the end of the file get a ValueError.
    """
    pf = open_parquet(uri)
    meta = pf.metadata
    wanted = sorted(set(rows))
    out: dict[int, Any] = {}
    start, i = 0, 0
    for rg in range(meta.num_row_groups):
        stop = start + meta.row_group(rg).num_rows
        hits = []
        while i < len(wanted) and wanted[i] < stop:
            hits.append(wanted[i])
            i += 1
        if hits:
            # one column, one thread: the caller's pool runs files in parallel
            chunks = pf.read_row_group(rg, columns=["image"], use_threads=False).column("image").chunks
            datas = [c.field("bytes") if pa.types.is_struct(c.type) else c for c in chunks]
            first, c = 0, 0
            for r in hits:  # rows in order: walk the chunks (no copy into one array)
                while r - start >= first + len(chunks[c]):
                    first += len(chunks[c])
                    c += 1
                try:
                    scalar = datas[c][r - start - first]
                    buf = scalar.as_buffer() if scalar.is_valid else None
                    out[r] = buf if buf is not None and buf.size else image_bytes(chunks[c][r - start - first].as_py(), uri)
                except (ValueError, OSError) as e:
                    out[r] = e
        start = stop
    for r in wanted[i:]:
        out[r] = ValueError(f"{uri} has no row {r}")
    return out


def cell_image_bytes(cells: dict[int, dict[str, Any]], row: int, uri: str) -> bytes:
    """The image bytes of ``row`` from a :func:`read_cells` result; ValueError if the row is absent."""
    if row not in cells:
        raise ValueError(f"{uri} has no row {row}")
    return image_bytes(cells[row]["image"], uri)
