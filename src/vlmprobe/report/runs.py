"""The completed nights of a deployment, and the counts two nights are compared on.

A deployment's nights live under one ``output_uri``, one folder per run date; a night is
*completed* when its folder holds ``manifest.json`` (publish writes it last, and never for a
failed run). Reads only the small JSON files of each night: its manifest and ``sample/shards.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyarrow import fs as pafs

from vlmprobe.contracts import Manifest, ShardPlan
from vlmprobe.errors import UsageError
from vlmprobe.io import RunLayout, exists
from vlmprobe.io.fs import basename, resolve
from vlmprobe.records import key_category
from vlmprobe.rundate import check_run_date


def run_layout(run_uri: str) -> RunLayout:
    """The layout of ``{output_uri}/{run_date}`` (a run's folder); :class:`UsageError` when the last part is no run date."""
    trimmed = run_uri.rstrip("/")
    run_date = basename(trimmed)
    output_uri = trimmed[: -len(run_date)].rstrip("/")
    try:
        check_run_date(run_date)
    except ValueError as e:
        raise UsageError(f"{run_uri!r} is not a run's folder {{output_uri}}/{{run_date}}: {e}") from None
    if not output_uri:
        raise UsageError(f"{run_uri!r} is not a run's folder {{output_uri}}/{{run_date}}: no output_uri before the date")
    return RunLayout(output_uri, run_date)


def _run_date_folders(output_uri: str) -> list[str]:
    fs, path = resolve(output_uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    items = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    out = []
    for item in items:
        if item.type != pafs.FileType.Directory:
            continue
        try:
            out.append(check_run_date(item.base_name))
        except ValueError:
            continue  # not a night's folder
    return sorted(out)


def completed_run_dates(output_uri: str) -> list[str]:
    """Run dates under ``output_uri`` whose folder holds ``manifest.json``, oldest first."""
    return [d for d in _run_date_folders(output_uri) if exists(RunLayout(output_uri, d).manifest)]


def previous_run_date(output_uri: str, run_date: str) -> str | None:
    """The latest completed night before ``run_date`` under the same ``output_uri``, or None."""
    earlier = [d for d in completed_run_dates(output_uri) if d < run_date]
    return earlier[-1] if earlier else None


@dataclass(frozen=True)
class NightCounts:
    """One night's verified failures per key and per category, and the rows it probed (the denominator)."""

    run_date: str
    rows: int
    per_key: dict[str, int]
    per_category: dict[str, int]

    @classmethod
    def from_models(cls, manifest: Manifest, plan: ShardPlan) -> NightCounts:
        per_key = {k: c.seen for k, c in plan.per_key.items()}
        per_category: dict[str, int] = {}
        for k, n in per_key.items():
            per_category[key_category(k)] = per_category.get(key_category(k), 0) + n
        return cls(manifest.run_date, manifest.probe.counts.rows, per_key, per_category)

    @classmethod
    def read(cls, layout: RunLayout) -> NightCounts:
        """A completed night's counts; :class:`UsageError` when it has no manifest (not completed)."""
        if not exists(layout.manifest):
            raise UsageError(f"{layout.root} has no manifest.json: the night did not complete (or failed: see "
                             "manifest.failed.json); only completed nights are compared")
        return cls.from_models(Manifest.read(layout.manifest), ShardPlan.read(layout.shard_plan))

    @property
    def failures(self) -> int:
        return sum(self.per_key.values())
