"""Which parquet files a run reads, and which rank reads which (deterministic)."""

from __future__ import annotations

import random

from vlmprobe.io.fs import list_files
from vlmprobe.rundate import derive_seed


def sample_files(input_uri: str, sample_size: int, seed: int, run_date: str) -> list[str]:
    """``sample_size`` parquet files under ``input_uri``, drawn with a seed derived from the run date.

    All files when there are fewer. The result is sorted, so every rank computes the same list.
    """
    files = list_files(input_uri, suffix=".parquet")
    if not files:
        raise ValueError(f"no .parquet files under {input_uri}; check input_uri")
    if len(files) <= sample_size:
        return files
    rng = random.Random(derive_seed(seed, run_date, "parquet_sample"))
    return sorted(rng.sample(files, sample_size))


def split_for_rank(files: list[str], rank: int, world_size: int) -> list[str]:
    """The contiguous slice of ``files`` that ``rank`` reads; slices differ in length by at most one."""
    if world_size > len(files):
        raise ValueError(
            f"{world_size} ranks but only {len(files)} parquet file(s) sampled: lower nproc_per_node "
            f"to {len(files)} or raise parquet_sample_size (or add input files)"
        )
    base, extra = divmod(len(files), world_size)
    start = rank * base + min(rank, extra)
    return files[start : start + base + (1 if rank < extra else 0)]
