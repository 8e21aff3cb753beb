"""Structured answers: the JSON schema a request asks for, and reading a 200 answer back into it.

An answer is either the parsed pydantic object or a :class:`RejectedOutput` that says why there
is none and how to treat it (a :data:`~vlmprobe.teacher.results.Kind`): a blocked prompt or a
content-filter finish is ``final`` (the same request gets the same verdict), a cut-off answer is
``max_tokens``, bad JSON, a schema mismatch or another finish is ``bad_output`` (retried).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from vlmprobe.teacher.results import Kind, Schema

if TYPE_CHECKING:
    from google.genai import types

# Finish reasons that are a verdict on the content: the same request gets the same answer.
CONTENT_FILTERS = frozenset({
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE",
})


class RejectedOutput(Exception):
    """A 200 answer that cannot be used: bad JSON, schema mismatch, a block or a bad finish."""

    def __init__(self, reason: str, kind: Kind, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.kind = kind


@functools.lru_cache(maxsize=64)
def response_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent as ``response_json_schema``, built once per model class.

    Passing the class as ``response_schema`` makes google-genai rebuild and convert it on every
    call (about 2.7 ms of CPU each, measured with bench/bench_teacher.py).
    """
    return schema.model_json_schema()


def _name(value: Any) -> str:
    return str(getattr(value, "name", None) or getattr(value, "value", None) or value)


def parsed_or_reject(response: types.GenerateContentResponse, schema: type[Schema]) -> Schema:
    """The parsed answer, or RejectedOutput saying why there is none."""
    candidates = response.candidates or []
    if not candidates:
        block = response.prompt_feedback.block_reason if response.prompt_feedback else None
        if block is not None:
            name = _name(block)
            raise RejectedOutput(f"blocked_{name.lower()}", "final", f"the prompt was blocked ({name})")
        raise RejectedOutput("no_candidates", "bad_output", "the answer has no candidates")
    finish = candidates[0].finish_reason
    if finish is not None and _name(finish) != "STOP":
        name = _name(finish)
        if name in CONTENT_FILTERS:
            raise RejectedOutput(f"finish_{name.lower()}", "final", f"the answer was withheld (finish reason {name})")
        if name == "MAX_TOKENS":
            raise RejectedOutput("finish_max_tokens", "max_tokens", "the answer was cut off at max_output_tokens")
        raise RejectedOutput(f"finish_{name.lower()}", "bad_output", f"finish reason {name}")
    # We validate the text ourselves: the SDK's response.parsed is silently None on bad JSON.
    try:
        return schema.model_validate_json(response.text or "")
    except ValidationError as e:
        detail = f"{e.error_count()} validation error(s), first: {e.errors()[0]['msg']}"
    raise RejectedOutput("schema_mismatch", "bad_output", detail)


def response_from_json(body: dict[str, Any]) -> types.GenerateContentResponse:
    """A generateContent answer's JSON (a line of a Batch API result file) as google-genai's
    response type, read as google-genai 3.6.1 reads a ``generate_content`` body: its mldev
    converter, then ``_from_response`` (which drops fields the types do not know). Both are private
    to the SDK: the batch tests read the simulator's results through here."""
    import copy

    from google.genai import models, types

    return types.GenerateContentResponse._from_response(
        response=models._GenerateContentResponse_from_mldev(copy.deepcopy(body)), kwargs={})
