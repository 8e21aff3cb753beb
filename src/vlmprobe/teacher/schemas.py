"""Structured-output schemas for the teacher's three kinds of answers.

The factor answer's schema comes from the template set: where a factor has a closed vocabulary
(``values`` in the set), the schema sent to Gemini allows only those values for that category.
It is an ``anyOf`` of flat objects with the same four fields — one branch for every category
with an open value, one branch per closed category with ``value`` as an enum — so the answer's
JSON has the same shape as before. The pydantic validator stays lenient on ``value`` (any
string): a value outside the vocabulary becomes ``category:other`` when the failure key is
normalised (:mod:`vlmprobe.records`) instead of failing a paid request.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlmprobe.teacher.templates import TemplateSet, load_templates

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

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The response schema sent to the teacher: values of closed categories constrained."""
        return factor_response_schema(load_templates())


def factor_response_schema(templates: TemplateSet, constrain: bool = True) -> dict[str, Any]:
    """The factor answer's JSON schema for ``templates`` (see the module docstring).

    ``constrain=False`` gives one flat object instead, the closed vocabularies only listed in
    the ``value`` description (for an endpoint that refuses a top-level ``anyOf``); the key
    normalisation still maps stray values to ``other``.
    """
    flat = BaseModel.model_json_schema.__func__(FactorCompletion)  # pydantic's own, not the override
    flat["properties"]["category"] = {**flat["properties"]["category"], "enum": list(templates.categories)}
    open_categories = [f.category for f in templates.factors if not f.closed]
    closed = [f for f in templates.factors if f.closed]
    if not closed or not constrain:
        if closed:
            allowed = "; ".join(f"for {f.category}: one of {', '.join(f.values)}" for f in closed)
            value = flat["properties"]["value"]
            flat["properties"]["value"] = {**value, "description": f"{value['description']} Allowed values {allowed}."}
        return flat

    def branch(categories: list[str], values: tuple[str, ...] = ()) -> dict[str, Any]:
        b = copy.deepcopy({k: v for k, v in flat.items() if k not in ("title", "description")})
        b["properties"]["category"]["enum"] = categories
        if values:
            b["properties"]["value"]["enum"] = list(values)
            b["properties"]["value"]["description"] = f"The {categories[0]} condition: one of the allowed values."
        return b

    branches = ([branch(open_categories)] if open_categories else []) + [branch([f.category], f.values) for f in closed]
    return {"title": flat["title"], "description": flat.get("description", ""), "anyOf": branches}


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
