"""Which parquet files a run reads, and which rank reads which rows (deterministic).

The work is planned from the files' footers: one :class:`~vlmprobe.io.parquet.WorkUnit` per
non-empty row group, in file order, then split into contiguous runs of units, one per rank,
balanced by row count (not file count: one big file no longer makes one rank the straggler).
The plan depends only on the files; the probe has rank 0 compute it once (:func:`plan_work`) and
broadcast :meth:`WorkPlan.to_dict` (:mod:`vlmprobe.probe.ranks`), so every rank works from one
listing even when files land mid-run.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from vlmprobe.io.fs import list_files
from vlmprobe.io.parquet import ReadError, WorkUnit, file_units
from vlmprobe.rundate import derive_seed

FOOTER_THREADS = 16  # footers are small reads; on object stores their latency is what costs


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


def balanced_split(weights: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Cut ``weights`` into ``parts`` contiguous, non-empty slices ``[start, stop)`` of near-equal sums.

    Slice ``k`` ends where the running sum comes closest to ``(k+1)/parts`` of the total, so no
    slice exceeds its fair share by more than one item's weight. Deterministic.
    Raises ValueError when there are fewer items than parts.
    """
    n = len(weights)
    if parts < 1 or n < parts:
        raise ValueError(f"cannot cut {n} item(s) into {parts} non-empty part(s)")
    cum = array("Q", accumulate(weights))  # cum[i] = sum of weights[0..i]; compact for a million items
    total = cum[-1] if cum else 0
    bounds, start = [], 0
    for k in range(parts - 1):
        target = total * (k + 1) / parts
        # the last item of slice k: leave at least one item for each later slice
        lo, hi = start, n - (parts - k - 1) - 1
        i = min(max(bisect_left(cum, target, lo, hi + 1), lo), hi)
        if i > lo and abs(cum[i - 1] - target) <= abs(cum[i] - target):
            i -= 1
        bounds.append((start, i + 1))
        start = i + 1
    bounds.append((start, n))
    return bounds


@dataclass
class WorkPlan:
    """The run's input: row groups to read, files that cannot be read at all, and the split."""

    files: list[str]
    units: list[WorkUnit]
    lost: list[ReadError] = field(default_factory=list)  # unreadable footers, missing columns
    # each file's {uri, size, mtime} as the store described it (vlmprobe.provenance.file_fingerprint)
    fingerprints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(u.num_rows for u in self.units)

    def for_rank(self, rank: int, world_size: int) -> list[WorkUnit]:
        """The contiguous run of units ``rank`` reads; raises ValueError (with advice) when ranks outnumber units."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        if world_size > len(self.units):
            raise ValueError(
                f"{world_size} ranks but the sampled files hold only {len(self.units)} readable row group(s) "
                f"({self.total_rows} rows in {len(self.files) - len(self.lost)} readable file(s)): lower "
                f"nproc_per_node to {max(len(self.units), 1)} or raise parquet_sample_size (or add input files)")
        start, stop = balanced_split([u.num_rows for u in self.units], world_size)[rank]
        return self.units[start:stop]

    def lost_for_rank(self, rank: int, world_size: int) -> list[ReadError]:
        """The lost files a rank reports as error rows: spread round-robin so each is reported once."""
        return self.lost[rank::world_size]

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "units": [u.to_dict() for u in self.units],
                "lost": [vars(e) for e in self.lost], "fingerprints": self.fingerprints}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkPlan:
        return cls(list(d["files"]), [WorkUnit.from_dict(u) for u in d["units"]],
                   [ReadError(**e) for e in d["lost"]], list(d.get("fingerprints") or []))


def plan_work(files: list[str], threads: int = FOOTER_THREADS) -> WorkPlan:
    """Read the footers of ``files`` (in parallel) and plan the row groups; files keep their order.

    Each file's fingerprint (size, modification time) is taken too, for the run's provenance.
    """
    from vlmprobe.provenance import file_fingerprint

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        results = list(pool.map(file_units, files))
        fingerprints = list(pool.map(file_fingerprint, files))
    units: list[WorkUnit] = []
    lost: list[ReadError] = []
    for file_unit_list, err in results:
        units.extend(file_unit_list)
        if err is not None:
            lost.append(err)
    return WorkPlan(list(files), units, lost, fingerprints)
