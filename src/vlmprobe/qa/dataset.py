"""A QA shard's items as a Parquet file people load: ``qa/parquet/shard-NNNNN.parquet``.

One row per QA item (the JSONL shard's items, in its order), with the failure's image in the
Hugging Face ``Image`` layout — a struct ``{bytes, path}`` holding the image as the input stored
it (PNG, JPEG, …) — and the features recorded in the schema metadata exactly as ``datasets``
writes them (key ``huggingface``: ``{"info": {"features": …}}``, ``{"_type": "Image"}`` for the
image). So ``datasets.load_dataset("parquet", data_dir=".../qa/parquet")`` yields PIL images, and
pandas, DuckDB or pyarrow read the file as it is. :data:`COLUMNS` says what each column holds
(the dataset card prints it).

The QA shard writes it after its JSONL (:func:`write_shard_parquet`), from the items it kept:
its records are read again a batch at a time, with the images of those that have items (one
read per input file and batch, as the first pass), so memory stays at one batch of images
whatever the shard's size. An image that cannot be read any more (its input file moved since)
keeps its row, with a null ``image`` and the reason in ``image_error``: no item is lost, and
the stats and the dataset card count them. Written atomically (nothing under the final name
unless complete, the row count checked first); a rerun of the shard replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlmprobe.contracts import QAShardParquet, TokenCounts

TOKEN_FIELDS = tuple(TokenCounts.model_fields)
# A row group is flushed at this many rows or image bytes: readers fetch row groups whole, and the
# Hub's viewer asks for row groups of at most a few hundred MB.
ROW_GROUP_ROWS = 1000
ROW_GROUP_BYTES = 128 << 20


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


_STRING = (pa.string(), _value("string"))
_TOKENS = pa.struct([(k, pa.int64()) for k in TOKEN_FIELDS])

# (column, Arrow type, datasets feature, what it holds) in file order.
COLUMNS: tuple[tuple[str, pa.DataType, dict[str, Any], str], ...] = (
    ("id", *_STRING, "the QA item's id, stable across reruns of the run date"),
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]), {"_type": "Image"},
     "the failure's image as the input stored it; null when it could not be read (see image_error)"),
    ("question", *_STRING, "a question about the image that probes the failure's factor"),
    ("answer", *_STRING, "its answer (yes_no: yes or no; multiple_choice: one of choices)"),
    ("answer_type", *_STRING, "yes_no, multiple_choice or open"),
    ("choices", pa.list_(pa.string()), {"feature": _value("string"), "_type": "List"},
     "the options: [yes, no] for yes_no, empty for open"),
    ("rationale", *_STRING, "the teacher's one-sentence reason the answer holds"),
    ("failure_key", *_STRING, "category:value of the probing factor (e.g. count:circle)"),
    ("factor_category", *_STRING, "the factor's category (the key's part before ':')"),
    ("factor", *_STRING, "the factor's completed template: why the target failed on this image"),
    ("failure_id", *_STRING, "the source failure (an input row the target answered wrongly)"),
    ("failure_question", *_STRING, "the input row's question"),
    ("failure_answer", *_STRING, "the input row's ground-truth answer"),
    ("failure_prediction", *_STRING, "what the target answered instead"),
    ("source_image", pa.struct([("uri", pa.string()), ("row", pa.int64())]),
     {"uri": _value("string"), "row": _value("int64")}, "the input parquet file and row the image comes from"),
    ("image_error", *_STRING, "why image is null; null when the image is there"),
    ("teacher_model", *_STRING, "the model that wrote the item"),
    ("target_model", *_STRING, "the target the item was put to (null: no target check)"),
    ("target_answer", *_STRING, "the target's answer to this item (null: no target check, or it failed)"),
    ("target_correct", pa.bool_(), _value("bool"), "whether the target answered it right (null as target_answer)"),
    ("usage", _TOKENS, {k: _value("int64") for k in TOKEN_FIELDS},
     "the teacher's tokens for the request that wrote this item and its siblings"),
    ("run_date", *_STRING, "the night that produced it"),
)
FEATURES: dict[str, Any] = {name: feature for name, _, feature, _ in COLUMNS}
SCHEMA = pa.schema([(name, kind) for name, kind, _, _ in COLUMNS],
                   metadata={b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode()})


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def item_row(item: Mapping[str, Any], failure: Mapping[str, Any], image: Any) -> dict[str, Any]:
    """One Parquet row: a QA item as the JSONL has it, its source failure's record and the image
    (bytes, or the exception saying why there are none)."""
    ok = isinstance(image, (bytes, bytearray, memoryview)) and len(image) > 0
    if ok:
        image_cell, error = {"bytes": bytes(image), "path": None}, None
    else:
        image_cell = None
        error = f"{type(image).__name__}: {image}" if isinstance(image, BaseException) else "no image bytes"
    factor = failure.get("factor")
    completion = factor.get("completion") if isinstance(factor, Mapping) else factor
    ref = item.get("image")
    source = ({"uri": _text(ref.get("uri")), "row": int(ref["row"]) if ref.get("row") is not None else None}
              if isinstance(ref, Mapping) else None)
    key = str(item.get("failure_key") or "")
    usage = item.get("usage") or {}
    return {
        "id": _text(item.get("id")), "image": image_cell,
        "question": item.get("question"), "answer": item.get("answer"), "answer_type": item.get("answer_type"),
        "choices": list(item.get("choices") or []), "rationale": item.get("rationale"),
        "failure_key": key, "factor_category": key.split(":", 1)[0] if key else None,
        "factor": _text(completion), "failure_id": _text(item.get("failure_id")),
        "failure_question": _text(failure.get("question")), "failure_answer": _text(failure.get("answer")),
        "failure_prediction": _text(failure.get("prediction")),
        "source_image": source, "image_error": error,
        "teacher_model": item.get("teacher_model"), "target_model": item.get("target_model"),
        "target_answer": item.get("target_answer"), "target_correct": item.get("target_correct"),
        "usage": {k: int(usage.get(k) or 0) for k in TOKEN_FIELDS}, "run_date": item.get("run_date"),
    }


def write_shard_parquet(uri: str, kept: Mapping[int, list[dict[str, Any]]],
                        batches: Iterable[list[tuple[int, Any, str | None, Any]]],
                        images: Mapping[int, bytes] | None = None) -> QAShardParquet:
    """Write one shard's Parquet file; returns its figures (for the shard's stats).

    ``kept``: the items written to the JSONL shard, by the failure's position in the shard;
    ``batches``: the shard's records again, as ``(position, record, problem, image or exception)``
    (:func:`vlmprobe.qa.run._batches`, in its reading order: by input file and row), with images
    read for the positions in ``kept`` that ``images`` (bytes the shard kept from asking the
    teacher) does not hold. Raises RuntimeError, writing nothing, when an item's failure is not
    among the records.
    """
    from vlmprobe.io.fs import atomic_write

    expected = sum(len(items) for items in kept.values())
    rows = missing = 0
    with atomic_write(uri, "wb") as f, pq.ParquetWriter(f, SCHEMA) as writer:
        pending: list[dict[str, Any]] = []
        size = 0
        for row in _rows(kept, batches, images or {}):
            pending.append(row)
            rows += 1
            missing += row["image"] is None
            size += len(row["image"]["bytes"]) if row["image"] is not None else 0
            if len(pending) >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_pylist(pending, schema=SCHEMA))
                pending, size = [], 0
        if pending:
            writer.write_table(pa.Table.from_pylist(pending, schema=SCHEMA))
        if rows != expected:  # inside the block: a short file is never published
            raise RuntimeError(f"{uri}: {rows} row(s) for {expected} QA item(s): the shard's records changed "
                               "since its items were written; rerun the shard")
    return QAShardParquet(uri=uri, rows=rows, images_missing=missing)


def _rows(kept: Mapping[int, list[dict[str, Any]]], batches: Iterable[list[tuple[int, Any, str | None, Any]]],
          images: Mapping[int, bytes]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        for seq, record, _, image in batch:
            for item in kept.get(seq, ()):
                yield item_row(item, record if isinstance(record, Mapping) else {}, images.get(seq, image))
