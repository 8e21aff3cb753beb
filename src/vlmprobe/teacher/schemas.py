"""Structured-output schemas for the teacher's three kinds of answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vlmprobe.teacher.templates import load_templates

# The v1 categories as a Literal so the response schema carries them as an enum.
FactorCategory = Literal[
    "color", "count", "spatial_relation", "text", "size", "shape", "occlusion",
    "lighting", "viewpoint", "small_object", "clutter", "other",
]
assert set(FactorCategory.__args__) == set(load_templates().categories), "schema and template set diverged"


class FactorCompletion(BaseModel):
    """Step 1: which factor explains the failure, and the template completed for it."""

    model_config = ConfigDict(extra="ignore")
    category: FactorCategory
    value: str = Field(description="The word or short phrase that fills the template's {value} blank.")
    completion: str = Field(description="The template with its blank filled in.")
    explanation: str = Field(description="One sentence on what in the image supports this factor.")


class Verification(BaseModel):
    """Step 1: does the image support the completed factor?"""

    model_config = ConfigDict(extra="ignore")
    supported: bool
    rationale: str


AnswerType = Literal["yes_no", "multiple_choice", "open"]


class QAPair(BaseModel):
    model_config = ConfigDict(extra="ignore")
    answer_type: AnswerType
    choices: list[str] = Field(description="Options for multiple_choice; empty otherwise.")
    question: str
    answer: str
    rationale: str


class QASet(BaseModel):
    """Step 3: question-answer pairs that probe one failure's factor."""

    model_config = ConfigDict(extra="ignore")
    items: list[QAPair] = Field(min_length=1, max_length=5)
