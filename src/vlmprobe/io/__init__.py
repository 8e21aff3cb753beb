"""Storage: URIs through pyarrow.fs (local paths, file://, gs://, s3://), JSON/JSONL, parquet, journals."""

from vlmprobe.io.fs import (
    atomic_write,
    exists,
    join,
    list_files,
    read_bytes,
    read_json,
    remove_tree,
    write_json,
)
from vlmprobe.io.journal import Journal
from vlmprobe.io.jsonl import JsonlWriter, iter_json_records, iter_jsonl
from vlmprobe.io.layout import RunLayout

__all__ = [
    "Journal",
    "JsonlWriter",
    "RunLayout",
    "atomic_write",
    "exists",
    "iter_json_records",
    "iter_jsonl",
    "join",
    "list_files",
    "read_bytes",
    "read_json",
    "remove_tree",
    "write_json",
]
