"""The run's QA items as a dataset: its Parquet files checked, and its card ``README.md``.

:func:`check_parquet` (before the manifest): every shard's ``qa/parquet/shard-NNNNN.parquet``
exists, carries the ``huggingface`` features and holds as many rows as the shard's items — read
from the files' footers, never their data. A shard written before the Parquet files (its stats
name none) is counted, not refused.

:func:`write_card` (after ``manifest.json``, a published run only): ``{output_uri}/{run_date}/README.md``
in the Hugging Face dataset card layout — YAML front matter (``configs`` pointing at
``qa/parquet/*.parquet``, ``dataset_info.features`` as ``datasets`` writes them, the licence,
task category and tags), then counts, failure keys, models, prompt and template versions, how to
load it, provenance and limitations (template: ``templates/dataset_card.md.j2``, Jinja2). With
the card in the run folder, ``datasets.load_dataset("{output_uri}/{run_date}")`` works too.

The licence is the deployment's: ``VLMPROBE_DATASET_LICENSE`` (a Hub licence id such as
``cc-by-4.0``) on the Airflow workers; until it is set the card says ``other`` and a note asks
the deployment to fill it. Both are rewritten by every publish and removed by any rerun
(:meth:`vlmprobe.io.layout.RunLayout.invalidate`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from vlmprobe.contracts import Manifest, ManifestDataset, QAShardStats, ShardPlan
from vlmprobe.io import RunLayout, exists
from vlmprobe.io.fs import atomic_write, basename

LICENSE_ENV = "VLMPROBE_DATASET_LICENSE"
DEFAULT_LICENSE = "other"  # the Hub's id for "see the card": the deployment fills it
TOP_KEYS = 20  # failure keys listed in the card


def dataset_license() -> str:
    return os.environ.get(LICENSE_ENV, "").strip() or DEFAULT_LICENSE


def _footer(uri: str) -> tuple[int, bool]:
    """(rows, whether the features are recorded) from a Parquet file's footer."""
    import pyarrow.parquet as pq

    from vlmprobe.io.fs import open_input_file

    with open_input_file(uri) as f:
        meta = pq.ParquetFile(f).metadata
        return meta.num_rows, b"huggingface" in (meta.schema.to_arrow_schema().metadata or {})


def check_parquet(shards: Iterable[QAShardStats]) -> tuple[ManifestDataset, list[str], list[str]]:
    """(the manifest's dataset part, the Parquet files, problems that refuse the publish)."""
    rows = missing = without = 0
    uris: list[str] = []
    problems: list[str] = []
    for stats in shards:
        part = stats.parquet
        if part is None:
            without += 1
            continue
        if not exists(part.uri):
            problems.append(f"qa shard {stats.shard_index}: {part.uri} is missing")
            continue
        found, described = _footer(part.uri)
        if found != part.rows or found != stats.counts.items:
            problems.append(f"qa shard {stats.shard_index}: {part.uri} holds {found} row(s), the shard wrote "
                            f"{stats.counts.items} item(s)")
        if not described:
            problems.append(f"qa shard {stats.shard_index}: {part.uri} does not record its features")
        uris.append(part.uri)
        rows += found
        missing += part.images_missing
    return (ManifestDataset(rows=rows, images_missing=missing, shards_without_parquet=without,
                            license=dataset_license()), uris, problems)


# -- the card --------------------------------------------------------------------------------------

def yaml_features(features: dict[str, Any]) -> list[dict[str, Any]]:
    """``dataset_info.features`` as the card's YAML lists them (``datasets.Features._to_yaml_list``)."""
    out = []
    for name, feature in features.items():
        kind = feature.get("_type")
        if kind == "Value":
            out.append({"name": name, "dtype": feature["dtype"]})
        elif kind == "Image":
            out.append({"name": name, "dtype": "image"})
        elif kind == "List":
            out.append({"name": name, "list": feature["feature"]["dtype"]})
        elif kind is None:  # a struct: a dict of features
            out.append({"name": name, "struct": yaml_features(feature)})
        else:
            raise ValueError(f"feature {name!r}: {kind} has no card form here")
    return out


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return label
    return "n>10M"


def front_matter(manifest: Manifest) -> dict[str, Any]:
    """The card's YAML front matter: what the Hub and ``datasets`` read."""
    from vlmprobe.qa.dataset import FEATURES

    rows = manifest.dataset.rows if manifest.dataset is not None else 0
    return {
        "license": manifest.dataset.license if manifest.dataset is not None else dataset_license(),
        "pretty_name": f"vlmprobe QA items, {manifest.run_date}",
        "task_categories": ["visual-question-answering"],
        "tags": ["vlmprobe", "synthetic", "failure-analysis", "probing-factors"],
        "size_categories": [size_category(rows)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": "qa/parquet/*.parquet"}]}],
        "dataset_info": {"features": yaml_features(FEATURES),
                         "splits": [{"name": "train", "num_examples": rows}]},
    }


def _column_counts(uris: list[str], column: str) -> Counter[str]:
    """How often each value of one string column occurs in the Parquet files (that column read alone)."""
    import pyarrow.parquet as pq

    from vlmprobe.io.fs import open_input_file

    counts: Counter[str] = Counter()
    for uri in uris:
        with open_input_file(uri) as f:
            counts.update(v for v in pq.read_table(f, columns=[column]).column(column).to_pylist() if v is not None)
    return counts


def card_context(layout: RunLayout, manifest: Manifest, plan: ShardPlan) -> dict[str, Any]:
    """What the card template is given (tests read it too)."""
    from vlmprobe.qa.dataset import COLUMNS

    uris = manifest.outputs.qa_parquet
    items_per_key = _column_counts(uris, "failure_key")
    answer_types = _column_counts(uris, "answer_type")
    keys = sorted(plan.per_key.items(), key=lambda kv: (-items_per_key.get(kv[0], 0), -kv[1].seen, kv[0]))
    prov = manifest.provenance
    input_bytes = sum(f.size or 0 for f in prov.input_files) if prov is not None else 0
    return {
        "m": manifest,
        "prov": prov,
        "root": layout.root,
        "parquet_dir": layout.qa_parquet_dir,
        "parquet_files": [basename(u) for u in uris],
        "top_keys": [{"key": k, "seen": c.seen, "kept": c.kept, "items": items_per_key.get(k, 0)}
                     for k, c in keys[:TOP_KEYS]],
        "keys_total": len(plan.per_key),
        "answer_types": sorted(answer_types.items(), key=lambda kv: (-kv[1], kv[0])),
        "columns": [(name, desc) for name, _, _, desc in COLUMNS],
        "input_bytes": input_bytes,
        "license_env": LICENSE_ENV,
        "default_license": DEFAULT_LICENSE,
        "samples_per_key": plan.samples_per_key,
    }


def render_card(layout: RunLayout, manifest: Manifest, plan: ShardPlan) -> str:
    """The card's text: YAML front matter, then the template's Markdown."""
    from importlib import resources

    import jinja2
    import yaml

    template = resources.files("vlmprobe.publish").joinpath("templates", "dataset_card.md.j2").read_text("utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)  # Markdown, not HTML
    env.filters["cell"] = lambda v: " ".join(str(v).split()).replace("|", "\\|")  # one table cell
    body = env.from_string(template).render(**card_context(layout, manifest, plan))
    head = yaml.safe_dump(front_matter(manifest), sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n{body}"


def write_card(layout: RunLayout, manifest: Manifest, plan: ShardPlan) -> str:
    """Write ``README.md`` in the run folder (atomically; replaces an earlier one); returns its URI."""
    text = render_card(layout, manifest, plan)
    with atomic_write(layout.dataset_card) as f:
        f.write(text)
    return layout.dataset_card
