"""The pipeline's trigger-time knobs: one table, read by the DAG's ``Param``s and the step configs.

Pure Python on purpose: the DAG processor imports this at parse time, and the step configs
(:mod:`vlmprobe.config`) turn the same bounds into pydantic fields, so a bound is written once.
"""

from __future__ import annotations

from typing import Any

PROBE = "Probe (step 1)"
SAMPLE = "Sample failures (step 2)"
QA = "QA generation (step 3)"
DATA = "Data and models"

# name -> JSON-schema keywords accepted by airflow.sdk.Param (plus ``section`` for the UI).
PARAM_SPECS: dict[str, dict[str, Any]] = {
    "input_uri": dict(
        default="/data/input",
        type="string",
        minLength=1,
        section=DATA,
        description="Folder of input parquet files (local path, file://, gs:// or s3://), searched recursively.",
    ),
    "output_uri": dict(
        default="/data/output",
        type="string",
        minLength=1,
        section=DATA,
        description="Root for outputs; one run writes under {output_uri}/{run_date}/.",
    ),
    "target_model": dict(
        default="llava-hf/llava-1.5-7b-hf",
        type="string",
        minLength=1,
        section=DATA,
        description="Target VLM: a Hugging Face hub id or a local path that from_pretrained can load.",
    ),
    "gemini_model": dict(
        default="gemini-2.5-flash",
        type="string",
        minLength=1,
        section=DATA,
        description="Teacher model used for probing factors, their verification and QA generation.",
    ),
    "seed": dict(
        default=0,
        type="integer",
        minimum=0,
        maximum=2**31 - 1,
        section=DATA,
        description="Base seed; combined with the run date for file sampling and failure sampling.",
    ),
    "nproc_per_node": dict(
        default=8,
        type="integer",
        minimum=1,
        maximum=16,
        section=PROBE,
        description="torchrun ranks in the probe pod; the pod asks for this many GPUs.",
    ),
    "failure_batch_size": dict(
        default=16,
        type="integer",
        minimum=1,
        maximum=1024,
        section=PROBE,
        description="Images per rank per batched generate call of the target VLM.",
    ),
    "parquet_sample_size": dict(
        default=64,
        type="integer",
        minimum=1,
        maximum=1_000_000,
        section=PROBE,
        description="Parquet files sampled from input_uri for this run (all of them if fewer exist).",
    ),
    "error_output_format": dict(
        default="jsonl",
        type="string",
        enum=["jsonl", "json"],
        section=SAMPLE,
        description="Format of sample/failures: one record per line (jsonl) or one JSON array (json).",
    ),
    "embed_images": dict(
        default=False,
        type="boolean",
        section=SAMPLE,
        description="Embed each failure's image as base64 in the sampled records instead of a reference.",
    ),
    "samples_per_key": dict(
        default=50,
        type="integer",
        minimum=1,
        maximum=1_000_000,
        section=SAMPLE,
        description="At most this many failures are kept per failure key (category:value).",
    ),
    "num_shards": dict(
        default=8,
        type="integer",
        minimum=1,
        maximum=256,
        section=QA,
        description="QA shards, one pod each (fewer when there are fewer sampled failures).",
    ),
    "concurrency": dict(
        default=16,
        type="integer",
        minimum=1,
        maximum=512,
        section=QA,
        description="Gemini requests in flight per process (per QA shard, and per probe rank).",
    ),
    "batch_size": dict(
        default=64,
        type="integer",
        minimum=1,
        maximum=100_000,
        section=QA,
        description="Failures read and submitted together per QA batch.",
    ),
    "request_delay": dict(
        default=0.0,
        type="number",
        minimum=0,
        maximum=60,
        section=QA,
        description="Seconds between the starts of two Gemini requests in one process.",
    ),
    "no_async": dict(
        default=False,
        type="boolean",
        section=QA,
        description="Send QA requests one at a time (for debugging and strict quotas).",
    ),
    # -- data (h8): sampling balance ------------------------------------------------------------
    "min_per_key": dict(
        default=1,
        type="integer",
        minimum=1,
        maximum=1_000_000,
        section=SAMPLE,
        description="Failure keys with fewer distinct failures are left out of the sample (listed in "
                    "sample/shards.json); at most samples_per_key.",
    ),
    "max_per_category": dict(
        default=0,
        type="integer",
        minimum=0,
        maximum=100_000_000,
        section=SAMPLE,
        description="At most this many sampled failures per factor category, spread evenly over its keys "
                    "(0 = no cap).",
    ),
}


def defaults() -> dict[str, Any]:
    """The default value of every param."""
    return {name: spec["default"] for name, spec in PARAM_SPECS.items()}
