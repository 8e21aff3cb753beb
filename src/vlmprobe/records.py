"""Record shapes shared by the steps: failure keys, ids and error rows."""

from __future__ import annotations

import hashlib
import re
from typing import Any

_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalize_key_part(text: str) -> str:
    """Lowercase, runs of non-alphanumerics → ``_``: ``"Light Blue "`` → ``light_blue``."""
    return _NON_WORD.sub("_", str(text).lower()).strip("_") or "unknown"


def failure_key(category: str, value: str) -> str:
    """``category:value``, both normalized, e.g. ``color:light_blue``."""
    return f"{normalize_key_part(category)}:{normalize_key_part(value)}"


def stable_id(*parts: Any, length: int = 16) -> str:
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]


def row_id(uri: str, row: int, given: Any = None) -> str:
    """The row's own ``id`` when it has one, else a stable id from its file and row number."""
    return str(given) if given not in (None, "") else stable_id(uri, row)


def error_record(step: str, reason: str, detail: str, **where: Any) -> dict[str, Any]:
    """An error row: which step, a short machine-friendly reason, a sentence, and where it came from."""
    return {"step": step, "reason": reason, "detail": detail[:2000], **where}
