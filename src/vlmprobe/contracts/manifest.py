"""``manifest.json`` / ``manifest.failed.json``: the published run, and what the next night's plan reads of it."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from vlmprobe.budget.plan import Limit, NightPlan
from vlmprobe.contracts.base import Contract, Number, Part
from vlmprobe.contracts.probe import CodeVersion, InputAccounting, InputFile, NightOutcome, ProbeCounts
from vlmprobe.contracts.qa import QACounts, TokenCounts
from vlmprobe.contracts.sample import CategoryCounts, SampleCounts


# -- manifest.json / manifest.failed.json ----------------------------------------------------------

class ModelNames(Part):
    target: str
    teacher: str


class RunTeacherFigures(Part):
    """The run's teacher figures: probe and QA summed."""

    requests: int
    retries: int
    rate_limited: int
    succeeded: int
    failed: int
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int
    estimated_cost_usd: float | None  # None: no price for the model


class TeacherFigures(RunTeacherFigures):
    """A step's teacher figures, summed over its processes (:func:`vlmprobe.publish.run.teacher_figures`)."""

    gave_up: dict[str, int]
    paused_s: float
    processes: int
    latency_s: float | None = None  # an answer's seconds, averaged over the processes' answers


class AttemptFigures(Part):
    """Every attempt's requests, tokens and cost, from the teacher ledgers."""

    requests: int
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int
    estimated_cost_usd: Number


class Prices(Part):
    as_of: str
    source: str


class ManifestTeacher(Part):
    model: str
    probe: TeacherFigures
    qa: TeacherFigures
    run: RunTeacherFigures
    all_attempts: dict[str, AttemptFigures]  # per step, and "run"
    prices: Prices


class BoundBy(Part):
    """What bound the probe; ``gpus_for_same_time`` only when the teacher did."""

    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"gpus_for_same_time"})

    bound: str
    busy_fraction: float
    teacher_wait_s: float
    tail_s: float
    input_wait_s: float
    device_busy_s: float
    wall_s: float
    ranks: int
    gpus_for_same_time: int | None = None


class ManifestProbe(Part):
    counts: ProbeCounts
    error_reasons: dict[str, int]
    input: InputAccounting
    bound_by: BoundBy
    teacher: TeacherFigures
    world_size: int
    input_files: int  # how many
    elapsed_s: float
    tokens: dict[str, int]
    oom_halvings: int = 0  # the ranks' batch halvings after the target ran out of GPU memory


class ManifestSample(Part):
    counts: SampleCounts
    format: Literal["jsonl", "json"]
    embed_images: bool
    uri: str
    keys_per_category: dict[str, CategoryCounts]
    keys_below_min_per_key: dict[str, int]


class TargetCheckSummary(Part):
    shards: int
    items_checked: int
    items_target_failed: int
    target_failed_rate: float
    items_dropped_target_passed: int


class ManifestShard(QACounts):
    shard_index: int
    uri: str
    elapsed_s: float


class ManifestQA(Part):
    counts: dict[str, int]  # the shards' QACounts summed; empty when the plan has no shard
    error_reasons: dict[str, int]
    tokens: dict[str, int]
    teacher: TeacherFigures
    target_check: TargetCheckSummary | None  # None: no shard ran the target check
    shards: list[ManifestShard]


class Timings(Part):
    probe: float
    qa_slowest_shard: float
    qa_all_shards: Number


class Outputs(Part):
    qa: list[str]
    failures: str
    errors: str
    qa_parquet: list[str] = Field(default_factory=list)  # one per shard that wrote one (qa/parquet/)
    dataset_card: str | None = None  # README.md of a published run


class StepCheck(Part):
    teacher_error_rows: int
    records: int
    teacher_error_rate: float


class BudgetReachedRows(Part):
    probe: int
    qa: int


class Checks(Part):
    max_error_rate: float
    probe: StepCheck
    qa: StepCheck
    budget_reached_rows: BudgetReachedRows


class ManifestDataset(Part):
    """The QA items as a dataset people load (``qa/parquet/``, the card ``README.md``)."""

    rows: int  # == the QA items (publish checks every file's footer)
    images_missing: int
    shards_without_parquet: int  # shards written by a vlmprobe before the Parquet files
    license: str  # VLMPROBE_DATASET_LICENSE; "other" until the deployment sets it


class WorkerImage(Part):
    """The image a step's pod ran (the container's imageID, a registry digest); "local" in local pod mode."""

    step: str
    map_index: int
    image: str
    image_id: str


class Provenance(Part):
    """Where a published run came from (:func:`vlmprobe.provenance.run_provenance`)."""

    code: CodeVersion  # the publishing process's
    probe_code: CodeVersion | None  # the probe pod's; None when _SUCCESS.json predates issue 17
    worker_images: list[WorkerImage]  # from the pods' task XComs; empty outside Airflow
    target_model: str
    target_revision: str | None
    teacher_model: str
    teacher_endpoint: str | None  # a Gemini base URL other than Google's (the demo's simulator); None: Google's
    prompts_version: str
    template_version: str
    input_uri: str
    input_files: list[InputFile]  # every file the probe read, with its fingerprint
    conf: dict[str, Any] | None  # the conf the run was triggered with; None: not known (the CLI without --conf-json)


class QANight(Part):
    """QA against its reservation in the night's plan."""

    reserved_requests: int | None  # None: no reservation (no daily limit)
    requests: int  # sent by the shards (every attempt, from the run's ledgers)
    limited: int  # failures left without a request because a limit was reached
    limited_by: Limit


class ManifestNight(Part):
    """The night's plan (:class:`vlmprobe.budget.plan.NightPlan`) next to what the probe and QA did."""

    plan: NightPlan
    probe: NightOutcome
    qa: QANight
    limited_by: Limit  # what limited the night: the probe's limit, else QA's, else none


class RunReport(Part):
    """Where publish wrote the run's report (:mod:`vlmprobe.report`) and what it could not show."""

    uri: str
    size_bytes: int
    compared_with: str | None  # the run date of the previous completed night it compares with; None: none
    thumbnails: int  # example images shown
    notes: list[str]  # what could not be read (an image, the previous night, ...), as the report says


class ModeFigures(Part):
    """The teacher's answers billed at one tier or mode (standard, flex, priority online; batch):
    how many, their tokens, their cost there, and what the same tokens cost online at standard."""

    requests: int  # answers billed (a failed attempt with no answer is not billed)
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int
    estimated_cost_usd: float | None  # None: some answers have no price at this tier (priority)
    standard_cost_usd: float


class StepModes(Part):
    """A step's teacher cost per tier or mode, in all, and what it saved against standard online."""

    by_mode: dict[str, ModeFigures]
    estimated_cost_usd: float | None
    standard_cost_usd: float
    saving_usd: float | None  # standard_cost_usd - estimated_cost_usd


class TeacherModes(Part):
    """Per step (probe, qa) and for the run: what the teacher cost at the tiers and modes that served it."""

    probe: StepModes
    qa: StepModes
    run: StepModes


class Manifest(Contract):
    """``manifest.json`` (a published run) or ``manifest.failed.json`` (with ``failed``: why it failed)."""

    FILE: ClassVar[str] = "manifest.json"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"failed"})

    run_date: str
    published_at: str
    models: ModelNames
    probe: ManifestProbe
    sample: ManifestSample
    qa: ManifestQA
    teacher: ManifestTeacher
    tokens: TokenCounts
    estimated_cost_usd: float | None
    timings_s: Timings
    outputs: Outputs
    checks: Checks
    failed: list[str] | None = Field(None, description="Why the run failed (manifest.failed.json only).")
    dataset: ManifestDataset | None = None  # None: published before issue 17
    provenance: Provenance | None = None  # None: published before issue 17
    night: ManifestNight | None = None  # the night's plan against what happened (absent before plans)
    report: RunReport | None = Field(None, description="The run's report.html; null when it could not be rendered "
                                                       "(the publish log says why; `vlmprobe report` makes it again).")
    teacher_modes: TeacherModes | None = Field(None, description="The teacher's cost per step and per tier or "
                                               "mode (standard, flex, priority, batch) next to standard online.")


def night_figures(manifest: Manifest) -> dict[str, Any]:
    """What a published night measured, for the next night's plan (:mod:`vlmprobe.budget.history`)."""
    probe, counts = manifest.probe, manifest.probe.counts
    figures: dict[str, Any] = {
        "rows": counts.rows, "wrong": counts.wrong, "explained": counts.explained, "verified": counts.verified,
        "probe_requests": probe.teacher.requests, "ranks": probe.world_size, "latency_s": probe.teacher.latency_s,
        "busy_s": probe.bound_by.device_busy_s,
        "tokens": {},
    }
    per_request = {"probe": probe.teacher, "qa": manifest.qa.teacher}
    for step, t in per_request.items():
        if t.requests:
            measured = {"requests": t.requests, "prompt_tokens": t.prompt_tokens, "output_tokens": t.output_tokens}
            for kind in (("factor", "verify") if step == "probe" else ("qa",)):
                figures["tokens"][kind] = measured
    if manifest.night is not None:
        figures["wrong_by_stratum"] = dict(manifest.night.probe.wrong_by_stratum)
        figures["busy_s"] = manifest.night.probe.gpu_hours_busy * 3600
    return figures
