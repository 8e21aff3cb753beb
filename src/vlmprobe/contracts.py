"""The steps' contracts: each JSON file one step writes and another reads, as one typed model.

============================================  =====================  ==========================
file (under ``{output_uri}/{run_date}/``)     written by             read by
============================================  =====================  ==========================
``probe/_SUCCESS.json``                       probe (rank 0)         sample_keys, publish
``probe/_journal/_fingerprint.json``          probe (rank 0)         probe (its rerun)
``sample/shards.json``                        sample_keys            qa, publish
``qa/_journal/shard-NNNNN/_fingerprint.json`` qa                     qa (its rerun)
``qa/_shard-NNNNN.stats.json``                qa                     publish
``manifest.json``, ``manifest.failed.json``   publish                the publish task (the Asset
                                                                     event), the demo
============================================  =====================  ==========================

Every file carries ``schema_version`` (today 1). A reader accepts the versions in its model's
``READS``; a file without the field was written before it existed and reads as version 1 (the
same shape, less the field). Any other version — a newer vlmprobe wrote it — is refused with one
line naming the file, the version found and the versions this code reads
(:class:`~vlmprobe.errors.InputError`, exit 2): an older vlmprobe never guesses at a newer file.
A file that does not match its model is refused the same way, naming the first mismatch.

Models are ``extra="forbid"`` throughout. Figures owned elsewhere stay free-form
(``dict[str, Any]``): the teacher client's stats (:attr:`teacher.client.TeacherClient.stats`),
copied as they are for inspection. Files are written with sorted keys (:func:`vlmprobe.io.write_json`),
so the JSON is what the steps wrote before these models, plus ``schema_version``. Nothing else in
the package parses these files (a test checks).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from vlmprobe.budget.plan import Limit, NightPlan
from vlmprobe.errors import InputError

SCHEMA_VERSION = 1
Number = int | float  # where the steps write an int or a float (an empty sum is the int 0): kept as written


class _Part(BaseModel):
    """A typed part of a contract; fields named in ``OMIT_WHEN_NONE`` are left out of the JSON when None."""

    model_config = ConfigDict(extra="forbid")
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self.OMIT_WHEN_NONE:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class Contract(_Part):
    """A file one step writes and another reads: versioned, written and read only through here."""

    FILE: ClassVar[str]  # where it lives, for error messages and docs
    READS: ClassVar[tuple[int, ...]] = (SCHEMA_VERSION,)  # the versions this code reads

    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()

    def write(self, uri: str) -> None:
        """Write the file (atomically, sorted keys; safe to repeat: it replaces the file)."""
        from vlmprobe.io import write_json

        write_json(uri, self.to_json())

    @classmethod
    def check_version(cls, data: Any, source: str) -> int:
        """The file's schema version, or :class:`InputError` (one line) when this code cannot read it."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object ({cls.FILE}), got {type(data).__name__}")
        version = data.get("schema_version", 1)  # written before the field existed: version 1
        if type(version) is not int or version not in cls.READS:
            reads = ", ".join(str(v) for v in cls.READS)
            raise InputError(f"{source} has schema_version {version!r}, this vlmprobe reads schema_version {reads}: "
                             "another version of vlmprobe wrote it; use that version, or rerun the step that "
                             "writes it with this one")
        return version

    @classmethod
    def from_json(cls, data: Any, source: str) -> Self:
        """The model of a parsed file (``source`` names it in errors): version checked, then every field."""
        cls.check_version(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise InputError(f"{source} does not match {cls.FILE} schema_version {data.get('schema_version', 1)}: "
                             f"{_first_problem(e)}; was it written by this version of vlmprobe?") from e

    @classmethod
    def read(cls, uri: str) -> Self:
        """The model of the file at ``uri``; :class:`InputError` (one line) when it is not one this code reads."""
        return cls.read_with_sha256(uri)[0]

    @classmethod
    def read_with_sha256(cls, uri: str) -> tuple[Self, str]:
        """The model and the SHA-256 of the file's bytes (the QA journal's fingerprint names its plan so)."""
        from vlmprobe.io import read_bytes

        raw = read_bytes(uri)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{uri} is not JSON ({e}); was it written by vlmprobe?") from e
        return cls.from_json(data, uri), hashlib.sha256(raw).hexdigest()


def _first_problem(e: ValidationError) -> str:
    errors = e.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{where}: {first['msg']}{more}".split())


# -- probe/_SUCCESS.json ---------------------------------------------------------------------------

class ProbeCounts(_Part):
    """What the probe's rows became; ``rows == passed + verified + rejected + unexplained + errors``
    (rows read), i.e. ``rows == passed + wrong + (errors - teacher_errors)``.

    The error files hold ``errors + rejected + read_errors`` lines. ``wrong``: rows the target got
    wrong: ``verified + rejected`` (explained) ``+ unexplained + teacher_errors``; ``unexplained``:
    wrong answers the night's plan left unexplained (``probe/wrong-rank-*.jsonl`` holds every wrong
    answer); ``resumed``: rows an earlier attempt finished; ``probed``: rows this attempt sent to
    the target.
    """

    rows: int
    passed: int
    wrong: int
    verified: int
    rejected: int
    errors: int
    read_errors: int
    resumed: int
    probed: int
    unexplained: int = 0
    teacher_errors: int = 0

    @property
    def explained(self) -> int:
        return self.verified + self.rejected


class InputAccounting(_Part):
    """Input accounting: what was read, what was lost (:class:`vlmprobe.io.parquet.InputCounts`)."""

    files: int
    files_lost: int
    files_lost_rows_unknown: int
    row_groups: int
    row_groups_lost: int
    rows_read: int
    rows_lost: int


class RankPipeline(_Part):
    """Where one rank's time went (:meth:`vlmprobe.probe.pipeline.PipelineStats.as_dict`)."""

    wall_s: float
    device_busy_s: float
    input_wait_s: float
    teacher_wait_s: float
    tail_s: float
    prepare_s: float
    read_s: float
    batches: int
    busy_fraction: float
    bound: str


class PipelineSummary(_Part):
    """What bound the probe, over its ranks (:func:`vlmprobe.probe.pipeline.summarize`)."""

    ranks: int
    wall_s: float
    device_busy_s: float
    input_wait_s: float
    teacher_wait_s: float
    tail_s: float
    busy_fraction: float
    bound: str
    devices_for_same_time: int


class ExplainStats(_Part):
    """One rank's explanation sample (:class:`vlmprobe.budget.select.ExplainSelector`) and its limits."""

    scale: float  # the plan's fractions times this (1: the plan held; lower: the night was wronger)
    lowered: int
    chosen: int
    wrong: int
    budget: float | None
    wrong_by_stratum: dict[str, int]
    limited: Limit = "none"  # a limit the rank met: daily_quota, budget or time
    pass_s: float = 0.0  # the GPU pass: the loop's start to the device's last batch
    tail_limit_s: float | None = None  # how long the teacher could go on after the pass


class NightOutcome(_Part):
    """What the probe's night did against its plan (``_SUCCESS.json``'s and the manifest's ``night``)."""

    explained: int
    unexplained: int
    unexplained_reasons: dict[str, int]
    teacher_errors: int
    limited_by: Limit
    gpu_hours_held: float  # each rank's whole time on its GPU (loading the target included)
    gpu_hours_busy: float  # inside the target's model calls
    pass_s: float  # the slowest rank's GPU pass
    wall_s: float  # the slowest rank's loop: the pass and the teacher's tail
    scale: float  # the lowest of the ranks' explain scales
    lowered: int
    wrong_by_stratum: dict[str, int]


class ProbeRankStats(_Part):
    """One rank's share of the probe, as it sent it to rank 0."""

    rank: int
    work_units: int
    files: list[str]
    failures_uri: str
    errors_uri: str
    counts: ProbeCounts
    input: InputAccounting
    error_reasons: dict[str, int]
    tokens: dict[str, int]  # teacher tokens of the rank's rows, by kind (as the client names them)
    teacher: dict[str, Any]  # the teacher client's stats of this attempt, as it keeps them
    pipeline: RankPipeline
    finished_at: float
    elapsed_s: float
    wrong_uri: str | None = None
    explain: ExplainStats | None = None
    unexplained_reasons: dict[str, int] = Field(default_factory=dict)

    oom_halvings: int = 0  # times the target ran out of GPU memory and the rank halved its batch


class CodeVersion(_Part):
    """The code that ran (:func:`vlmprobe.provenance.code_version`)."""

    version: str  # the vlmprobe package's
    git_commit: str  # "unknown" when neither the image nor a checkout tells
    source: Literal["image", "checkout", "unknown"]  # VLMPROBE_GIT_SHA baked into the image, or `git rev-parse`


class InputFile(_Part):
    """One input file as the store described it when the probe planned its work."""

    uri: str
    size: int | None  # bytes; None when the store could not tell
    mtime: str | None  # last modification, ISO 8601 UTC; None when the store could not tell


class ProbeProvenance(_Part):
    """What the probe ran and read: its code, every input file with its fingerprint (rank 0, at plan time)."""

    code: CodeVersion
    input_files: list[InputFile]
    target_revision: str | None  # the config's target_revision, when it has one


class ProbeSuccess(Contract):
    """``probe/_SUCCESS.json``: step 1 finished; its counts, input accounting, teacher totals, ranks."""

    FILE: ClassVar[str] = "probe/_SUCCESS.json"

    run_date: str
    world_size: int
    input_uri: str
    input_files: list[str]
    failure_files: list[str]  # what sample_keys reads (never a glob)
    error_files: list[str]
    counts: ProbeCounts
    input: InputAccounting
    error_reasons: dict[str, int]
    tokens: dict[str, int]
    teacher: dict[str, Any]  # the ranks' teacher stats summed (free-form like theirs)
    pipeline: PipelineSummary
    target_model: str
    teacher_model: str
    template_version: str
    ranks: list[ProbeRankStats]
    started_at: str
    elapsed_s: float
    provenance: ProbeProvenance | None = None  # None: written before issue 17
    wrong_files: list[str] = Field(default_factory=list)  # every wrong answer, explained or not
    night_plan: NightPlan | None = None
    night: NightOutcome | None = None
    # issue 15: the target's pinned commit (None: a local folder or a server), the ranks' OOM
    # halvings summed, and what a retry compares to skip a probe that already succeeded
    # (vlmprobe.probe.skip): the work plan's and the resume fingerprint's hashes.
    target_revision: str | None = None
    oom_halvings: int = 0
    work_plan_sha256: str | None = None
    fingerprint: str | None = None


# -- the resume journals' headers -----------------------------------------------------------------

class JournalHeader(Contract):
    """A resume journal's ``_fingerprint.json``: the settings its entries were made with.

    Written typed; read back as recorded (:meth:`recorded`), because a header of another journal
    format is not an error but another job's journal, which the step discards with a warning
    naming what changed — after the version check that every contract gets.
    """

    NAME: ClassVar[str] = "_fingerprint.json"  # in the journal's folder

    @classmethod
    def recorded(cls, uri: str) -> dict[str, Any]:
        """The settings recorded in an existing header (without ``schema_version``); version checked."""
        from vlmprobe.io import read_json

        data = read_json(uri)
        cls.check_version(data, uri)
        return {k: v for k, v in data.items() if k != "schema_version"}

    def settings(self) -> dict[str, Any]:
        """The settings, as hashed into the entries' fingerprint (``schema_version`` is not one)."""
        return self.model_dump(exclude={"schema_version"})


class ProbeJournalHeader(JournalHeader):
    """``probe/_journal/_fingerprint.json``: what the probe's outputs depend on (:mod:`vlmprobe.probe.resume`)."""

    FILE: ClassVar[str] = "probe/_journal/_fingerprint.json"

    journal_format: int
    target_model: str
    max_new_tokens: int
    gemini_model: str
    template_version: str
    thinking_budget: int
    teacher_image_max_side: int
    max_output_tokens_factor: int
    max_output_tokens_verify: int
    target_revision: str = ""  # the target's pinned commit; "" for a local folder or a server


class QAJournalHeader(JournalHeader):
    """``qa/_journal/shard-NNNNN/_fingerprint.json``: the shard's plan and teacher settings, and their hash."""

    FILE: ClassVar[str] = "qa/_journal/shard-NNNNN/_fingerprint.json"

    fp: str  # the hash of the other fields; every journal record carries it
    format: int
    plan_sha256: str
    shard_index: int
    start: int
    stop: int
    gemini_model: str
    max_items: int


# -- sample/shards.json ----------------------------------------------------------------------------

class SampleCounts(_Part):
    """Every input failure in exactly one of sampled, errors, over_cap, duplicates, below_min_per_key,
    over_category_cap; ``bad_records`` (of errors) could not be read; ``keys``/``keys_sampled``: failure keys."""

    input_failures: int
    sampled: int
    errors: int
    bad_records: int
    over_cap: int
    duplicates: int
    below_min_per_key: int
    over_category_cap: int
    keys: int
    keys_sampled: int
    over_qa_reservation: int = 0  # left out: more verified failures than QA's reservation pays for


class QAShardSpan(_Part):
    """One QA shard: records ``[start, stop)`` of the sampled failures, their bytes ``[byte_start, byte_stop)``."""

    shard_index: int
    start: int
    stop: int
    count: int
    byte_start: int
    byte_stop: int
    estimated_tokens: int


class CategoryCounts(_Part):
    keys: int
    failures: int
    kept: int
    keys_kept: int


class KeyCounts(_Part):
    """Per failure key: records seen, kept, and how many were left out for which reason."""

    seen: int
    kept: int
    duplicates: int
    over_cap: int
    over_category_cap: int
    below_min_per_key: int
    over_qa_reservation: int = 0


class ShardPlan(Contract):
    """``sample/shards.json``: the sample's counts and the QA shard plan (:mod:`vlmprobe.sample.shards`)."""

    FILE: ClassVar[str] = "sample/shards.json"

    run_date: str
    failures_uri: str
    format: Literal["jsonl", "json"]
    embed_images: bool
    total: int
    num_shards: int
    shards: list[QAShardSpan]
    counts: SampleCounts
    error_reasons: dict[str, int]
    keys_per_category: dict[str, CategoryCounts]
    keys_below_min_per_key: dict[str, int]
    per_key: dict[str, KeyCounts]
    samples_per_key: int
    min_per_key: int
    max_per_category: int
    seed: int
    qa_reserved_requests: int | None = None  # the night's reservation for QA (None: no cap)


# -- qa/_shard-NNNNN.stats.json --------------------------------------------------------------------

class QACounts(_Part):
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


class TokenCounts(_Part):
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int


class TargetCheckStats(_Part):
    """How a shard's target check ran (``enabled`` False: the other figures say so)."""

    enabled: bool
    mode: str
    keep: str
    target_model: str | None
    device: str | None
    busy_s: float
    batches: int
    oom_halvings: int = 0  # times the target ran out of GPU memory and the check halved its batch


class QAShardParquet(_Part):
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


# -- manifest.json / manifest.failed.json ----------------------------------------------------------

class ModelNames(_Part):
    target: str
    teacher: str


class TeacherFigures(_Part):
    """A step's teacher figures, summed over its processes (:func:`vlmprobe.publish.run.teacher_figures`)."""

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
    gave_up: dict[str, int]
    paused_s: float
    processes: int


class RunTeacherFigures(_Part):
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
    estimated_cost_usd: float | None


class AttemptFigures(_Part):
    """Every attempt's requests, tokens and cost, from the teacher ledgers."""

    requests: int
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int
    estimated_cost_usd: Number


class Prices(_Part):
    as_of: str
    source: str


class ManifestTeacher(_Part):
    model: str
    probe: TeacherFigures
    qa: TeacherFigures
    run: RunTeacherFigures
    all_attempts: dict[str, AttemptFigures]  # per step, and "run"
    prices: Prices


class BoundBy(_Part):
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


class ManifestProbe(_Part):
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


class ManifestSample(_Part):
    counts: SampleCounts
    format: Literal["jsonl", "json"]
    embed_images: bool
    uri: str
    keys_per_category: dict[str, CategoryCounts]
    keys_below_min_per_key: dict[str, int]


class TargetCheckSummary(_Part):
    shards: int
    items_checked: int
    items_target_failed: int
    target_failed_rate: float
    items_dropped_target_passed: int


class ManifestShard(QACounts):
    shard_index: int
    uri: str
    elapsed_s: float


class ManifestQA(_Part):
    counts: dict[str, int]  # the shards' QACounts summed; empty when the plan has no shard
    error_reasons: dict[str, int]
    tokens: dict[str, int]
    teacher: TeacherFigures
    target_check: TargetCheckSummary | None  # None: no shard ran the target check
    shards: list[ManifestShard]


class Timings(_Part):
    probe: float
    qa_slowest_shard: float
    qa_all_shards: Number


class Outputs(_Part):
    qa: list[str]
    failures: str
    errors: str
    qa_parquet: list[str] = Field(default_factory=list)  # one per shard that wrote one (qa/parquet/)
    dataset_card: str | None = None  # README.md of a published run


class StepCheck(_Part):
    teacher_error_rows: int
    records: int
    teacher_error_rate: float


class BudgetReachedRows(_Part):
    probe: int
    qa: int


class Checks(_Part):
    max_error_rate: float
    probe: StepCheck
    qa: StepCheck
    budget_reached_rows: BudgetReachedRows


class ManifestDataset(_Part):
    """The QA items as a dataset people load (``qa/parquet/``, the card ``README.md``)."""

    rows: int  # == the QA items (publish checks every file's footer)
    images_missing: int
    shards_without_parquet: int  # shards written by a vlmprobe before the Parquet files
    license: str  # VLMPROBE_DATASET_LICENSE; "other" until the deployment sets it


class WorkerImage(_Part):
    """The image a step's pod ran (the container's imageID, a registry digest); "local" in local pod mode."""

    step: str
    map_index: int
    image: str
    image_id: str


class Provenance(_Part):
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


class QANight(_Part):
    """QA against its reservation in the night's plan."""

    reserved_requests: int | None  # None: no reservation (no daily limit)
    requests: int  # sent by the shards (every attempt, from the run's ledgers)
    limited: int  # failures left without a request because a limit was reached
    limited_by: Limit


class ManifestNight(_Part):
    """The night's plan (:class:`vlmprobe.budget.plan.NightPlan`) next to what the probe and QA did."""

    plan: NightPlan
    probe: NightOutcome
    qa: QANight
    limited_by: Limit  # what limited the night: the probe's limit, else QA's, else none


class RunReport(_Part):
    """Where publish wrote the run's report (:mod:`vlmprobe.report`) and what it could not show."""

    uri: str
    size_bytes: int
    compared_with: str | None  # the run date of the previous completed night it compares with; None: none
    thumbnails: int  # example images shown
    notes: list[str]  # what could not be read (an image, the previous night, ...), as the report says


class ModeFigures(_Part):
    """The teacher's answers billed at one tier or mode (standard, flex, priority online; batch):
    how many, their tokens, their cost there, and what the same tokens cost online at standard."""

    requests: int  # answers billed (a failed attempt with no answer is not billed)
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int
    estimated_cost_usd: float | None  # None: some answers have no price at this tier (priority)
    standard_cost_usd: float


class StepModes(_Part):
    """A step's teacher cost per tier or mode, in all, and what it saved against standard online."""

    by_mode: dict[str, ModeFigures]
    estimated_cost_usd: float | None
    standard_cost_usd: float
    saving_usd: float | None  # standard_cost_usd - estimated_cost_usd


class TeacherModes(_Part):
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


CONTRACTS: tuple[type[Contract], ...] = (ProbeSuccess, ProbeJournalHeader, ShardPlan, QAJournalHeader, QAShardStats,
                                         Manifest)


def night_figures(manifest: Manifest) -> dict[str, Any]:
    """What a published night measured, for the next night's plan (:mod:`vlmprobe.budget.history`)."""
    probe, counts = manifest.probe, manifest.probe.counts
    figures: dict[str, Any] = {
        "rows": counts.rows, "wrong": counts.wrong, "explained": counts.explained, "verified": counts.verified,
        "probe_requests": probe.teacher.requests, "ranks": probe.world_size,
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
