"""What a run's report shows, gathered from the run's files: bounded reads, each failure file once.

- the manifest (typed, :class:`vlmprobe.contracts.Manifest`) and ``sample/shards.json`` (failures
  per key, counted by sample_keys over the probe's verified failures);
- the probe's verified failures (``ProbeSuccess.failure_files``), streamed once: failures per input
  ``source`` (the row's ``source`` column, carried in ``meta``) and the first few records of each
  top key, the examples;
- the ``source`` column of the probe's input files (that column only): rows per source, the
  denominator of the failure rate by source;
- the image of each example, read by its reference (file + row) and shrunk to a thumbnail: at most
  ``TOP_KEYS * EXAMPLES_PER_KEY`` rows;
- the QA shards, streamed: items per key and answer type, and the target's answers where the
  target check ran;
- the previous completed night of the same ``output_uri`` (its manifest and shard plan), compared.

Anything that cannot be read becomes a note in the report (and a WARNING in the log), never an
error: an image that cannot be read shows a placeholder. Figures that later versions of the
manifest add (``limited_by``, the night's plan, ``explained``, GPU-hours, the teacher's tier) are
read when present and shown as "not recorded" otherwise.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vlmprobe.contracts import Manifest, ProbeSuccess, ShardPlan
from vlmprobe.io import RunLayout, exists
from vlmprobe.io.jsonl import iter_lines
from vlmprobe.records import key_category
from vlmprobe.report.runs import NightCounts, previous_run_date
from vlmprobe.report.stats import KeyChange, compare_counts

log = logging.getLogger("vlmprobe.report")

TOP_KEYS = 12  # keys shown with examples
EXAMPLES_PER_KEY = 3
THUMBNAIL_PX = 128
NO_SOURCE = "(no source)"


def optional(data: Any, *paths: str) -> Any:
    """The first of the dotted ``paths`` present (and not None) in ``data``; None when none is.

    For figures a newer manifest carries and an older one lacks: ``optional(m, "probe.counts.explained")``.
    """
    for path in paths:
        node = data
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                node = None
                break
        if node is not None:
            return node
    return None


@dataclass
class Example:
    """A verified failure shown under its key: what was asked, the truth, the target's answer, the factor."""

    id: str
    question: str
    answer: str
    prediction: str
    factor: str  # the factor template's completion (what about the image made it fail)
    source: str
    image_uri: str | None
    image_row: int | None
    thumbnail: str | None = None  # a data: URI
    thumbnail_problem: str | None = None  # why there is none


@dataclass
class Comparison:
    """This night against the previous completed one."""

    previous: NightCounts
    current: NightCounts
    keys: list[KeyChange]
    categories: list[KeyChange]


@dataclass
class RunData:
    """Everything the report template shows."""

    layout: RunLayout
    manifest: Manifest
    figures: dict[str, Any]  # the manifest as JSON, for the optional figures
    plan: ShardPlan
    per_key: dict[str, int]
    per_category: dict[str, int]
    kept_per_key: dict[str, int]
    failures_by_source: Counter[str] = field(default_factory=Counter)
    rows_by_source: dict[str, int] | None = None
    examples: dict[str, list[Example]] = field(default_factory=dict)
    qa_by_key_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    qa_target_by_key: dict[str, list[int]] = field(default_factory=dict)  # key -> [checked, failed]
    comparison: Comparison | None = None
    notes: list[str] = field(default_factory=list)  # what could not be read, for the reader

    @property
    def rows(self) -> int:
        return self.manifest.probe.counts.rows

    @property
    def top_keys(self) -> list[str]:
        return sorted(self.per_key, key=lambda k: (-self.per_key[k], k))[:TOP_KEYS]

    def note(self, text: str) -> None:
        log.warning("report %s: %s", self.manifest.run_date, text)
        self.notes.append(text)


def collect(layout: RunLayout, manifest: Manifest) -> RunData:
    """Gather the report's figures for the run at ``layout`` whose manifest is ``manifest``."""
    plan = ShardPlan.read(layout.shard_plan)
    per_key = {k: c.seen for k, c in plan.per_key.items()}
    per_category: Counter[str] = Counter()
    for k, n in per_key.items():
        per_category[key_category(k)] += n
    data = RunData(layout=layout, manifest=manifest, figures=manifest.to_json(), plan=plan, per_key=per_key,
                   per_category=dict(per_category), kept_per_key={k: c.kept for k, c in plan.per_key.items()})
    probe = ProbeSuccess.read(layout.probe_success) if exists(layout.probe_success) else None
    if probe is None:
        data.note(f"{layout.probe_success} is gone: no failures by source, no examples")
    else:
        _stream_failures(data, probe.failure_files)
        _rows_by_source(data, probe.input_files)
    _thumbnails(data)
    _stream_qa(data, manifest.outputs.qa)
    _compare_with_previous(data)
    return data


def _records(data: RunData, uris: Iterable[str], what: str) -> Iterable[dict[str, Any]]:
    """Records of JSONL files, streamed; a file or line that cannot be read is a note, not an error."""
    for uri in uris:
        bad = 0
        try:
            for _, line in iter_lines(uri):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(rec, dict):
                    yield rec
        except (OSError, ValueError) as e:
            data.note(f"could not read the {what} {uri}: {type(e).__name__}: {e}")
        if bad:
            data.note(f"{bad} line(s) of {uri} are not JSON; left out of the report")


def _stream_failures(data: RunData, failure_files: list[str]) -> None:
    """One pass over the verified failures: failures per source, and the first examples of each top key."""
    wanted = set(data.top_keys)
    for rec in _records(data, failure_files, "probe failures"):
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        source = str(meta.get("source") or NO_SOURCE)
        data.failures_by_source[source] += 1
        key = rec.get("failure_key")
        if key in wanted and len(data.examples.setdefault(key, [])) < EXAMPLES_PER_KEY:
            data.examples[key].append(_example(rec, source))


def _example(rec: dict[str, Any], source: str) -> Example:
    factor = rec.get("factor") if isinstance(rec.get("factor"), dict) else {}
    image = rec.get("image") if isinstance(rec.get("image"), dict) else {}
    row = image.get("row")
    return Example(id=str(rec.get("id", "")), question=str(rec.get("question", "")), answer=str(rec.get("answer", "")),
                   prediction=str(rec.get("prediction", "")),
                   factor=str(factor.get("completion") or factor.get("value") or ""), source=source,
                   image_uri=image.get("uri"), image_row=row if isinstance(row, int) else None)


def _rows_by_source(data: RunData, input_files: list[str]) -> None:
    """Rows per ``source`` in the probe's input files, reading that one column (None when no file has it)."""
    import pyarrow.compute as pc

    from vlmprobe.io.parquet import open_parquet

    rows: Counter[str] = Counter()
    with_source = 0
    for uri in input_files:
        try:
            pf = open_parquet(uri)
            if "source" not in pf.schema_arrow.names:
                rows[NO_SOURCE] += pf.metadata.num_rows
                continue
            column = pf.read(columns=["source"], use_threads=False).column("source")
        except Exception as e:  # the input may be gone or unreadable by now: the rate by source is left out
            data.note(f"rows per source unknown: {uri} cannot be read ({type(e).__name__}: {e})")
            return
        with_source += 1
        for item in pc.value_counts(column).to_pylist():
            rows[str(item["values"]) if item["values"] is not None else NO_SOURCE] += item["counts"]
    if with_source:
        data.rows_by_source = dict(rows)


def thumbnail(image: bytes, px: int = THUMBNAIL_PX) -> str:
    """A JPEG thumbnail (at most ``px`` on its longer side) as a ``data:`` URI; raises for bytes that are no image."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        img.draft("RGB", (px, px))  # JPEG: decode at a reduced scale
        small = img.convert("RGB")
        small.thumbnail((px, px))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnails(data: RunData) -> None:
    """Each example's image, read by reference (each file once, only the rows needed) and shrunk."""
    from vlmprobe.io.parquet import read_images

    by_file: dict[str, list[Example]] = defaultdict(list)
    for examples in data.examples.values():
        for ex in examples:
            if ex.image_uri is None or ex.image_row is None:
                ex.thumbnail_problem = "the record has no image reference"
            else:
                by_file[ex.image_uri].append(ex)
    for uri, examples in by_file.items():
        try:
            images = read_images(uri, [ex.image_row for ex in examples])
        except Exception as e:  # the input may be gone: placeholders
            for ex in examples:
                ex.thumbnail_problem = f"{uri} cannot be read: {type(e).__name__}: {e}"
            continue
        for ex in examples:
            image = images.get(ex.image_row)
            try:
                if isinstance(image, Exception):
                    raise image
                ex.thumbnail = thumbnail(bytes(image))
            except Exception as e:  # PIL raises many types for bad bytes: a placeholder, never a failed report
                ex.thumbnail_problem = f"{type(e).__name__}: {e}"


def _stream_qa(data: RunData, qa_files: list[str]) -> None:
    for rec in _records(data, qa_files, "QA shard"):
        key = str(rec.get("failure_key") or "(no key)")
        data.qa_by_key_type[(key, str(rec.get("answer_type") or "(no type)"))] += 1
        correct = rec.get("target_correct")
        if correct is not None:
            counts = data.qa_target_by_key.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += not correct


def _compare_with_previous(data: RunData) -> None:
    layout = data.layout
    try:
        previous = previous_run_date(layout.output_uri, layout.run_date)
        if previous is None:
            return
        before = NightCounts.read(RunLayout(layout.output_uri, previous))
    except Exception as e:  # another night's files are no reason to lose this night's report
        data.note(f"the previous night could not be read for the comparison: {type(e).__name__}: {e}")
        return
    now = NightCounts.from_models(data.manifest, data.plan)
    if not before.rows or not now.rows:
        data.note(f"no comparison with {previous}: a night with no rows probed")
        return
    data.comparison = Comparison(before, now, compare_counts(before.per_key, before.rows, now.per_key, now.rows),
                                 compare_counts(before.per_category, before.rows, now.per_category, now.rows))
