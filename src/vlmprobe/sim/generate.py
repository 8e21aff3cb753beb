"""generateContent: one request, from its body to the simulator's answer.

:func:`generate_content` is the route (``POST /v1beta/models/{model}:generateContent``, also
``/v1``); :func:`generate` answers request ``number`` and logs it. The order of the steps is
the behaviour: a forced failure or unknown model answers at once; then the request's RNG draws
its latency jitter, the body is read (400 if Gemini would refuse it), the rpm/tpm/rpd quotas
admit it or answer 429, the latency is slept, a request that names a service tier meets it
(:mod:`vlmprobe.sim.tiers`: flex waits longer or is shed), the fault is drawn, the older success
quota is taken, and the answer is written (thinking tokens reported unless the request turns
thinking off), then cut or withheld as the fault and ``maxOutputTokens`` say. A request that
named a tier gets the tier served in the ``x-gemini-service-tier`` header.

:func:`answer_body` writes the answer of a request that reached the model (the generateContent
answer without quotas, latency or the fault plan): the Batch API (:mod:`vlmprobe.sim.batch`)
answers each request of a job with it, so a job's answer is the one generateContent gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import time
from typing import TYPE_CHECKING, Any

from vlmprobe.sim import faults, tiers
from vlmprobe.sim.answers import answer_text
from vlmprobe.sim.protocol import RawBody, google_error, json_body, lookup, usage
from vlmprobe.sim.quota import model_quota_error, quota_error
from vlmprobe.sim.request import BadRequest, read_prompt

if TYPE_CHECKING:
    from vlmprobe.sim.server import GeminiSimulator

logger = logging.getLogger(__name__)

PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):generateContent$")


def generate_content(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """The route: counts the request (its number seeds its faults), answers it, and counts its status."""
    model = match.group(2)
    number = sim.counters.begin(model)
    try:
        status, payload = generate(sim, number, model, raw, api_key)
    except Exception:
        logger.exception("The simulator failed on request %d", number)
        status, payload = 500, google_error(500, "INTERNAL", "The simulator failed; see its log.")
    sim.counters.end(status)  # counted before the client can see the answer and ask /stats
    return status, payload


def generate(sim: GeminiSimulator, number: int, model: str, raw: bytes, api_key: str = "") -> tuple[int, Any]:
    """Status and payload for request ``number``, logged with its outcome; sleeps for its latency
    first (quota and forced errors answer at once)."""
    arrived = time.time()
    try:
        body = json.loads(raw or b"null")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    except ValueError:
        body, digest = None, hashlib.sha256(raw).hexdigest()
    config = (lookup(body, "generationConfig") or {}) if isinstance(body, dict) else {}
    max_output = lookup(config, "maxOutputTokens") if isinstance(config, dict) else None
    entry: dict[str, Any] = {"n": number, "time": round(arrived, 6), "model": model, "sha256": digest,
                             "prompt_tokens": None, "max_output_tokens": max_output}
    status, payload, outcome = _answer(sim, number, model, body, api_key, entry)
    entry.update(status=status, outcome=outcome)
    sim.requests.append(entry)
    served = entry.get("service_tier")
    if served is not None and not isinstance(payload, RawBody):
        payload = json_body(payload, {tiers.SERVED_TIER_HEADER: served})
    return status, payload


def _answer(sim: GeminiSimulator, number: int, model: str, body: Any, api_key: str,
            entry: dict[str, Any]) -> tuple[int, Any, str]:
    """Status, payload and outcome (ok, a fault, or what refused it) of one request."""
    if sim.fail is not None:
        status, payload = faults.fail_error(sim.fail, model, api_key)
        return status, payload, f"fail_{sim.fail}"
    if sim.models is not None and model not in sim.models:
        status, payload = faults.fail_error("404", model, api_key)
        return status, payload, "unknown_model"
    rng = faults.request_rng(sim.seed, number)
    jitter = faults.latency_jitter(rng)
    try:
        if body is None:
            raise ValueError("not JSON")
        prompt, media = read_prompt(body, model)
    except (ValueError, BadRequest) as e:
        message = str(e) if isinstance(e, BadRequest) else "Invalid JSON payload received."
        return 400, google_error(400, "INVALID_ARGUMENT", message), "bad_request"
    prompt_tokens = math.ceil(len(prompt) / 4) + media
    entry["prompt_tokens"] = prompt_tokens
    refused = sim.quotas.admit(model, prompt_tokens, rpm=sim.rpm, tpm=sim.tpm, rpd=sim.rpd,
                               window_s=sim.quota_window_s)
    if refused is not None:
        quota, limit, delay = refused
        sim.counters.rejected(quota)
        return 429, quota_error(quota, model, limit, delay), f"quota_{quota}"

    if sim.latency_ms:
        time.sleep(sim.latency_ms * jitter / 1000.0)
    tier = tiers.asked_tier(body)
    if tier is not None:
        entry["service_tier"], shed = tiers.serve(sim, number, tier)
        if shed is not None:
            return (*shed, "flex_shed")
    fault = faults.draw_fault(rng, sim.fault_rates())
    early = faults.fault_answer(fault, model, number, prompt_tokens, sim.retry_delay_s)
    if early is not None:
        if fault == "blocked":
            sim.counters.add_tokens(prompt_tokens, 0)
        return (*early, fault)
    if not sim.counters.reserve_success(model, sim.quota):
        sim.counters.rejected("quota")
        return 429, model_quota_error(model, sim.quota), "quota"

    payload, outcome, output_tokens, thoughts = answer_body(sim, body, prompt, prompt_tokens, model, rng, fault,
                                                            f"sim-{number}")
    sim.counters.add_tokens(prompt_tokens, output_tokens, thoughts)
    return 200, payload, outcome


def answer_body(sim: GeminiSimulator, body: dict[str, Any], prompt: str, prompt_tokens: int, model: str,
                rng: random.Random, fault: str | None, response_id: str) -> tuple[dict[str, Any], str, int, int]:
    """The 200 answer to a request that reached the model: its payload, outcome (ok, malformed,
    max_tokens, safety), output and thinking tokens. ``rng`` draws the thinking tokens (unless
    the request turns thinking off); ``fault`` (malformed, max_tokens, safety, or None) shapes it."""
    text = answer_text(body, prompt, sim.seed, sim.verify_true_rate)
    config = lookup(body, "generationConfig") or {}
    config = config if isinstance(config, dict) else {}
    thinking = lookup(config, "thinkingConfig")
    budget = lookup(thinking, "thinkingBudget") if isinstance(thinking, dict) else None
    # No thinkingBudget: the model thinks as it likes; 0: not at all (then no third draw).
    thoughts = 0 if budget == 0 else rng.randint(64, 512)
    if isinstance(budget, int) and budget > 0:
        thoughts = min(thoughts, budget)
    finish, outcome = "STOP", "ok"
    if fault == "malformed":
        text, outcome = faults.truncate(text), "malformed"
    output_tokens = max(1, math.ceil(len(text) / 4))
    limit = lookup(config, "maxOutputTokens")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    if fault == "max_tokens" or (limit is not None and thoughts + output_tokens > limit):
        # Thinking counts against maxOutputTokens, as on Gemini 2.5: the answer gets what is left.
        if limit is not None:
            thoughts = min(thoughts, limit)
        room = limit - thoughts if limit is not None else output_tokens // 2
        text = _cut_off(text, room * 4)
        output_tokens = math.ceil(len(text) / 4)
        finish, outcome = "MAX_TOKENS", "max_tokens"
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]},
                                 "finishReason": finish, "index": 0}
    if fault == "safety":
        output_tokens, thoughts, outcome = 0, 0, "safety"
        candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": faults.SAFETY_RATINGS}
    return {
        "candidates": [candidate],
        "usageMetadata": usage(prompt_tokens, output_tokens, thoughts),
        "modelVersion": model,
        "responseId": response_id,
    }, outcome, output_tokens, thoughts


def _cut_off(text: str, chars: int) -> str:
    """The first ``chars`` characters of a JSON text, never a complete JSON value (as Gemini cuts an
    answer off at max_output_tokens)."""
    cut = text[: max(chars, 0)]
    if len(cut) >= len(text):
        cut = text[:-1]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return cut[:-1] if len(cut) > 1 else ""
