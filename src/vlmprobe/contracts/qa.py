"""``qa/_shard-NNNNN.stats.json``: one QA shard's counts, tokens, teacher figures and target check."""

from __future__ import annotations

from typing import Any, ClassVar

from vlmprobe.contracts.base import Contract, Part


# -- qa/_shard-NNNNN.stats.json --------------------------------------------------------------------

class QACounts(Part):
    """What one QA shard's failures became; ``failures == failures_with_items + errors``."""

    failures: int
    failures_with_items: int
    errors: int
    items: int
    items_generated: int
    items_dropped: int
    items_checked: int
    items_target_failed: int
    items_dropped_target_passed: int
    items_check_errors: int
    resumed: int
    limited: int = 0  # of errors: failures left without a request because a limit was reached


class TokenCounts(Part):
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int


class TargetCheckStats(Part):
    """How a shard's target check ran (``enabled`` False: the other figures say so)."""

    enabled: bool
    mode: str
    keep: str
    target_model: str | None
    device: str | None
    busy_s: float
    batches: int
    oom_halvings: int = 0  # times the target ran out of GPU memory and the check halved its batch


class QAShardParquet(Part):
    """The shard's kept items as one Parquet file (:mod:`vlmprobe.qa.dataset`): ``rows`` == the shard's items."""

    uri: str
    rows: int
    images_missing: int  # rows whose image could not be read: a null image, the reason in image_error


class QAShardStats(Contract):
    """``qa/_shard-NNNNN.stats.json``: written last, it marks the shard complete."""

    FILE: ClassVar[str] = "qa/_shard-NNNNN.stats.json"

    shard_index: int
    qa_uri: str
    errors_uri: str
    counts: QACounts
    error_reasons: dict[str, int]
    tokens: TokenCounts
    teacher: dict[str, Any]  # the teacher client's stats of this attempt, as it keeps them
    teacher_model: str
    target_check: TargetCheckStats
    elapsed_s: float
    parquet: QAShardParquet | None = None  # None: written before issue 17 (no Parquet file)
