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


def load_images(records: list[dict[str, Any]]) -> list[bytes | Exception]:
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
