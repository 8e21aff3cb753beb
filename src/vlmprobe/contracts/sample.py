"""``sample/shards.json``: the sample's counts and the QA shard plan."""

from __future__ import annotations

from typing import ClassVar, Literal

from vlmprobe.contracts.base import Contract, Part


# -- sample/shards.json ----------------------------------------------------------------------------

class SampleCounts(Part):
    """Every input failure in exactly one of sampled, errors, over_cap, duplicates, below_min_per_key,
    over_category_cap; ``bad_records`` (of errors) could not be read; ``keys``/``keys_sampled``: failure keys."""

    input_failures: int
    sampled: int
    errors: int
    bad_records: int
    over_cap: int
    duplicates: int
    below_min_per_key: int
    over_category_cap: int
    keys: int
    keys_sampled: int
    over_qa_reservation: int = 0  # left out: more verified failures than QA's reservation pays for


class QAShardSpan(Part):
    """One QA shard: records ``[start, stop)`` of the sampled failures, their bytes ``[byte_start, byte_stop)``."""

    shard_index: int
    start: int
    stop: int
    count: int
    byte_start: int
    byte_stop: int
    estimated_tokens: int


class CategoryCounts(Part):
    keys: int
    failures: int
    kept: int
    keys_kept: int


class KeyCounts(Part):
    """Per failure key: records seen, kept, and how many were left out for which reason."""

    seen: int
    kept: int
    duplicates: int
    over_cap: int
    over_category_cap: int
    below_min_per_key: int
    over_qa_reservation: int = 0


class ShardPlan(Contract):
    """``sample/shards.json``: the sample's counts and the QA shard plan (:mod:`vlmprobe.sample.shards`)."""

    FILE: ClassVar[str] = "sample/shards.json"

    run_date: str
    failures_uri: str
    format: Literal["jsonl", "json"]
    embed_images: bool
    total: int
    num_shards: int
    shards: list[QAShardSpan]
    counts: SampleCounts
    error_reasons: dict[str, int]
    keys_per_category: dict[str, CategoryCounts]
    keys_below_min_per_key: dict[str, int]
    per_key: dict[str, KeyCounts]
    samples_per_key: int
    min_per_key: int
    max_per_category: int
    seed: int
    qa_reserved_requests: int | None = None  # the night's reservation for QA (None: no cap)
