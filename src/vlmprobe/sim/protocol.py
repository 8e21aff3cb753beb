"""Gemini's wire format, as the simulator speaks it: the pieces every endpoint shares.

A field looked up under its camelCase or snake_case name (google-genai sends snake_case), the
``google.rpc`` error envelope, ``usageMetadata``, and a response body that is not JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

# The prefix of a google.rpc detail's "@type" (RetryInfo, QuotaFailure, ErrorInfo, Help, ...).
RPC = "type.googleapis.com/google.rpc."


def lookup(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` for a camelCase key, also found under its snake_case spelling."""
    if name in obj:
        return obj[name]
    return obj.get(re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An error body as Google's APIs send it: ``{"error": {code, message, status[, details]}}``."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def usage(prompt_tokens: int, output_tokens: int, thinking_tokens: int) -> dict[str, int]:
    """A response's ``usageMetadata``; thinking counts in the total, and is named only when there was some."""
    counts = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
              "totalTokenCount": prompt_tokens + output_tokens + thinking_tokens}
    if thinking_tokens:
        counts["thoughtsTokenCount"] = thinking_tokens
    return counts


class RawBody:
    """A response body as bytes (the simulated non-JSON 200, a downloaded file, a JSON answer that
    needs headers), with its content type and any extra response ``headers``."""

    def __init__(self, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.data, self.content_type = data, content_type
        self.headers = dict(headers or {})


def json_body(payload: Any, headers: dict[str, str]) -> RawBody:
    """``payload`` as the JSON body the server sends, with extra response ``headers``."""
    return RawBody(json.dumps(payload).encode(), "application/json; charset=UTF-8", headers)
