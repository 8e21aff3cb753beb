"""Typed step configs, validated once at the edge (the CLI).

Bounds come from :data:`vlmprobe.params.PARAM_SPECS`, the table the DAG's Params use, so a
limit is written once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlmprobe.params import PARAM_SPECS
from vlmprobe.rundate import check_run_date


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
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per Gemini request, first one included.")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="Timeout of one Gemini request.")


class ProbeConfig(StepConfig, TeacherSettings):
    input_uri: str = param("input_uri")
    target_model: str = param("target_model")
    seed: int = param("seed")
    failure_batch_size: int = param("failure_batch_size")
    parquet_sample_size: int = param("parquet_sample_size")
    max_new_tokens: int = Field(16, ge=1, le=512, description="Tokens the target may generate per answer.")
    template_version: str = Field("v1", description="Probing-factor template set.")
    pg_timeout_s: int = Field(1800, ge=30, le=86400, description="torch.distributed process-group timeout.")


class SampleConfig(StepConfig):
    seed: int = param("seed")
    samples_per_key: int = param("samples_per_key")
    error_output_format: Literal["jsonl", "json"] = param("error_output_format")
    embed_images: bool = param("embed_images")
    num_shards: int = param("num_shards")
    min_per_key: int = param("min_per_key")
    max_per_category: int = param("max_per_category")
    # the shared max_error_rate (h5's param on main: use param("max_error_rate") once merged)
    max_error_rate: float = Field(0.1, ge=0, le=1, description="A step fails when its error rows exceed this "
                                  "fraction of its input records.")

    @model_validator(mode="after")
    def _min_within_cap(self) -> SampleConfig:
        if self.min_per_key > self.samples_per_key:
            raise ValueError(f"min_per_key ({self.min_per_key}) cannot exceed samples_per_key "
                             f"({self.samples_per_key}): lower min_per_key or raise samples_per_key")
        return self


class QAConfig(StepConfig, TeacherSettings):
    shard_index: int = Field(ge=0, description="Which shard of sample/shards.json to process.")
    batch_size: int = param("batch_size")
    no_async: bool = param("no_async")
    max_items: int = Field(3, ge=1, le=5, description="QA pairs asked for per failure.")


class PublishConfig(StepConfig):
    gemini_model: str = param("gemini_model")
