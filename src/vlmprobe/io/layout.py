"""Where one run's outputs live: ``{output_uri}/{run_date}/...`` (the design's interface).

Rerun policy (one rule for every step): **a step's rerun invalidates everything downstream of
it before it writes** — its own outputs, every later step's outputs and the manifest — so a
rerun can never leave an old ``manifest.json``, sample or QA shard next to new results.
:meth:`RunLayout.invalidate` does it, and removes the temporary files of killed writers
(``.NAME.tmp-*``) in the folders it cleans.

What survives a rerun by design (issue 5: never pay Gemini twice):
- ``probe/_journal/`` and ``qa/_journal/``: per-record resume journals (:mod:`vlmprobe.io.journal`);
  the step that reads one decides whether its records still apply (fingerprint them);
- ``qa/_batch/``: each QA shard's Batch API ledger and the results it read (batch mode,
  :mod:`vlmprobe.teacher.batch`): answers are matched by request hash, so they apply or are unused;
- ``_teacher/``: the teacher's quota and spend ledgers, shared by every step of the run date.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmprobe.io.fs import TMP_MARK, basename, is_temp_name, join, list_all, list_dir, remove_files
from vlmprobe.rundate import check_run_date

STEPS = ("probe", "sample", "qa", "publish")
RESUME_STATE = ("_journal", "_batch")  # names under probe/ and qa/ that reruns keep


@dataclass(frozen=True)
class RunLayout:
    output_uri: str
    run_date: str

    def __post_init__(self) -> None:
        check_run_date(self.run_date)

    @property
    def root(self) -> str:
        return join(self.output_uri, self.run_date)

    # step 1
    @property
    def probe_dir(self) -> str:
        return join(self.root, "probe")

    def probe_rank(self, rank: int) -> str:
        return join(self.probe_dir, f"rank-{rank:05d}.jsonl")

    def probe_wrong(self, rank: int) -> str:
        """Every wrong answer of a rank, explained or not (image reference, question, truth, prediction)."""
        return join(self.probe_dir, f"wrong-rank-{rank:05d}.jsonl")

    @property
    def probe_success(self) -> str:
        return join(self.probe_dir, "_SUCCESS.json")

    @property
    def probe_journal(self) -> str:
        return join(self.probe_dir, "_journal")

    # step 2
    @property
    def sample_dir(self) -> str:
        return join(self.root, "sample")

    def sampled_failures(self, fmt: str = "jsonl") -> str:
        return join(self.sample_dir, f"failures.{fmt}")

    @property
    def shard_plan(self) -> str:
        return join(self.sample_dir, "shards.json")

    # step 3
    @property
    def qa_dir(self) -> str:
        return join(self.root, "qa")

    def qa_shard(self, index: int) -> str:
        return join(self.qa_dir, f"shard-{index:05d}.jsonl")

    def qa_stats(self, index: int) -> str:
        return join(self.qa_dir, f"_shard-{index:05d}.stats.json")

    @property
    def qa_journal(self) -> str:
        return join(self.qa_dir, "_journal")

    @property
    def qa_parquet_dir(self) -> str:
        """The QA items as a dataset: one Parquet file per shard (:mod:`vlmprobe.qa.dataset`)."""
        return join(self.qa_dir, "parquet")

    def qa_parquet(self, index: int) -> str:
        return join(self.qa_parquet_dir, f"shard-{index:05d}.parquet")

    def qa_batch_ledger(self, index: int) -> str:
        """The shard's Batch API ledger (batch mode); its jobs' results are kept next to it."""
        return join(self.qa_dir, "_batch", f"shard-{index:05d}.json")

    # errors: every record that could not be processed, with its reason
    @property
    def errors_dir(self) -> str:
        return join(self.root, "errors")

    def probe_errors(self, rank: int) -> str:
        return join(self.errors_dir, f"probe-rank-{rank:05d}.jsonl")

    @property
    def sample_errors(self) -> str:
        return join(self.errors_dir, "sample.jsonl")

    def qa_errors(self, index: int) -> str:
        return join(self.errors_dir, f"qa-shard-{index:05d}.jsonl")

    @property
    def manifest(self) -> str:
        return join(self.root, "manifest.json")

    @property
    def manifest_failed(self) -> str:
        """The manifest of a run publish failed (too many teacher errors): never manifest.json."""
        return join(self.root, "manifest.failed.json")

    @property
    def dataset_card(self) -> str:
        """The run's dataset card, written by publish (:mod:`vlmprobe.publish.card`)."""
        return join(self.root, "README.md")

    @property
    def report(self) -> str:
        """The run's report, one self-contained HTML file (:mod:`vlmprobe.report`), next to the manifest."""
        return join(self.root, "report.html")

    @property
    def teacher_dir(self) -> str:
        return join(self.root, "_teacher")

    # reruns
    def invalidate(self, step: str, shard_index: int | None = None) -> list[str]:
        """Remove what a rerun of ``step`` makes stale; returns the URIs removed. Call it before writing.

        ``probe``: everything under the run date except the resume journals and ``_teacher/``.
        ``sample``: ``sample/``, the QA outputs and stats, the sample and QA error files, the
        manifest. ``qa`` with ``shard_index``: that shard's outputs (JSONL and Parquet), stats, error
        file and temporary files, and the manifest (the other shards may be running; they stay).
        ``qa`` without a shard: every shard, as for ``sample`` less ``sample/``. ``publish``: the
        manifest. Every step's rerun removes the manifest and the report with it. Temporary files of
        killed writers go with the folders they are in.
        """
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; one of {STEPS}")
        # the manifest and the report, and a killed publish's temporary files, are stale after any rerun
        doomed: list[str] = [self.manifest, self.manifest_failed, self.report] + [u for u in list_dir(self.root)
                                                                                 if is_temp_name(basename(u))]
        doomed.append(self.dataset_card)  # it describes the published run
        if step == "qa" and shard_index is not None:
            mine = {basename(u) for u in (self.qa_shard(shard_index), self.qa_stats(shard_index),
                                          self.qa_errors(shard_index), self.qa_parquet(shard_index))}
            for uri in list_all(self.qa_dir) + list_all(self.errors_dir):
                name = basename(uri)
                if name in mine or (is_temp_name(name) and name[1:].split(TMP_MARK)[0] in mine):
                    doomed.append(uri)
        elif step != "publish":
            first = STEPS.index(step)
            if first == 0:
                doomed += _outside_resume_state(self.probe_dir, list_all(self.probe_dir))
            if first <= 1:
                doomed += list_all(self.sample_dir)
            doomed += _outside_resume_state(self.qa_dir, list_all(self.qa_dir))
            stale_errors = ("probe-", "sample", "qa-")[first:]
            for uri in list_all(self.errors_dir):
                if basename(uri).lstrip(".").startswith(stale_errors):
                    doomed.append(uri)
        return remove_files(doomed)


def _outside_resume_state(folder: str, uris: list[str]) -> list[str]:
    out = []
    for uri in uris:
        top = uri[len(folder):].lstrip("/").split("/", 1)[0]
        if not top.startswith(RESUME_STATE):
            out.append(uri)
    return out
