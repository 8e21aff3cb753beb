"""What a teacher call ends with: its result, or the error it raises, and the kinds of failure.

No google-genai import here: the steps catch :class:`TeacherError` and read :class:`TeacherResult`
without loading the SDK.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

from vlmprobe.errors import VlmprobeError
from vlmprobe.teacher.usage import Usage

Schema = TypeVar("Schema", bound=BaseModel)
# How a failed attempt is handled (vlmprobe.teacher.retry.classify sorts each one into a kind).
Kind = Literal["fatal", "daily", "rate_limited", "transient", "bad_output", "max_tokens", "final"]
_KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{35}")


@dataclass
class TeacherResult(Generic[Schema]):
    parsed: Schema
    usage: Usage
    attempts: int


class TeacherError(Exception):
    """A request that failed for good: an error row for its record.

    ``reason`` is short and machine-friendly: ``http_429``, ``http_400``, ``schema_mismatch``,
    ``finish_safety``, ``blocked_safety``, ``finish_max_tokens``, ``timeout``, ``transport``,
    ``bad_response``, ``budget_reached``...
    """

    def __init__(self, reason: str, attempts: int, message: str, usage: Usage | None = None) -> None:
        super().__init__(f"{message} (reason={reason}, attempts={attempts})")
        self.reason = reason
        self.attempts = attempts
        self.message = message
        self.usage = usage or Usage()  # tokens billed for the failed attempts


class TeacherCircuitOpen(VlmprobeError):
    """Most recent requests failed after their retries: stop the step (exit 1, worth a later retry)."""

    exit_code = 1


def redact(text: str, api_key: str | None) -> str:
    """``text`` without ``api_key`` nor anything shaped like a Gemini key (servers echo them)."""
    text = str(text).replace(api_key, "[redacted]") if api_key else str(text)
    return _KEY_PATTERN.sub("[redacted]", text)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
