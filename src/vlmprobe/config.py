"""Typed step configs, validated once at the edge (the CLI).

Bounds come from :data:`vlmprobe.params.PARAM_SPECS`, the table the DAG's Params use, so a
limit is written once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vlmprobe.params import PARAM_SPECS
from vlmprobe.rundate import check_run_date, expand_uri

MediaResolution = Literal["unspecified", "low", "medium", "high"]


def param(name: str) -> Any:
    """A pydantic Field with the default, bounds and description of the pipeline param ``name``."""
    spec = PARAM_SPECS[name]
    return Field(
        default=spec["default"],
        ge=spec.get("minimum"),
        le=spec.get("maximum"),
        min_length=spec.get("minLength"),
        description=spec["description"],
    )


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    output_uri: str = param("output_uri")
    run_date: str = Field(description="The run date, YYYY-MM-DD: outputs go under {output_uri}/{run_date}/.")

    @field_validator("run_date")
    @classmethod
    def _run_date(cls, v: str) -> str:
        return check_run_date(v)


class TeacherSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gemini_model: str = param("gemini_model")
    concurrency: int = param("concurrency")
    request_delay: float = param("request_delay")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="Timeout of one Gemini request.")
    # teacher: run-wide quota, retries, the bill
    teacher_rpm: int = param("teacher_rpm")
    teacher_tpm: int = param("teacher_tpm")
    teacher_rpd: int = param("teacher_rpd")
    teacher_project: str = param("teacher_project")
    teacher_retry_window_s: float = param("teacher_retry_window_s")
    max_attempts: int = Field(0, ge=0, le=100, description="Attempts per Gemini request at most, first one "
                              "included; 0 = bounded only by teacher_retry_window_s (for debugging).")
    thinking_budget: int = param("thinking_budget")
    teacher_image_max_side: int = param("teacher_image_max_side")
    max_cost_usd: float = param("max_cost_usd")
    max_output_tokens_factor: int = Field(1024, ge=16, le=65_536, description="max_output_tokens of a factor request.")
    max_output_tokens_verify: int = Field(512, ge=16, le=65_536, description="max_output_tokens of a verification.")
    max_output_tokens_qa: int = Field(2048, ge=16, le=65_536, description="max_output_tokens of a QA request.")
    # tiers and images: what each request is billed at
    teacher_service_tier: Literal["standard", "flex", "priority"] = param("teacher_service_tier")
    teacher_media_resolution_factor: MediaResolution = param("teacher_media_resolution_factor")
    teacher_media_resolution_verify: MediaResolution = param("teacher_media_resolution_verify")
    teacher_media_resolution_qa: MediaResolution = param("teacher_media_resolution_qa")


class TargetPin(BaseModel):
    """The target's pinned commit (issue 15): a 40-hex sha for a hub id, empty for a folder or a server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_revision: str = param("target_revision")

    @field_validator("target_revision")
    @classmethod
    def _sha_form(cls, v: str) -> str:
        from vlmprobe.vlm.staging import REVISION

        if v and not REVISION.fullmatch(v):
            raise ValueError(f"{v!r} is not a commit sha: give the 40 lowercase hex digits of a commit")
        return v

    @model_validator(mode="after")
    def _pinned_where_it_can_be(self) -> TargetPin:
        # A hub id without a revision is refused where the target is loaded (the step configs are
        # also built for steps and tests that never load it); a revision nothing can use, here.
        from vlmprobe.vlm.staging import is_hub_id, revision_problem

        target = getattr(self, "target_model", None)
        if target is not None and self.target_revision and not is_hub_id(target):
            raise ValueError(revision_problem(target, self.target_revision))
        return self


class ProbeConfig(StepConfig, TeacherSettings, TargetPin):
    input_uri: str = param("input_uri")
    target_model: str = param("target_model")
    seed: int = param("seed")
    failure_batch_size: int = param("failure_batch_size")
    parquet_sample_size: int = param("parquet_sample_size")
    max_new_tokens: int = param("max_new_tokens")
    template_version: str = Field("v1", description="Probing-factor template set.")
    max_error_rate: float = param("max_error_rate")
    # the night's plan (vlmprobe.budget): priors until a night has measured them, the GPU time allowed
    expected_error_rate: float = param("expected_error_rate")
    target_images_per_s: float = param("target_images_per_s")
    teacher_latency_s: float = param("teacher_latency_s")
    probe_wall_factor: float = param("probe_wall_factor")
    probe_min_tail_s: float = param("probe_min_tail_s")
    qa_mode: Literal["online", "batch"] = param("qa_mode")  # the plan prices QA by its mode
    teacher_batch_enqueued_tokens: int = param("teacher_batch_enqueued_tokens")
    # Two timeouts: start-up collectives (the plan broadcast) fail fast; a rank that
    # finished its rows waits for the slowest on a gloo group of its own, as long as the task may run.
    pg_timeout_s: int = Field(1800, ge=1, le=86400, description="Timeout of the ranks' start-up collectives "
                              "(the work plan broadcast): a rank that does not start fails the job after it.")
    force: bool = param("force")
    finish_timeout_s: int = Field(86400, ge=1, le=7 * 86400, description="How long a rank that finished its "
                                  "rows waits for the slowest one; keep it at or above the probe task's "
                                  "execution_timeout (12 h in the DAG).")

    @field_validator("input_uri")
    @classmethod
    def _dated_input(cls, v: str, info: ValidationInfo) -> str:
        # {run_date} in input_uri: the same expansion as the Airflow-side preflight
        return expand_uri(v, info.data["run_date"]) if "run_date" in info.data else v


class SampleConfig(StepConfig):
    seed: int = param("seed")
    samples_per_key: int = param("samples_per_key")
    error_output_format: Literal["jsonl", "json"] = param("error_output_format")
    embed_images: bool = param("embed_images")
    num_shards: int = param("num_shards")
    min_per_key: int = param("min_per_key")
    max_per_category: int = param("max_per_category")
    max_error_rate: float = param("max_error_rate")

    @model_validator(mode="after")
    def _min_within_cap(self) -> SampleConfig:
        if self.min_per_key > self.samples_per_key:
            raise ValueError(f"min_per_key ({self.min_per_key}) cannot exceed samples_per_key "
                             f"({self.samples_per_key}): lower min_per_key or raise samples_per_key")
        return self


class QAConfig(StepConfig, TeacherSettings, TargetPin):
    shard_index: int = Field(ge=0, description="Which shard of sample/shards.json to process.")
    batch_size: int = param("batch_size")
    no_async: bool = param("no_async")
    max_items: int = Field(3, ge=1, le=5, description="QA pairs asked for per failure.")
    # The target check: each QA item put to the target on the shard's device.
    target_model: str = param("target_model")
    max_new_tokens: int = param("max_new_tokens")
    qa_target_check: Literal["auto", "on", "off"] = param("qa_target_check")
    qa_keep: Literal["all", "target_failed"] = param("qa_keep")
    # batch mode: one Batch API job per shard (vlmprobe.qa.batch)
    qa_mode: Literal["online", "batch"] = param("qa_mode")
    batch_deadline_h: float = param("batch_deadline_h")
    batch_poll_s: float = param("batch_poll_s")
    qa_phase: Literal["all", "submit", "collect"] = Field(
        "all", description="Batch mode's part to run: all (submit, wait and collect in this process), submit "
        "(the DAG's qa.submit: submit the shard's job and exit) or collect (the DAG's qa.generate, once the "
        "job ended: collect, send online what it did not answer, write the shard). Online mode runs the shard "
        "in all and collect, and does nothing in submit.")


class PublishConfig(StepConfig):
    gemini_model: str = param("gemini_model")
    # publish gives back what QA did not use of its reservation in the project's daily ledger
    teacher_project: str = param("teacher_project")
    teacher_rpd: int = param("teacher_rpd")
    # publish fails the run when a step's teacher error rows exceed this fraction
    max_error_rate: float = param("max_error_rate")
    conf_json: str | None = Field(None, description="The conf the run was triggered with, a JSON object, for "
                                  "the manifest's provenance (the publish task passes the DAG run's).")

    @field_validator("conf_json")
    @classmethod
    def _conf_object(cls, v: str | None) -> str | None:
        import json

        if v is not None and not isinstance(json.loads(v), dict):  # a JSONDecodeError is a ValueError too
            raise ValueError("must be a JSON object, e.g. '{\"preset\": \"4gpu\"}'")
        return v

    def run_conf(self) -> dict[str, Any] | None:
        """The trigger's conf, or None when not given."""
        import json

        return None if self.conf_json is None else json.loads(self.conf_json)
