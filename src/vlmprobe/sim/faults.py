"""Failure injection: the faults the simulator plans per request, and the forced failure modes.

Each request's faults come from an RNG seeded by the simulator's seed and the request's number
(:func:`request_rng`), so a test is reproducible; its draws come in a fixed order (latency
jitter, then the fault, then the thinking tokens), which the demo's counts depend on. The faults:
a 429 with a RetryInfo delay, 503, a 200 with truncated JSON, SAFETY and MAX_TOKENS answers, a
blocked prompt, a 200 that is not JSON. A forced mode (:data:`FAIL_MODES`) answers every request
with Gemini's body for a bad key (400 API_KEY_INVALID), 401, 403 or an unknown model (404).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from vlmprobe.sim.protocol import RPC, RawBody, google_error, usage

# The faults in the order their rates share the unit interval of one draw.
FAULTS = ("429", "503", "malformed", "safety", "blocked", "max_tokens", "non_json")

# The forced failures (``fail``): every request answered with this error, as Gemini words it.
FAIL_MODES = ("invalid_key", "401", "403", "404")

SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
]
NON_JSON_BODY = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>upstream hiccup</body></html>"


def request_rng(seed: int, number: int) -> random.Random:
    """The RNG of request ``number`` (0-based): draws its latency jitter, its fault and its thinking tokens."""
    return random.Random(f"{seed}:{number}")


def latency_jitter(rng: random.Random) -> float:
    """The request's first draw: its latency as a multiple of the mean (±50%)."""
    return rng.uniform(0.5, 1.5)


def draw_fault(rng: random.Random, rates: Mapping[str, float]) -> str | None:
    """The request's second draw: one of :data:`FAULTS` with the chance ``rates[fault]``, or None."""
    draw = rng.random()
    for fault in FAULTS:
        edge = rates[fault]
        if draw < edge:
            return fault
        draw -= edge
    return None


def planned_fault(seed: int, number: int, rates: Mapping[str, float]) -> str | None:
    """The fault that request ``number`` will draw (quota 429s, forced failures and 400s come on top)."""
    rng = request_rng(seed, number)
    latency_jitter(rng)  # the latency draw comes first, as for a served request
    return draw_fault(rng, rates)


def fault_answer(fault: str | None, model: str, number: int, prompt_tokens: int,
                 retry_delay_s: float) -> tuple[int, Any] | None:
    """Status and body of a fault that replaces the model's reply (429, 503, non_json, blocked);
    None for the others, which shape the reply instead (malformed, safety, max_tokens)."""
    if fault == "429":
        retry_info = {"@type": RPC + "RetryInfo", "retryDelay": f"{retry_delay_s:g}s"}
        message = "Resource has been exhausted (e.g. check quota). Simulated rate limit."
        return 429, google_error(429, "RESOURCE_EXHAUSTED", message, [retry_info])
    if fault == "503":
        return 503, google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    if fault == "non_json":
        return 200, RawBody(NON_JSON_BODY, "text/html; charset=UTF-8")
    if fault == "blocked":
        return 200, {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": SAFETY_RATINGS},
                     "usageMetadata": usage(prompt_tokens, 0, 0), "modelVersion": model,
                     "responseId": f"sim-{number}"}
    return None


def truncate(text: str) -> str:
    """Cut a JSON text so that it no longer parses, as a reply cut off mid-generation would."""
    cut = text[: max(1, len(text) // 2)]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return cut + ","


def fail_error(mode: str, model: str, api_key: str) -> tuple[int, dict[str, Any]]:
    """The error bodies Gemini sends for a bad key, missing credentials, no permission, unknown model."""
    if mode == "invalid_key":
        message = "API key not valid. Please pass a valid API key."
        return 400, google_error(400, "INVALID_ARGUMENT", message, [
            {"@type": RPC + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": RPC + "LocalizedMessage", "locale": "en-US", "message": message}])
    if mode == "401":
        return 401, google_error(401, "UNAUTHENTICATED", (
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
            "valid authentication credential."), [
            {"@type": RPC + "ErrorInfo", "reason": "CREDENTIALS_MISSING", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com", "method": "GenerateContent"}}])
    if mode == "403":
        # Gemini names the consumer, key included, in this message: clients must not echo it.
        return 403, google_error(403, "PERMISSION_DENIED", f"Permission denied: Consumer 'api_key:{api_key}' "
                                 "has been suspended.", [
            {"@type": RPC + "ErrorInfo", "reason": "CONSUMER_SUSPENDED", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}}])
    return 404, google_error(404, "NOT_FOUND", (
        f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods."))
