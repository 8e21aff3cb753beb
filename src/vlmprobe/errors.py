"""Expected failures of a step: each carries the exit code the CLI returns and one line for the user."""
from __future__ import annotations
import datetime as dt

class VlmprobeError(Exception):
    """An expected failure: the CLI prints its message on one line and exits with exit_code."""
    exit_code = 1

class UsageError(VlmprobeError):
    """Bad options or configuration: deterministic, never worth a retry."""
    exit_code = 2

class InputError(VlmprobeError):
    """Input that cannot be processed (missing, empty, unreadable): deterministic."""
    exit_code = 2

class TeacherUnusable(VlmprobeError):
    """Gemini refuses every request (bad or revoked key, no permission, unknown model)."""
    exit_code = 3

class QuotaExhausted(VlmprobeError):
    """The teacher's daily quota is spent; a rerun after resets_at resumes."""
    exit_code = 4
    def __init__(self, message: str, resets_at: dt.datetime | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at


# -- helpers -------------------------------------------------------------------------------------

DETERMINISTIC_EXIT_CODES = frozenset({2, 3, 4})


def require_fields(record: object, fields: tuple[str, ...] | list[str], *, source: str, number: int) -> None:
    """Raise :class:`InputError` naming ``source`` and the record ``number`` when a field is missing.

    For readers of step outputs, so that a record without ``failure_key`` ends as one clear line
    (``probe/rank-00000.jsonl, record 12: no 'failure_key' ...``) instead of a bare ``KeyError``.
    ``number`` counts records from 1 (the line number in a JSONL file without blank lines).
    """
    if not isinstance(record, dict):
        raise InputError(f"{source}, record {number}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in fields if f not in record]
    if missing:
        have = ", ".join(sorted(record)) or "none"
        raise InputError(f"{source}, record {number}: no {', '.join(repr(f) for f in missing)} "
                         f"(fields present: {have}); was it written by this version of vlmprobe?")


def exit_code_for(e: BaseException) -> tuple[int, bool]:
    """(exit code, expected?) for an exception that ended a step; the CLI and the light tasks agree.

    Expected failures (:class:`VlmprobeError`) carry their code and a message written for the user.
    ``FileNotFoundError`` and ``ValueError`` (pydantic's ``ValidationError``, JSON and Unicode
    decoding errors included) count as 2: in these steps they come from a missing prerequisite or
    an input that cannot be read as it is, and another attempt on the same input fails the same
    way. They are not "expected": the step did not word them for the user, so the CLI shows their
    type and the ``--debug`` hint. Everything else is a runtime failure, worth a retry: 1.
    """
    if isinstance(e, VlmprobeError):
        return e.exit_code, True
    if isinstance(e, (FileNotFoundError, ValueError)):
        return 2, False
    return 1, False
