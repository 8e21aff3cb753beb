"""The pipeline's trigger-time knobs: one table, read by the DAG's ``Param``s and the step configs.

Pure Python on purpose: the DAG processor imports this at parse time, and the step configs
(:mod:`vlmprobe.config`) turn the same bounds into pydantic fields, so a bound is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        section=DATA,  # description and pattern: "URI forms" below
    ),
    "output_uri": dict(
        default="/data/output",
        type="string",
        minLength=1,
        section=DATA,  # description and pattern: "URI forms" below
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
        minimum=0,
        maximum=512,
        section=QA,
        description="Gemini requests in flight per process (per QA shard, and per probe rank), at most; "
                    "0 = auto, from the process's share of teacher_rpm and the observed latency.",
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
    # -- target: how the target answers, and whether QA items are put to it --------
    "max_new_tokens": dict(
        default=16,
        type="integer",
        minimum=1,
        maximum=512,
        section=PROBE,
        description="Tokens the target may generate for an open question (it stops earlier at its end token). "
        "Questions with choices are scored, not generated.",
    ),
    "qa_target_check": dict(
        default="auto",
        type="string",
        enum=["auto", "on", "off"],
        section=QA,
        description="Put each generated QA item to the target and record its answer and whether it was right. "
        "auto: on when the QA pod has a GPU.",
    ),
    "qa_keep": dict(
        default="all",
        type="string",
        enum=["all", "target_failed"],
        section=QA,
        description="QA items written: all of them, or only those the target answered wrongly "
        "(needs the target check).",
    ),
    # -- data: sampling balance ------------------------------------------------------------------
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


# --- teacher: the run-wide Gemini quota, retries and the bill -----------------------------
# Quota defaults are tier 1 of gemini-2.5-flash (the default teacher): the lowest paid tier, so
# they never exceed a paid project's quota; a project with more raises them (docs: README).
TEACHER = "Teacher quota and cost"
PARAM_SPECS.update({
    "teacher_rpm": dict(
        default=1000,
        type="integer",
        minimum=0,
        maximum=1_000_000,
        section=TEACHER,
        description="Gemini requests per minute for the whole run: every probe rank and QA shard shares it. "
                    "0 = no limit. Default: tier 1 of gemini-2.5-flash.",
    ),
    "teacher_tpm": dict(
        default=1_000_000,
        type="integer",
        minimum=0,
        maximum=1_000_000_000,
        section=TEACHER,
        description="Gemini input tokens per minute for the whole run (estimated before sending). 0 = no limit.",
    ),
    "teacher_rpd": dict(
        default=10_000,
        type="integer",
        minimum=0,
        maximum=1_000_000_000,
        section=TEACHER,
        description="Gemini requests per day (Pacific time) for the whole run; at the limit the step stops "
                    "and a rerun after midnight Pacific resumes. 0 = no limit.",
    ),
    "teacher_retry_window_s": dict(
        default=600.0,
        type="number",
        minimum=1,
        maximum=86_400,
        section=TEACHER,
        description="Seconds during which one Gemini request is retried (429s, 5xx, timeouts) before its "
                    "record becomes an error row.",
    ),
    "max_error_rate": dict(
        default=0.1,
        type="number",
        minimum=0,
        maximum=1,
        section=TEACHER,
        description="A step fails when its error rows exceed this fraction of its input records.",
    ),
    "thinking_budget": dict(
        default=0,
        type="integer",
        minimum=-1,
        maximum=32_768,
        section=TEACHER,
        description="Gemini thinking tokens per request (billed as output): 0 = no thinking (2.5 Pro cannot "
                    "stop thinking: it gets its minimum, 128), -1 = the model decides.",
    ),
    "teacher_image_max_side": dict(
        default=768,
        type="integer",
        minimum=0,
        maximum=16_384,
        section=TEACHER,
        description="Images are downscaled to at most this many pixels on their long side (aspect kept) "
                    "before they go to Gemini; 0 = sent at full size.",
    ),
    "teacher_project": dict(
        default="default",
        type="string",
        minLength=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        section=TEACHER,
        description="Name of the Google Cloud project whose Gemini quota the key draws on. Runs with the same "
                    "output_uri and teacher_project share one daily ledger (teacher_rpd is the project's "
                    "quota): every run date, backfill and manual run of a Pacific day.",
    ),
    "expected_error_rate": dict(
        default=0.5,
        type="number",
        minimum=0.001,
        maximum=1,
        section=TEACHER,
        description="The target's error rate the night's plan assumes when no earlier night of this "
                    "output_uri and target_model has completed (then it uses that night's).",
    ),
    "target_images_per_s": dict(
        default=40.0,
        type="number",
        minimum=0.001,
        maximum=100_000,
        section=TEACHER,
        description="Rows the target answers per second per GPU, assumed by the night's plan until an "
                    "earlier night has measured it: it sizes the GPU pass and so the teacher's window.",
    ),
    "teacher_latency_s": dict(
        default=5.0,
        type="number",
        minimum=0.001,
        maximum=3600,
        section=TEACHER,
        description="Seconds one Gemini answer takes, assumed by the night's plan until a night has measured it "
                    "(with concurrency, it bounds how many explanations fit the teacher's window; at the flex "
                    "tier the plan assumes at least the tier's minutes).",
    ),
    "probe_wall_factor": dict(
        default=1.25,
        type="number",
        minimum=1,
        maximum=100,
        section=TEACHER,
        description="The probe pod may run this many times its GPU pass (at least the pass plus "
                    "probe_min_tail_s): explanations that would not finish by then are left unexplained "
                    "(limited_by time), so the GPUs are not held waiting for the teacher.",
    ),
    "probe_min_tail_s": dict(
        default=30.0,
        type="number",
        minimum=0,
        maximum=86_400,
        section=TEACHER,
        description="Seconds the probe's teacher may go on after the GPU pass however short the pass "
                    "(the last answers' latency and a retry).",
    ),
    "max_cost_usd": dict(
        default=0.0,
        type="number",
        minimum=0,
        maximum=1_000_000,
        section=TEACHER,
        description="Estimated Gemini spend of the run (USD) the night's plan budgets for; new requests stop "
                    "there (a verification of a factor already paid still goes out) and what is left is "
                    "unexplained or unasked: a limit the manifest reports, not a failure. 0 = no cap.",
    ),
})


# --- the target's pinned revision, and rerunning a finished probe (issue 15) ----------------------
PARAM_SPECS.update({
    "target_revision": dict(
        default="",
        type="string",
        pattern=r"^([0-9a-f]{40})?$",
        section=DATA,
        description="The commit (40-hex sha) of target_model on the Hugging Face hub: the weights are "
                    "downloaded once per revision to the data volume and every pod loads that copy, offline. "
                    "Required for a hub id; leave empty for a local folder or an openai: target.",
    ),
    "force": dict(
        default=False,
        type="boolean",
        section=PROBE,
        description="Rerun the probe even when its _SUCCESS.json already matches this run's work plan and "
                    "settings (by default such a probe is skipped: nothing is paid twice).",
    ),
})

# --- teacher tiers and modes: what the teacher's requests are billed at (README "Teacher tiers and modes")
TIERS = "Teacher tiers and modes"
MEDIA_RESOLUTIONS = ["unspecified", "low", "medium", "high"]
PARAM_SPECS.update({
    "teacher_service_tier": dict(
        default="standard",
        type="string",
        enum=["standard", "flex", "priority"],
        section=TIERS,
        description="Service tier of the teacher's online requests, in both steps (the probe's factors and "
                    "verifications; QA online, or what a batch job hands back): standard; flex = half price, "
                    "answers in minutes (keep concurrency 0: the automatic concurrency follows the tier); "
                    "priority = faster, costs more, has no price in the table (max_cost_usd cannot hold it).",
    ),
    "qa_mode": dict(
        default="online",
        type="string",
        enum=["online", "batch"],
        section=TIERS,
        description="How QA asks the teacher: online (requests as the shard runs) or batch (one Batch API job "
                    "per shard at half price; the DAG waits in the triggerer, then the shard's pod collects).",
    ),
    "batch_deadline_h": dict(
        default=6.0,
        type="number",
        minimum=0.0001,
        maximum=47,
        section=TIERS,
        description="Hours from a shard's first Batch API job after which what the batch has not answered goes "
                    "online at teacher_service_tier and the shard's unfinished jobs are cancelled (Gemini "
                    "expires a job at 48 h). Keep it below what the night can spare.",
    ),
    "teacher_batch_enqueued_tokens": dict(
        default=3_000_000,
        type="integer",
        minimum=0,
        maximum=10_000_000_000,
        section=TIERS,
        description="The Batch API's enqueued-token quota of the Gemini project (0 = no limit): in batch mode "
                    "the night's plan caps QA's sampled failures at what the jobs may hold. Default: tier 1 of "
                    "gemini-2.5-flash as documented (check your project's).",
    ),
    "batch_poll_s": dict(
        default=60.0,
        type="number",
        minimum=0.1,
        maximum=3600,
        section=TIERS,
        description="Seconds between two looks at a shard's Batch API jobs (the triggerer's in the DAG, the "
                    "process's from the CLI).",
    ),
    "teacher_media_resolution_factor": dict(
        default="medium",
        type="string",
        enum=MEDIA_RESOLUTIONS,
        section=TIERS,
        description="media_resolution of the image in a probing-factor request: low (64 tokens on 2.5 "
                    "models), medium (256), high (256, zoomed reframing), unspecified (none sent: 258 per "
                    "384 px tile of the downscaled image).",
    ),
    "teacher_media_resolution_verify": dict(
        default="high",
        type="string",
        enum=MEDIA_RESOLUTIONS,
        section=TIERS,
        description="media_resolution of the image in a verification (it must see the factor: never below "
                    "medium). high costs what medium does on 2.5 models.",
    ),
    "teacher_media_resolution_qa": dict(
        default="medium",
        type="string",
        enum=MEDIA_RESOLUTIONS,
        section=TIERS,
        description="media_resolution of the image in a QA request (its answers are claims about the image: "
                    "never below medium unless QA items are checked otherwise).",
    ),
})


def defaults() -> dict[str, Any]:
    """The default value of every param."""
    return {name: spec["default"] for name, spec in PARAM_SPECS.items()}


# -- URI forms (running it from Airflow) ------------------------------------------------------------
# Refused at trigger time by the Params' JSON schema (``pattern``), and again by the probe's
# preflight and the sample_keys and publish tasks (vlmprobe.preflight.check_conf); the step
# configs, which the CLI also builds by hand, do not check the form. A local path must be absolute: the pods and the Airflow side do not
# share a working directory. ``input_uri`` may hold ``{run_date}`` (each run reads its own day).
URI_FORMS = "an absolute local path, file:///…, gs://BUCKET/… or s3://BUCKET/…"
_URI_START = r"^(/|file:///|gs://[^/{}\s]+|s3://[^/{}\s]+)"
URI_PATTERNS = {
    "input_uri": _URI_START + r"([^{}]|\{run_date\})*$",
    "output_uri": _URI_START + r"[^{}]*$",
}
PARAM_SPECS["input_uri"].update(
    pattern=URI_PATTERNS["input_uri"],
    description="Folder of input parquet files, searched recursively: " + URI_FORMS + ". May contain "
                "{run_date} (e.g. gs://bucket/vqa/{run_date}) so each run reads its own day.",
)
PARAM_SPECS["output_uri"].update(
    pattern=URI_PATTERNS["output_uri"],
    description="Root for outputs (" + URI_FORMS + "); one run writes under {output_uri}/{run_date}/.",
)


def uri_form_problem(name: str, value: str) -> str | None:
    """Why ``value`` is not an acceptable ``name`` (input_uri/output_uri), or None when it is."""
    import re

    if re.search(URI_PATTERNS[name], value):
        return None
    extra = " and {run_date} as its only placeholder" if name == "input_uri" else " without {…} placeholders"
    return f"{name}={value!r} must be {URI_FORMS}{extra}"


# -- deployment-wide defaults ---------------------------------------------------------------------
DEFAULTS_ENV = "VLMPROBE_PARAM_DEFAULTS"


def default_overrides(text: str | None) -> dict[str, Any]:
    """Param defaults from ``VLMPROBE_PARAM_DEFAULTS`` (a JSON object), checked against the table.

    Read by the DAG at parse time: a deployment (``make up``, a staging cluster) can change what a
    plain "Trigger" runs without touching the DAG. An unknown name is an error, not ignored.
    """
    import difflib
    import json

    if not text or not text.strip():
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{DEFAULTS_ENV} must be a JSON object: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{DEFAULTS_ENV} must be a JSON object such as {{\"nproc_per_node\": 2}}")
    for name in values:
        if name not in PARAM_SPECS:
            close = difflib.get_close_matches(name, PARAM_SPECS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{DEFAULTS_ENV} names {name!r}, which is not a param{hint}")
    return values


# -- presets: the seed's recommended configurations ----------------------------------------------
# A preset fills the knobs it names; a key the trigger's conf gives overrides it, and it overrides
# the param defaults (VLMPROBE_PARAM_DEFAULTS included). One function resolves them
# (:func:`resolve_params`): the DAG's templates (the ``vlmprobe_params`` macro), the light tasks,
# the preflight and the CLI's ``--preset`` all go through it. Costs against a tier's quota: README,
# "Presets".
NO_PRESET = "none"
_SEED_TEACHER = dict(concurrency=20, batch_size=1000, request_delay=0.05)  # the seed's QA pacing, any GPU count
PRESETS: dict[str, dict[str, Any]] = {
    # the seed's 8-GPU server: 8 ranks, 2 files per rank, QA on 8 shards (one per GPU)
    "8gpu": dict(nproc_per_node=8, failure_batch_size=100, parquet_sample_size=16, num_shards=8, **_SEED_TEACHER),
    # "the same with 4": 4 ranks, 4 QA shards (the seed runs one QA shard per GPU), 8 files
    "4gpu": dict(nproc_per_node=4, failure_batch_size=100, parquet_sample_size=8, num_shards=4, **_SEED_TEACHER),
    # one GPU: 1 rank and 1 QA shard; 2 files, as the seed's 2 per rank
    "1gpu": dict(nproc_per_node=1, failure_batch_size=100, parquet_sample_size=2, num_shards=1, **_SEED_TEACHER),
}


def _preset_line(name: str) -> str:
    return f"{name}: " + ", ".join(f"{k} {v}" for k, v in PRESETS[name].items())


PARAM_SPECS["preset"] = dict(
    default=NO_PRESET,
    type="string",
    enum=[NO_PRESET, *PRESETS],
    section=DATA,
    description="A recommended configuration from the seed; a key given in the conf overrides it, and it "
                "overrides the defaults. " + "; ".join(_preset_line(n) for n in PRESETS) + ".",
)


def resolve_params(params: Mapping[str, Any], conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values a run uses: ``params`` (defaults merged with the conf, as Airflow merges them) with
    the chosen preset's values for every key the conf does not give. ValueError for an unknown preset."""
    resolved = dict(params)
    name = resolved.get("preset") or NO_PRESET
    if name != NO_PRESET and name not in PRESETS:
        raise ValueError(f"preset {name!r} is not one of {[NO_PRESET, *PRESETS]}")
    given = set(conf or {})
    for key, value in PRESETS.get(name, {}).items():
        if key not in given:
            resolved[key] = value
    return resolved


def run_params(params: Mapping[str, Any], dag_run: Any) -> dict[str, Any]:
    """:func:`resolve_params` for a DAG run (its ``conf``); the DAG's ``vlmprobe_params`` macro."""
    return resolve_params(params, getattr(dag_run, "conf", None))
