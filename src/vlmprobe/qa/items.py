"""One sampled failure → its QA items or its error row: :class:`ShardQA` asks, :class:`Outcome` keeps.

The teacher is asked for up to ``max_items`` QA pairs probing the failure's factor; pairs that do
not hold together are dropped (:func:`clean_items`) and counted; a failure with none left, an
unreadable image or a teacher error becomes one error row with its reason.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from vlmprobe.config import QAConfig
from vlmprobe.contracts import TokenCounts
from vlmprobe.records import error_record, stable_id

TOKEN_FIELDS = tuple(TokenCounts.model_fields)
# Error rows of failures left without a request because a limit was reached (QA's reservation or
# the day's quota: limited_daily_quota; the run's budget: limited_budget). Not teacher errors:
# publish does not fail a run for them; never journalled, so a rerun asks for exactly them.
LIMITED_PREFIX = "limited_"


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

    def prompt(self, rec: dict[str, Any]) -> str:
        """The QA prompt of a failure (online and in a batch job alike)."""
        from vlmprobe.teacher.prompts import qa_prompt

        factor = rec["factor"]
        completion = factor.get("completion", "") if isinstance(factor, dict) else str(factor)
        return qa_prompt(rec["question"], rec["answer"], rec["prediction"], rec["failure_key"], completion,
                         self.cfg.max_items)

    async def ask(self, seq: int, rec: dict[str, Any], prompt: str, data: bytes, mime: str) -> Any:
        """The teacher's QASet for failure ``seq`` (a TeacherResult); raises TeacherError. Online here;
        batch mode answers from its job first (:class:`vlmprobe.qa.batch.BatchShardQA`)."""
        from vlmprobe.teacher.schemas import QASet

        return await self.teacher.generate(prompt, QASet, images=[(data, mime)], kind="qa")

    def teacher_stats(self) -> dict[str, Any]:
        """What the teacher did for this shard (the shard's stats file keeps it)."""
        return dict(self.teacher.stats)

    async def handle(self, seq: int, rec: dict[str, Any], image: bytes | Exception) -> tuple[Outcome, Any]:
        """One failure → (its outcome, its decoded image for the target check, or None)."""
        from vlmprobe.errors import QuotaExhausted
        from vlmprobe.images import decode
        from vlmprobe.teacher.results import TeacherError

        try:
            if isinstance(image, Exception):
                raise image
            rgb, data, mime = decode(image)
        except (ValueError, OSError, KeyError, IndexError) as e:
            return self.error(seq, rec, "image_unreadable", str(e)), None
        try:
            result = await self.ask(seq, rec, self.prompt(rec), data, mime)
        except QuotaExhausted as e:  # the project's day or QA's reservation: a limit, asked again by a rerun
            return self.error(seq, rec, "limited_daily_quota", str(e), durable=False), None
        except TeacherError as e:  # failed attempts are billed too
            if e.reason == "budget_reached":  # a limit: never journalled, so a rerun with more asks for it
                return self.error(seq, rec, "limited_budget", str(e), tokens=_tokens(e.usage), durable=False), None
            return self.error(seq, rec, f"teacher_{e.reason}", str(e), tokens=_tokens(e.usage)), None
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


class RowGroupReader:
    """Image cells of parquet rows, read a whole row group at a time; the last row group read is kept.

    Asked for rows in (file, row) order — the order a QA shard processes its referenced records in
    (:func:`vlmprobe.qa.run._reading_order`) — it reads each row group of a shard once, however the
    shard's batches cut through it. Keeps one file open and one row group's image column in memory.
    """

    def __init__(self) -> None:
        self._uri: str | None = None
        self._file: Any = None
        self._parquet: Any = None
        self._starts: list[int] = []
        self._group: int | None = None
        self._column: Any = None
        self.row_groups_read = 0

    def _open(self, uri: str) -> None:
        if uri == self._uri:
            return
        import pyarrow.parquet as pq

        from vlmprobe.io.fs import resolve

        self.close()
        fs, path = resolve(uri)
        self._file = fs.open_input_file(path)
        # Page checksums, where the writer stored them, turn silent corruption into a read error.
        self._parquet = pq.ParquetFile(self._file, page_checksum_verification=True)
        meta = self._parquet.metadata
        self._starts = [0]
        for rg in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(rg).num_rows)
        self._uri = uri

    def read_group(self, rg: int) -> Any:
        """Row group ``rg``'s image column (of the open file)."""
        self.row_groups_read += 1
        return self._parquet.read_row_group(rg, columns=["image"]).column("image")

    def cells(self, uri: str, rows: list[int]) -> dict[int, dict[str, Any]]:
        """``{row: {"image": cell}}`` for the rows of ``uri`` that exist (as :func:`vlmprobe.io.parquet.read_cells`)."""
        from bisect import bisect_right

        self._open(uri)
        out: dict[int, dict[str, Any]] = {}
        for r in sorted(set(rows)):
            rg = bisect_right(self._starts, r) - 1
            if r < 0 or rg >= len(self._starts) - 1:
                continue  # past the end of the file: the caller reports it
            if (uri, rg) != (self._uri, self._group):
                self._group, self._column = None, None  # a failed read keeps nothing half-read
                self._column = self.read_group(rg)
                self._group = rg
            out[r] = {"image": self._column[r - self._starts[rg]].as_py()}
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._uri = self._file = self._parquet = self._group = self._column = None


def load_images(records: list[dict[str, Any]], reader: RowGroupReader | None = None) -> list[bytes | Exception]:
    """Image bytes for each record: embedded base64, or read by reference (each file once; with ``reader``,
    each row group once while records come in (file, row) order)."""
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
            rows = [records[i]["image"]["row"] for i in idx]
            cells = reader.cells(uri, rows) if reader is not None else read_cells(uri, rows, ["image"])
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
