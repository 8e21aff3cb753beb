"""The steps' contracts: each JSON file one step writes and another reads, as one typed model.

One module per file (:mod:`.probe`, :mod:`.journals`, :mod:`.sample`, :mod:`.qa`, :mod:`.manifest`;
:mod:`.base` the machinery); import them from here.

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

from vlmprobe.contracts.base import SCHEMA_VERSION, Contract, Number, Part
from vlmprobe.contracts.probe import (
    CodeVersion,
    ExplainStats,
    InputAccounting,
    InputFile,
    NightOutcome,
    PipelineSummary,
    ProbeCounts,
    ProbeProvenance,
    ProbeRankStats,
    ProbeSuccess,
    RankPipeline,
)
from vlmprobe.contracts.journals import (
    JournalHeader,
    ProbeJournalHeader,
    QAJournalHeader,
)
from vlmprobe.contracts.sample import (
    CategoryCounts,
    KeyCounts,
    QAShardSpan,
    SampleCounts,
    ShardPlan,
)
from vlmprobe.contracts.qa import (
    QACounts,
    QAShardParquet,
    QAShardStats,
    TargetCheckStats,
    TokenCounts,
)
from vlmprobe.contracts.manifest import (
    AttemptFigures,
    BoundBy,
    BudgetReachedRows,
    Checks,
    Manifest,
    ManifestDataset,
    ManifestNight,
    ManifestProbe,
    ManifestQA,
    ManifestSample,
    ManifestShard,
    ManifestTeacher,
    ModeFigures,
    ModelNames,
    Outputs,
    Prices,
    Provenance,
    QANight,
    RunReport,
    RunTeacherFigures,
    StepCheck,
    StepModes,
    TargetCheckSummary,
    TeacherFigures,
    TeacherModes,
    Timings,
    WorkerImage,
    night_figures,
)

CONTRACTS: tuple[type[Contract], ...] = (ProbeSuccess, ProbeJournalHeader, ShardPlan, QAJournalHeader, QAShardStats,
                                         Manifest)

__all__ = [
    "AttemptFigures",
    "BoundBy",
    "BudgetReachedRows",
    "CONTRACTS",
    "CategoryCounts",
    "Checks",
    "CodeVersion",
    "Contract",
    "ExplainStats",
    "InputAccounting",
    "InputFile",
    "JournalHeader",
    "KeyCounts",
    "Manifest",
    "ManifestDataset",
    "ManifestNight",
    "ManifestProbe",
    "ManifestQA",
    "ManifestSample",
    "ManifestShard",
    "ManifestTeacher",
    "ModeFigures",
    "ModelNames",
    "NightOutcome",
    "Number",
    "Outputs",
    "Part",
    "PipelineSummary",
    "Prices",
    "ProbeCounts",
    "ProbeJournalHeader",
    "ProbeProvenance",
    "ProbeRankStats",
    "ProbeSuccess",
    "Provenance",
    "QACounts",
    "QAJournalHeader",
    "QANight",
    "QAShardParquet",
    "QAShardSpan",
    "QAShardStats",
    "RankPipeline",
    "RunReport",
    "RunTeacherFigures",
    "SCHEMA_VERSION",
    "SampleCounts",
    "ShardPlan",
    "StepCheck",
    "StepModes",
    "TargetCheckStats",
    "TargetCheckSummary",
    "TeacherFigures",
    "TeacherModes",
    "Timings",
    "TokenCounts",
    "WorkerImage",
    "night_figures",
]
