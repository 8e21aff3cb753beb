"""``probe/_SUCCESS.json``: step 1's counts, input accounting, ranks, the night's plan and outcome."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from vlmprobe.budget.plan import Limit, NightPlan
from vlmprobe.contracts.base import Contract, Part


# -- probe/_SUCCESS.json ---------------------------------------------------------------------------

class ProbeCounts(Part):
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


class InputAccounting(Part):
    """Input accounting: what was read, what was lost (:class:`vlmprobe.io.parquet.InputCounts`)."""

    files: int
    files_lost: int
    files_lost_rows_unknown: int
    row_groups: int
    row_groups_lost: int
    rows_read: int
    rows_lost: int


class RankPipeline(Part):
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


class PipelineSummary(Part):
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


class ExplainStats(Part):
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


class NightOutcome(Part):
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


class ProbeRankStats(Part):
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


class CodeVersion(Part):
    """The code that ran (:func:`vlmprobe.provenance.code_version`)."""

    version: str  # the vlmprobe package's
    git_commit: str  # "unknown" when neither the image nor a checkout tells
    source: Literal["image", "checkout", "unknown"]  # VLMPROBE_GIT_SHA baked into the image, or `git rev-parse`


class InputFile(Part):
    """One input file as the store described it when the probe planned its work."""

    uri: str
    size: int | None  # bytes; None when the store could not tell
    mtime: str | None  # last modification, ISO 8601 UTC; None when the store could not tell


class ProbeProvenance(Part):
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
