"""The QA shard plan and the reader each shard uses to read only its own records.

``sample/shards.json`` (:class:`vlmprobe.contracts.ShardPlan`) lists, per shard, its records ``[start, stop)`` (indexes in the sampled
failures file) and their bytes ``[byte_start, byte_stop)``: a shard seeks to its first byte and
reads only its range (one ranged read stream on object stores), however large the file and
wherever the shard lies in it. Shards are contiguous and balanced by *estimated request
tokens*, so the mapped pods finish close together.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from vlmprobe.contracts import QAShardSpan, ShardPlan
from vlmprobe.io.jsonl import iter_lines
from vlmprobe.probe.plan import balanced_split

IMAGE_TOKENS = 258  # one image of at most 384 px a side; the teacher scales images down first
PROMPT_OVERHEAD_TOKENS = 220  # the QA prompt's fixed text and the instructions
CHARS_PER_TOKEN = 4


def estimate_request_tokens(record: dict[str, Any]) -> int:
    """Input tokens of the QA request for one sampled failure (an estimate, for balancing)."""
    factor = record.get("factor")
    text = 0
    for value in (record.get("question"), record.get("answer"), record.get("prediction"), record.get("failure_key"),
                  factor.get("completion") if isinstance(factor, dict) else None):
        if value:
            text += len(value) if isinstance(value, str) else len(str(value))
    return PROMPT_OVERHEAD_TOKENS + IMAGE_TOKENS + -(-text // CHARS_PER_TOKEN)


def plan_shards(weights: Sequence[int], starts: Sequence[int], stops: Sequence[int],
                num_shards: int) -> list[QAShardSpan]:
    """Contiguous shards balanced by ``weights`` (estimated tokens per record); never an empty one.

    Record i's bytes in the sampled failures file are ``[starts[i], stops[i])``.
    """
    n = min(num_shards, len(weights))
    if n == 0:
        return []
    shards = []
    for i, (start, stop) in enumerate(balanced_split(weights, n)):
        shards.append(QAShardSpan(shard_index=i, start=start, stop=stop, count=stop - start,
                                  byte_start=starts[start], byte_stop=stops[stop - 1],
                                  estimated_tokens=sum(weights[start:stop])))
    return shards


def iter_shard_records(plan: ShardPlan, shard_index: int) -> Iterator[dict[str, Any]]:
    """The sampled failures of one shard, read from its byte range only (JSONL or JSON array).

    Raises ValueError when the shard does not exist or its range does not hold its ``count``
    records (the file changed under the plan: rerun sample_keys).
    """
    shards = plan.shards
    if not 0 <= shard_index < len(shards):
        raise ValueError(f"shard {shard_index} does not exist: the plan has {len(shards)} shard(s)")
    shard = shards[shard_index]
    uri = plan.failures_uri
    n = 0
    for _, line in iter_lines(uri, shard.byte_start, shard.byte_stop):
        text = line.strip().rstrip(b",")
        if text in (b"", b"[", b"]"):
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{uri}: shard {shard_index}'s byte range holds a line that is not JSON ({e}); "
                             "the file changed since sample_keys planned it: rerun sample_keys") from e
        n += 1
        yield record
    if n != shard.count:
        raise ValueError(f"{uri}: shard {shard_index}'s byte range holds {n} record(s), the plan says "
                         f"{shard.count}: rerun sample_keys")
