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
