"""Where one run's outputs live: ``{output_uri}/{run_date}/...`` (the design's interface)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmprobe.io.fs import join
from vlmprobe.rundate import check_run_date


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

    @property
    def probe_success(self) -> str:
        return join(self.probe_dir, "_SUCCESS.json")

    # step 2
    def sampled_failures(self, fmt: str = "jsonl") -> str:
        return join(self.root, "sample", f"failures.{fmt}")

    @property
    def shard_plan(self) -> str:
        return join(self.root, "sample", "shards.json")

    # step 3
    @property
    def qa_dir(self) -> str:
        return join(self.root, "qa")

    def qa_shard(self, index: int) -> str:
        return join(self.qa_dir, f"shard-{index:05d}.jsonl")

    def qa_stats(self, index: int) -> str:
        return join(self.qa_dir, f"_shard-{index:05d}.stats.json")

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
