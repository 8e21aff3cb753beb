"""Gemini simulator: a Gemini-compatible HTTP server on loopback, for tests, benchmarks and the demo.

This is a simulator, not Gemini. It answers ``POST /v1beta/models/{model}:generateContent``
(and ``/v1/...``) the way the Gemini Developer API does, closely enough for the real
google-genai client: it reads ``contents`` (text and ``inlineData`` parts) and the response
schema from ``generationConfig`` (``responseSchema`` in the OpenAPI subset, with upper-case
types and the snake_case keys google-genai 3.6.1 sends, or ``responseJsonSchema`` with
``$defs``/``$ref``), and answers schema-valid JSON generated from a seeded RNG: the same body
and seed give the same answer. ``GET /stats`` returns the counters as JSON.

Faults are injected per request number from the seed, so a test is reproducible: latency with
±50% jitter, HTTP 429 with a ``RetryInfo`` delay, 503, 200 with truncated JSON, SAFETY and
MAX_TOKENS answers, a blocked prompt, a 200 that is not JSON. Quotas are enforced the way Gemini
does: requests and input tokens per rolling minute and requests per day, each 429 naming its
quota (QuotaFailure) with a RetryInfo; an older per-model quota caps successful answers. Forced
modes answer every request with Gemini's bodies for a bad key (400 API_KEY_INVALID), 401, 403 or
an unknown model (404). Thinking tokens are reported unless the request turns thinking off.
``GET /requests`` returns the request log (a SHA-256 of each body, its status and outcome), so a
test can count repeats of the same request.

A request without an ``x-goog-api-key`` header is refused with 403; the key's value is never
logged or stored. Stdlib only; it binds loopback addresses only.

Run it with ``vlmprobe gemini-sim`` or ``python -m vlmprobe.sim.server``; in tests use
``with GeminiSimulator(port=0) as sim: ... sim.base_url``. Safe to restart at any time: it keeps
no state besides its counters, quota windows and request log.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import socket
import socketserver
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_GENERATE_PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):generateContent$")
_MEDIA_PREFIXES = ("image/", "video/", "audio/", "text/", "application/pdf")
TOKENS_PER_IMAGE = 258  # per image up to 384 px on both sides, and per 384 px tile of a larger one
TILE_SIDE = 384
_MAX_DEPTH = 8
_STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out has him his how its may new now "
    "see two who did get let put say she too use this that with from have what when where which while "
    "your into than then them they there these those will would could should about above below image "
    "json answer return only each given between".split()
)
_FALLBACK_WORDS = ("red", "blue", "green", "left", "right", "small", "large", "two", "three", "indoors")
# Siblings depend on these: the answer type decides the choices, the choices decide the answer.
_FIELD_ORDER = {"answer_type": 0, "choices": 1, "answer": 2}


# --------------------------------------------------------------------------------- counters


class SimStats:
    """Thread-safe counters of the simulator's generateContent requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.successes_by_model: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.thinking_tokens = 0
        self.quota_rejections: Counter[str] = Counter()  # 429s by quota: rpm, tpm, rpd, quota

    def begin(self, model: str) -> int:
        """Count a request's arrival; returns its number (0-based), which seeds its faults."""
        with self._lock:
            number = self.requests
            self.requests += 1
            self.by_model[model] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return number

    def end(self, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.by_status[str(status)] += 1

    def reserve_success(self, model: str, quota: int | None) -> bool:
        """Take one of the model's successful answers; False once its quota is spent."""
        with self._lock:
            if quota is not None and self.successes_by_model[model] >= quota:
                return False
            self.successes_by_model[model] += 1
            return True

    def add_tokens(self, prompt: int, output: int, thinking: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.output_tokens += output
            self.thinking_tokens += thinking

    def rejected(self, quota: str) -> None:
        with self._lock:
            self.quota_rejections[quota] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "by_model": dict(self.by_model),
                "successes_by_model": dict(self.successes_by_model),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
                "thinking_tokens": self.thinking_tokens,
                "quota_rejections": dict(self.quota_rejections),
            }


# ------------------------------------------------------------------- schema-driven answers


# Question words → the factor the simulator blames (vlmprobe's v1 categories).
_QUESTION_FACTORS = (
    (("color", "colour"), "color"),
    (("how many", "count", "number of"), "count"),
    (("left", "right", "top", "bottom", "above", "below", "next to"), "spatial_relation"),
    (("shape", "which"), "shape"),
    (("read", "text", "say"), "text"),
    (("big", "small", "large", "size"), "size"),
)


_YES_NO_PROBES = ("on the left", "larger than the others", "red", "fully visible", "at the top", "blue")


def _key(schema: dict[str, Any], name: str) -> Any:
    """``schema[name]`` for a camelCase keyword, also found under its snake_case spelling."""
    if name in schema:
        return schema[name]
    return schema.get(re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())


def _words(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in re.findall(r"[A-Za-z][A-Za-z-]{2,}", text):
        word = word.lower().strip("-")
        if word not in _STOPWORDS and len(word) <= 20:
            seen.setdefault(word, None)
    return list(seen)


class _AnswerWriter:
    """Generates one schema-valid value from a seeded RNG and the prompt's words."""

    def __init__(self, rng: random.Random, root: dict[str, Any], prompt: str, verify_true_rate: float) -> None:
        self.rng = rng
        self.root = root
        self.prompt_words = _words(prompt) or list(_FALLBACK_WORDS)
        self.verify_true_rate = verify_true_rate
        question = re.search(r"^Question: (.*)$", prompt, re.M)
        self.question = question.group(1) if question else ""
        # vlmprobe's factor prompt lists templates as: - category: "template" (hint)
        self.templates = dict(re.findall(r'^- (\w+): "([^"]*)"', prompt, re.M))
        # vlmprobe's QA prompt names the failure as: Factor category:value: completion
        factor = re.search(r"^Factor (\w+):(\w+):", prompt, re.M)
        self.factor = (factor.group(1), factor.group(2).replace("_", " ")) if factor else None
        self.asked: set[str] = set()  # yes/no probes already used in this answer
        self.category: Any = None  # the factor category chosen for this answer's anyOf branch, if any

    def _category_for_question(self, enum: list[Any]) -> Any:
        """A plausible probing factor for the prompt's question, so failure keys repeat like real ones."""
        if self.category is not None and self.category in enum:
            return self.category  # already chosen with the branch (see _branch)
        q = self.question.lower()
        for words, category in _QUESTION_FACTORS:
            if category in enum and any(w in q for w in words) and self.rng.random() < 0.8:
                return category
        return self.rng.choice(list(enum))

    def _resolve(self, schema: Any) -> dict[str, Any]:
        if not isinstance(schema, dict):
            return {}
        for _ in range(32):
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                break
            target: Any = self.root
            for part in ref.lstrip("#").strip("/").split("/"):
                if part:
                    target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        all_of = _key(schema, "allOf")
        if all_of:
            merged = {k: v for k, v in schema.items() if k not in ("allOf", "all_of")}
            for sub in all_of:
                sub = self._resolve(sub)
                props = {**(_key(merged, "properties") or {}), **(_key(sub, "properties") or {})}
                required = [*(_key(merged, "required") or []), *(_key(sub, "required") or [])]
                merged = {**merged, **sub, "properties": props, "required": required}
            schema = merged
        return schema

    def _factor_question(self, answer_type: Any) -> str:
        """A question about the failure's factor, shaped like the answer type asks for."""
        category, value = self.factor
        if answer_type == "yes_no":
            left = [p for p in _YES_NO_PROBES if p not in self.asked] or list(_YES_NO_PROBES)
            probe = self.rng.choice(left)
            self.asked.add(probe)
            return f"Is the {value} {probe}?"
        ask = {"color": "What color is the", "count": "How many are there of the", "shape": "What shape is the",
               "spatial_relation": "Where is the", "size": "How large is the"}.get(category, "What is notable about the")
        return f"{ask} {value}?"

    def _pick_words(self, low: int, high: int) -> str:
        k = min(self.rng.randint(low, high), len(self.prompt_words))
        return " ".join(self.rng.sample(self.prompt_words, k))

    def value(self, schema: Any, name: str = "", depth: int = 0, siblings: dict[str, Any] | None = None) -> Any:
        schema = self._resolve(schema)
        siblings = siblings if siblings is not None else {}
        deep = depth >= _MAX_DEPTH
        if "const" in schema:
            return schema["const"]
        enum = _key(schema, "enum")
        if enum:
            if name == "category" and (self.question or self.category is not None):
                return self._category_for_question(list(enum))
            return self.rng.choice(list(enum))
        options = _key(schema, "anyOf") or _key(schema, "oneOf")
        if options:
            options = [self._resolve(o) for o in options]
            non_null = [o for o in options if self._type(o) != "null"]
            if not non_null or (deep and len(non_null) < len(options)):
                return None
            return self.value(self._branch(non_null), name, depth, siblings)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth, siblings)
        if kind == "boolean":
            rate = self.verify_true_rate if name in ("verified", "supported") else 0.5
            return self.rng.random() < rate
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "null":
            return None
        return self._string(schema, name, siblings)

    def _branch(self, options: list[dict[str, Any]]) -> dict[str, Any]:
        """The anyOf branch to answer with.

        vlmprobe's factor schema is an anyOf of flat objects, each with a ``category`` enum (one
        branch for the open categories, one per closed category with a ``value`` enum). A branch
        drawn at random would make the closed categories (one branch each) most of the answers;
        instead the category is chosen first, as for a flat schema, then the branch that allows it.
        """
        enums = []
        for option in options:
            props = _key(option, "properties") or {}
            enum = _key(self._resolve(props.get("category")), "enum") if "category" in props else None
            if not enum:
                return self.rng.choice(options)  # not a schema of category branches
            enums.append(list(enum))
        categories = list(dict.fromkeys(c for enum in enums for c in enum))
        self.category = self._category_for_question(categories)
        return next(o for o, enum in zip(options, enums) if self.category in enum)

    @staticmethod
    def _type(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):  # JSON schema: ["string", "null"]
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        if kind:
            return str(kind).lower()
        if _key(schema, "properties") is not None:
            return "object"
        if "items" in schema:
            return "array"
        if _key(schema, "nullable"):
            return "null"  # google-genai sends a recursive field as a bare {"nullable": true}
        return "string"

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = _key(schema, "properties") or {}
        declared = [p for p in (_key(schema, "propertyOrdering") or []) if p in properties]
        declared += [p for p in properties if p not in declared]
        required = set(_key(schema, "required") or ())
        out: dict[str, Any] = {}
        for name in sorted(declared, key=lambda p: _FIELD_ORDER.get(p, len(_FIELD_ORDER))):
            if depth + 1 >= _MAX_DEPTH and name not in required:
                continue  # keeps recursive schemas finite
            out[name] = self.value(properties[name], name, depth + 1, out)
        return {name: out[name] for name in declared if name in out}

    def _array(self, schema: dict[str, Any], name: str, depth: int, siblings: dict[str, Any]) -> list[Any]:
        min_items = _key(schema, "minItems")
        max_items = _key(schema, "maxItems")
        low = int(min_items) if min_items is not None else (0 if depth + 1 >= _MAX_DEPTH else 1)
        high = int(max_items) if max_items is not None else max(low, 3)
        low = min(low, high)
        items = self._resolve(schema.get("items", {"type": "string"}))
        answer_type = siblings.get("answer_type")
        if name in ("choices", "options") and self._type(items) == "string" and not _key(items, "enum"):
            # Only an explicit minItems forces choices on yes/no and open questions.
            floor = min(int(min_items or 0), high)
            if answer_type == "yes_no":
                return ["yes", "no"][:floor] + [f"option {i}" for i in range(3, floor + 1)]
            want = self.rng.randint(3, 4) if answer_type in (None, "multiple_choice") else 0
            count = max(floor, min(high, want))
            pool = self.prompt_words + [w for w in _FALLBACK_WORDS if w not in self.prompt_words]
            return self.rng.sample(pool, min(count, len(pool)))
        count = self.rng.randint(low, high)
        return [self.value(items, name, depth + 1, {}) for _ in range(count)]

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        low, high = _key(schema, "minimum"), _key(schema, "maximum")
        ex_low, ex_high = _key(schema, "exclusiveMinimum"), _key(schema, "exclusiveMaximum")
        if isinstance(ex_low, (int, float)) and not isinstance(ex_low, bool):
            low = ex_low + (1 if integer else 1e-3)
        if isinstance(ex_high, (int, float)) and not isinstance(ex_high, bool):
            high = ex_high - (1 if integer else 1e-3)
        if low is None:
            low = 0 if high is None or high >= 0 else high - 10
        if high is None:
            high = low + (10 if integer else 1)
        if integer:
            return self.rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
        return min(max(round(self.rng.uniform(low, high), 3), low), high)

    def _string(self, schema: dict[str, Any], name: str, siblings: dict[str, Any]) -> str:
        if name == "answer":
            choices = siblings.get("choices")
            if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
                return self.rng.choice(choices)
            if siblings.get("answer_type") == "yes_no":
                return self.rng.choice(["yes", "no"])
            if siblings.get("answer_type") == "open":
                return self._pick_words(1, 2)  # short answers, as the prompt asks
        fmt = _key(schema, "format")
        if fmt in ("date-time", "date"):
            day = f"2026-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}"
            return day if fmt == "date" else f"{day}T{self.rng.randint(0, 23):02d}:00:00Z"
        if name == "value":  # fills a template's blank: one word keeps failure keys few and readable
            the = re.search(r"\bthe ([A-Za-z]+)", self.question)  # "the circle": the question's subject
            subject = [the.group(1).lower()] if the else _words(self.question)
            return subject[-1] if subject else self._pick_words(1, 1)
        template = self.templates.get(siblings.get("category", ""))
        if name == "completion" and template and isinstance(siblings.get("value"), str):
            return template.replace("{value}", siblings["value"])
        if name == "question" and self.factor:
            return self._factor_question(siblings.get("answer_type"))
        label = name.replace("_", " ").strip() or "text"
        text = f"{label}: {self._pick_words(2, 4)}"
        if name == "completion" and isinstance(siblings.get("value"), str):
            text = f"{text} ({siblings['value']})"
        if "question" in name:
            text += "?"
        min_len, max_len = _key(schema, "minLength"), _key(schema, "maxLength")
        while min_len is not None and len(text) < int(min_len):
            text += " " + self._pick_words(1, 2)
        return text[: int(max_len)] if max_len is not None else text


# --------------------------------------------------------------------------- the request


class _BadRequest(Exception):
    """The body is not a request Gemini would accept: answered 400 INVALID_ARGUMENT."""


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, JPEG or WEBP header; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] == b"GIF8" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + length
    return None


def media_tokens(data: bytes) -> int:
    """Input tokens of one media part: 258 per 384 px tile of an image, 258 for anything else."""
    size = _image_size(data)
    if size is None or (size[0] <= TILE_SIDE and size[1] <= TILE_SIDE):
        return TOKENS_PER_IMAGE
    return TOKENS_PER_IMAGE * math.ceil(size[0] / TILE_SIDE) * math.ceil(size[1] / TILE_SIDE)


def _read_prompt(body: Any) -> tuple[str, int]:
    """The request's text (contents and system instruction) and the input tokens of its media parts."""
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
    texts: list[str] = []
    media = 0
    system = _key(body, "systemInstruction")
    blocks = [*contents, *([system] if isinstance(system, dict) else [])]
    for block in blocks:
        parts = block.get("parts") if isinstance(block, dict) else None
        if not isinstance(parts, list) or not parts:
            raise _BadRequest("* GenerateContentRequest.contents.parts: contents.parts must not be empty.")
        for part in parts:
            if not isinstance(part, dict):
                raise _BadRequest("Each part must be a JSON object.")
            inline = _key(part, "inlineData")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(inline, dict):
                mime = str(_key(inline, "mimeType") or "")
                if not mime.startswith(_MEDIA_PREFIXES):
                    raise _BadRequest(f"Unsupported MIME type: {mime or '(none)'}")
                try:
                    # google-genai sends URL-safe base64 (-_), other clients the standard one (+/).
                    data = str(inline.get("data", "")).replace("-", "+").replace("_", "/")
                    decoded = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    raise _BadRequest("Invalid value at 'contents.parts.inline_data.data': not base64.") from None
                media += media_tokens(decoded)
            elif isinstance(_key(part, "fileData"), dict):
                media += TOKENS_PER_IMAGE
            else:
                raise _BadRequest("A part must hold text, inlineData or fileData.")
    return "\n".join(texts), media


_LENGTH_KEYS = frozenset({"maxOutputTokens", "max_output_tokens", "thinkingConfig", "thinking_config"})


def _answer_text(body: dict[str, Any], prompt: str, seed: int, verify_true_rate: float) -> str:
    """The model's reply: JSON valid against the request's schema, or plain text without one."""
    config = _key(body, "generationConfig") or {}
    schema = _key(config, "responseJsonSchema") or _key(config, "responseSchema")
    # The answer does not depend on how long it may be or how much the model may think: a retry
    # with a larger max_output_tokens gets the same answer, whole.
    content = dict(body)
    for key in ("generationConfig", "generation_config"):
        if isinstance(content.get(key), dict):
            content[key] = {k: v for k, v in content[key].items() if k not in _LENGTH_KEYS}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode() + f"|{seed}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    writer = _AnswerWriter(rng, schema if isinstance(schema, dict) else {}, prompt, verify_true_rate)
    if isinstance(schema, dict):
        return json.dumps(writer.value(schema))
    if _key(config, "responseMimeType") == "application/json":
        return json.dumps({"text": writer._string({}, "text", {})})
    return f"Simulated reply about {writer._pick_words(3, 6)}."


def _truncate(text: str) -> str:
    """Cut a JSON text so that it no longer parses, as a reply cut off mid-generation would."""
    cut = text[: max(1, len(text) // 2)]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return cut + ","


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


def _google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


_RPC = "type.googleapis.com/google.rpc."
_RATE_LIMITS_HELP = {"@type": _RPC + "Help", "links": [
    {"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}
# The quotas as Gemini names them in a 429's QuotaFailure: (quotaMetric, quotaId).
QUOTA_NAMES = {
    "rpm": ("generativelanguage.googleapis.com/generate_content_paid_tier_requests",
            "GenerateRequestsPerMinutePerProjectPerModel"),
    "tpm": ("generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
            "GenerateContentPaidTierInputTokensPerModelPerMinute"),
    "rpd": ("generativelanguage.googleapis.com/generate_content_paid_tier_requests",
            "GenerateRequestsPerDayPerProjectPerModel"),
}
FAIL_MODES = ("invalid_key", "401", "403", "404")


def _retry_delay(seconds: float) -> str:
    return f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".") + "s"


def _quota_error(quota: str, model: str, limit: int, delay_s: float) -> dict[str, Any]:
    """A 429 as Gemini words it: the quota's metric and id in a QuotaFailure, and a RetryInfo."""
    metric, quota_id = QUOTA_NAMES[quota]
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
        f"* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\n"
        f"Please retry in {delay_s:.2f}s."
    )
    violation = {"quotaMetric": metric, "quotaId": quota_id,
                 "quotaDimensions": {"location": "global", "model": model}, "quotaValue": str(limit)}
    return _google_error(429, "RESOURCE_EXHAUSTED", message, [
        {"@type": _RPC + "QuotaFailure", "violations": [violation]}, _RATE_LIMITS_HELP,
        {"@type": _RPC + "RetryInfo", "retryDelay": _retry_delay(delay_s)}])


def _fail_error(mode: str, model: str, api_key: str) -> tuple[int, dict[str, Any]]:
    """The error bodies Gemini sends for a bad key, missing credentials, no permission, unknown model."""
    if mode == "invalid_key":
        message = "API key not valid. Please pass a valid API key."
        return 400, _google_error(400, "INVALID_ARGUMENT", message, [
            {"@type": _RPC + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": _RPC + "LocalizedMessage", "locale": "en-US", "message": message}])
    if mode == "401":
        return 401, _google_error(401, "UNAUTHENTICATED", (
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
            "valid authentication credential."), [
            {"@type": _RPC + "ErrorInfo", "reason": "CREDENTIALS_MISSING", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com", "method": "GenerateContent"}}])
    if mode == "403":
        # Gemini names the consumer, key included, in this message: clients must not echo it.
        return 403, _google_error(403, "PERMISSION_DENIED", f"Permission denied: Consumer 'api_key:{api_key}' "
                                  "has been suspended.", [
            {"@type": _RPC + "ErrorInfo", "reason": "CONSUMER_SUSPENDED", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}}])
    return 404, _google_error(404, "NOT_FOUND", (
        f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods."))


def _usage(prompt_tokens: int, output_tokens: int, thinking_tokens: int) -> dict[str, int]:
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
             "totalTokenCount": prompt_tokens + output_tokens + thinking_tokens}
    if thinking_tokens:
        usage["thoughtsTokenCount"] = thinking_tokens
    return usage


_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
]
NON_JSON_BODY = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>upstream hiccup</body></html>"


class _Raw:
    """A response body that is not JSON (the simulated non-JSON 200)."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data, self.content_type = data, content_type


# ---------------------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Google's front end
    server_version = "GeminiSimulator/1"
    timeout = 60  # an idle keep-alive connection closes after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib line carries the raw request line (query string included); we log our own.
        pass

    def _send_json(self, code: int, payload: Any, path: str) -> None:
        raw = payload if isinstance(payload, _Raw) else _Raw(json.dumps(payload).encode(), "application/json; charset=UTF-8")
        logger.debug("%s %s -> %d", self.command, path, code)  # before the client can see the answer
        self.send_response(code)
        self.send_header("Content-Type", raw.content_type)
        self.send_header("Content-Length", str(len(raw.data)))
        self.end_headers()
        self.wfile.write(raw.data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/stats":
            self._send_json(200, self.server.sim.stats(), path)
        elif path == "/requests":
            self._send_json(200, {"requests": self.server.sim.request_log()}, path)
        else:
            self._send_json(404, _google_error(404, "NOT_FOUND", f"No route for GET {path}."), path)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = _GENERATE_PATH.match(path)
        if not match:
            message = f"No route for POST {path}; the simulator answers models/{{model}}:generateContent."
            self._send_json(404, _google_error(404, "NOT_FOUND", message), path)
            return
        api_key = self.headers.get("x-goog-api-key")
        if not api_key:
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            self._send_json(403, _google_error(403, "PERMISSION_DENIED", message), path)
            return
        sim = self.server.sim
        model = match.group(2)
        number = sim.counters.begin(model)
        try:
            status, payload = sim._generate(number, model, raw, api_key)
        except Exception:
            logger.exception("The simulator failed on request %d", number)
            status, payload = 500, _google_error(500, "INTERNAL", "The simulator failed; see its log.")
        sim.counters.end(status)  # counted before the client can see the answer and ask /stats
        self._send_json(status, payload, path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a burst of 100+ new connections must not overflow the backlog
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: GeminiSimulator) -> None:
        self.sim = sim
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout, shutdown) is routine here, not a traceback on stderr.
        logger.debug("Connection from %s ended with an error", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock the handler threads that wait on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(
        f"The Gemini simulator only binds loopback addresses (127.0.0.1, ::1 or localhost), not {host!r}: "
        "it is a test double with no real authentication and must not be reachable from other machines."
    )


class GeminiSimulator:
    """A Gemini-compatible server in a background thread; use it as a context manager.

    ``latency_ms`` is the mean latency (uniform jitter ±50%). Seeded faults, each a fraction of
    requests: ``rate_429`` (a 429 with a ``RetryInfo`` of ``retry_delay_s``), ``rate_503``,
    ``rate_malformed`` (a 200 whose JSON is cut off), ``rate_safety`` (finish reason SAFETY, no
    text), ``rate_blocked`` (the prompt blocked: no candidates, ``promptFeedback.blockReason``),
    ``rate_max_tokens`` (finish MAX_TOKENS, text cut off) and ``rate_non_json`` (a 200 whose
    body is an HTML page). A request whose ``maxOutputTokens`` is below its answer (thinking
    included) is cut off with MAX_TOKENS too. Thinking tokens (``thoughtsTokenCount``) are
    reported unless the request's ``thinkingBudget`` is 0.

    Quotas per model, as Gemini enforces them: ``rpm`` requests and ``tpm`` input tokens per
    rolling ``quota_window_s`` (60 s), answered 429 with a QuotaFailure naming the quota and a
    RetryInfo saying when a slot frees; ``rpd`` requests per day (the simulator never reaches
    midnight), whose 429 names ``GenerateRequestsPerDayPerProjectPerModel``. Requests refused by
    a quota do not count against it. ``quota`` (older) caps successful answers per model, then
    answers 429 without ``RetryInfo``. ``fail`` forces every request to one error: ``invalid_key``
    (400 API_KEY_INVALID), ``401``, ``403``, ``404``; ``models`` (when given) lists the models
    that exist, others get the 404.

    Every generateContent request is logged (:meth:`request_log`, ``GET /requests``, and
    appended to ``request_log`` as JSONL when given) with a SHA-256 of its body (JSON,
    canonicalised), so a test can count how often the same request was sent. Faults depend only
    on ``seed`` and the request's number; answers only on ``seed`` and the request body.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 0.0,
        rate_429: float = 0.0,
        retry_delay_s: float = 0.2,
        rate_503: float = 0.0,
        rate_malformed: float = 0.0,
        rate_safety: float = 0.0,
        rate_blocked: float = 0.0,
        rate_max_tokens: float = 0.0,
        rate_non_json: float = 0.0,
        quota: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        rpd: int | None = None,
        quota_window_s: float = 60.0,
        fail: str | None = None,
        models: list[str] | tuple[str, ...] | set[str] | None = None,
        request_log: str | os.PathLike[str] | None = None,
        verify_true_rate: float = 0.85,
        seed: int = 0,
    ) -> None:
        self.host = _loopback_host(host)
        rates = {"rate_429": rate_429, "rate_503": rate_503, "rate_malformed": rate_malformed,
                 "rate_safety": rate_safety, "rate_blocked": rate_blocked, "rate_max_tokens": rate_max_tokens,
                 "rate_non_json": rate_non_json}
        for name, rate in {**rates, "verify_true_rate": verify_true_rate}.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}.")
        if sum(rates.values()) > 1.0:
            raise ValueError(f"the fault rates ({', '.join(rates)}) must add up to at most 1, got {sum(rates.values())}.")
        if latency_ms < 0 or retry_delay_s < 0:
            raise ValueError("latency_ms and retry_delay_s must not be negative.")
        for name, value in (("quota", quota), ("rpm", rpm), ("tpm", tpm), ("rpd", rpd)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be None (unlimited) or >= 0, got {value}.")
        if quota_window_s <= 0:
            raise ValueError(f"quota_window_s must be > 0, got {quota_window_s}.")
        if fail is not None and fail not in FAIL_MODES:
            raise ValueError(f"fail must be one of {', '.join(FAIL_MODES)}, got {fail!r}.")
        self.requested_port = port
        self.latency_ms = latency_ms
        self.rate_429 = rate_429
        self.retry_delay_s = retry_delay_s
        self.rate_503 = rate_503
        self.rate_malformed = rate_malformed
        self.rate_safety = rate_safety
        self.rate_blocked = rate_blocked
        self.rate_max_tokens = rate_max_tokens
        self.rate_non_json = rate_non_json
        self.quota = quota
        self.rpm, self.tpm, self.rpd = rpm, tpm, rpd
        self.quota_window_s = quota_window_s
        self.fail = fail
        self.models = frozenset(models) if models is not None else None
        self.request_log_path = Path(request_log) if request_log is not None else None
        self.verify_true_rate = verify_true_rate
        self.seed = seed
        self.counters = SimStats()
        self._quota_lock = threading.Lock()
        self._windows: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._days: Counter[str] = Counter()
        self._log_lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> GeminiSimulator:
        if self._server is not None:
            raise RuntimeError("The simulator is already running.")
        self._server = _Server((self.host, self.requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="gemini-sim", daemon=True
        )
        self._thread.start()
        logger.info("Gemini simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> GeminiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("The simulator is not running: call start() or use it in a with block.")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The counters (requests, by status, by model, in flight, tokens, quota 429s) as a JSON-able dict."""
        return self.counters.snapshot()

    def request_log(self) -> list[dict[str, Any]]:
        """Every generateContent request so far: number ``n``, arrival ``time`` (epoch s), ``model``,
        ``status``, ``outcome`` (ok, a fault, or the quota that refused it), ``sha256`` of the body,
        its ``prompt_tokens`` and ``max_output_tokens``."""
        with self._log_lock:
            return [dict(entry) for entry in self._log]

    def _record(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            self._log.append(entry)
            if self.request_log_path is not None:
                with open(self.request_log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")

    # -- one request

    _FAULTS = ("429", "503", "malformed", "safety", "blocked", "max_tokens", "non_json")

    def planned_fault(self, number: int) -> str | None:
        """The fault planned for request ``number`` (0-based): one of "429", "503", "malformed",
        "safety", "blocked", "max_tokens", "non_json", or None.

        Quota 429s, forced failures and 400s for bad requests come on top of this plan.
        """
        faults = random.Random(f"{self.seed}:{number}")
        faults.uniform(0.5, 1.5)  # the latency draw comes first, as in _generate
        return self._fault(faults)

    def _fault(self, faults: random.Random) -> str | None:
        draw = faults.random()
        for fault in self._FAULTS:
            edge = getattr(self, f"rate_{fault}")
            if draw < edge:
                return fault
            draw -= edge
        return None

    def _admit(self, model: str, prompt_tokens: int) -> tuple[str, int, float] | None:
        """Count the request against the model's quotas; (quota, limit, retry delay) when one refuses it."""
        with self._quota_lock:
            now = time.monotonic()
            window = self._windows[model]
            while window and window[0][0] <= now - self.quota_window_s:
                window.popleft()
            if self.rpd is not None and self._days[model] >= self.rpd:
                return "rpd", self.rpd, 43.0  # Gemini's RetryInfo on a daily 429 is short: it is no promise
            if self.rpm is not None and len(window) >= self.rpm:
                return "rpm", self.rpm, window[0][0] + self.quota_window_s - now if window else self.quota_window_s
            if self.tpm is not None:
                used = sum(tokens for _, tokens in window)
                if used + prompt_tokens > self.tpm:
                    freed, delay = used + prompt_tokens - self.tpm, self.quota_window_s
                    for at, tokens in window:  # when enough of the window's tokens have left it
                        freed -= tokens
                        if freed <= 0:
                            delay = at + self.quota_window_s - now
                            break
                    return "tpm", self.tpm, delay
            window.append((now, prompt_tokens))
            self._days[model] += 1
            return None

    def _generate(self, number: int, model: str, raw: bytes, api_key: str = "") -> tuple[int, Any]:
        """Status and payload for request ``number``; sleeps for its latency first (quota and forced
        errors answer at once)."""
        arrived = time.time()
        try:
            body = json.loads(raw or b"null")
            digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        except ValueError:
            body, digest = None, hashlib.sha256(raw).hexdigest()
        config = (_key(body, "generationConfig") or {}) if isinstance(body, dict) else {}
        max_output = _key(config, "maxOutputTokens") if isinstance(config, dict) else None
        entry: dict[str, Any] = {"n": number, "time": round(arrived, 6), "model": model, "sha256": digest,
                                 "prompt_tokens": None, "max_output_tokens": max_output}
        status, payload, outcome = self._answer(number, model, body, api_key, entry)
        entry.update(status=status, outcome=outcome)
        self._record(entry)
        return status, payload

    def _answer(self, number: int, model: str, body: Any, api_key: str,
                entry: dict[str, Any]) -> tuple[int, Any, str]:
        if self.fail is not None:
            status, payload = _fail_error(self.fail, model, api_key)
            return status, payload, f"fail_{self.fail}"
        if self.models is not None and model not in self.models:
            status, payload = _fail_error("404", model, api_key)
            return status, payload, "unknown_model"
        faults = random.Random(f"{self.seed}:{number}")
        jitter = faults.uniform(0.5, 1.5)
        try:
            if body is None:
                raise ValueError("not JSON")
            prompt, media = _read_prompt(body)
        except (ValueError, _BadRequest) as e:
            message = str(e) if isinstance(e, _BadRequest) else "Invalid JSON payload received."
            return 400, _google_error(400, "INVALID_ARGUMENT", message), "bad_request"
        prompt_tokens = math.ceil(len(prompt) / 4) + media
        entry["prompt_tokens"] = prompt_tokens
        refused = self._admit(model, prompt_tokens)
        if refused is not None:
            quota, limit, delay = refused
            self.counters.rejected(quota)
            return 429, _quota_error(quota, model, limit, delay), f"quota_{quota}"

        if self.latency_ms:
            time.sleep(self.latency_ms * jitter / 1000.0)
        fault = self._fault(faults)
        if fault == "429":
            retry_info = {"@type": _RPC + "RetryInfo", "retryDelay": f"{self.retry_delay_s:g}s"}
            message = "Resource has been exhausted (e.g. check quota). Simulated rate limit."
            return 429, _google_error(429, "RESOURCE_EXHAUSTED", message, [retry_info]), "429"
        if fault == "503":
            return 503, _google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), "503"
        if fault == "non_json":
            return 200, _Raw(NON_JSON_BODY, "text/html; charset=UTF-8"), "non_json"
        if fault == "blocked":
            self.counters.add_tokens(prompt_tokens, 0)
            return 200, {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _SAFETY_RATINGS},
                         "usageMetadata": _usage(prompt_tokens, 0, 0), "modelVersion": model,
                         "responseId": f"sim-{number}"}, "blocked"
        if not self.counters.reserve_success(model, self.quota):
            message = f"Quota exceeded for metric: generate_content_requests, limit: {self.quota}, model: {model}."
            self.counters.rejected("quota")
            return 429, _google_error(429, "RESOURCE_EXHAUSTED", message), "quota"

        text = _answer_text(body, prompt, self.seed, self.verify_true_rate)
        config = _key(body, "generationConfig") or {}
        config = config if isinstance(config, dict) else {}
        thinking = _key(config, "thinkingConfig")
        budget = _key(thinking, "thinkingBudget") if isinstance(thinking, dict) else None
        # No thinkingBudget: the model thinks as it likes; 0: not at all.
        thoughts = 0 if budget == 0 else faults.randint(64, 512)
        if isinstance(budget, int) and budget > 0:
            thoughts = min(thoughts, budget)
        finish, outcome = "STOP", "ok"
        if fault == "malformed":
            text, outcome = _truncate(text), "malformed"
        output_tokens = max(1, math.ceil(len(text) / 4))
        limit = _key(config, "maxOutputTokens")
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
            candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": _SAFETY_RATINGS}
        self.counters.add_tokens(prompt_tokens, output_tokens, thoughts)
        return 200, {
            "candidates": [candidate],
            "usageMetadata": _usage(prompt_tokens, output_tokens, thoughts),
            "modelVersion": model,
            "responseId": f"sim-{number}",
        }, outcome


# ----------------------------------------------------------------------- process entry


def _write_port_file(path: str | os.PathLike[str], port: int) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, target)  # a reader never sees a half-written file


def serve(host: str = "127.0.0.1", port: int = 8765, port_file: str | os.PathLike[str] | None = None, **options: Any) -> None:
    """Serve until SIGINT or SIGTERM (call from the main thread).

    ``port=0`` picks a free port; the chosen port is written to ``port_file`` when given, and
    the file is removed on exit. ``options`` are :class:`GeminiSimulator`'s keyword arguments.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with GeminiSimulator(host, port, **options) as sim:
            if port_file is not None:
                _write_port_file(port_file, sim.port)
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                if port_file is not None:
                    Path(port_file).unlink(missing_ok=True)
            logger.info("Gemini simulator stopping: %s", json.dumps(sim.stats()))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vlmprobe gemini-sim`` flags."""
    parser.add_argument("--host", default="127.0.0.1", help="Loopback address to bind (default: %(default)s).")
    parser.add_argument("--port", type=int, default=8765, help="Port; 0 picks a free one (default: %(default)s).")
    parser.add_argument("--port-file", default=None, help="Write the chosen port to this file once listening.")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="Mean latency per request, ±50%% jitter.")
    parser.add_argument("--rate-429", type=float, default=0.0, help="Fraction of requests answered 429 with RetryInfo.")
    parser.add_argument("--retry-delay", type=float, default=0.2, help="RetryInfo delay of those 429s, in seconds.")
    parser.add_argument("--rate-503", type=float, default=0.0, help="Fraction of requests answered 503 UNAVAILABLE.")
    parser.add_argument("--rate-malformed", type=float, default=0.0, help="Fraction answered 200 with cut-off JSON.")
    parser.add_argument("--rate-safety", type=float, default=0.0, help="Fraction answered with finish reason SAFETY.")
    parser.add_argument("--rate-blocked", type=float, default=0.0, help="Fraction whose prompt is blocked (no candidates).")
    parser.add_argument("--rate-max-tokens", type=float, default=0.0, help="Fraction cut off with finish MAX_TOKENS.")
    parser.add_argument("--rate-non-json", type=float, default=0.0, help="Fraction answered 200 with an HTML page.")
    parser.add_argument("--quota", type=int, default=None, help="Successful answers per model before every request is a 429.")
    parser.add_argument("--rpm", type=int, default=None, help="Requests per model per rolling minute; more get a 429.")
    parser.add_argument("--tpm", type=int, default=None, help="Input tokens per model per rolling minute; more get a 429.")
    parser.add_argument("--rpd", type=int, default=None, help="Requests per model per day; more get a per-day 429.")
    parser.add_argument("--quota-window", type=float, default=60.0, help="Length of the per-minute window, seconds.")
    parser.add_argument("--fail", choices=FAIL_MODES, default=None,
                        help="Answer every request with this error: 400 API_KEY_INVALID, 401, 403 or 404.")
    parser.add_argument("--models", default=None, help="Comma-separated models that exist; others get a 404.")
    parser.add_argument("--request-log", default=None, help="Append each request (body hash, status) to this JSONL file.")
    parser.add_argument("--verify-true-rate", type=float, default=0.85, help="Chance a 'verified'/'supported' field is true.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of answers and faults (default: %(default)s).")


def main(args: argparse.Namespace) -> int:
    """Run the simulator from parsed ``add_arguments`` flags; returns the exit status."""
    try:
        serve(
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            latency_ms=args.latency_ms,
            rate_429=args.rate_429,
            retry_delay_s=args.retry_delay,
            rate_503=args.rate_503,
            rate_malformed=args.rate_malformed,
            rate_safety=args.rate_safety,
            rate_blocked=args.rate_blocked,
            rate_max_tokens=args.rate_max_tokens,
            rate_non_json=args.rate_non_json,
            quota=args.quota,
            rpm=args.rpm,
            tpm=args.tpm,
            rpd=args.rpd,
            quota_window_s=args.quota_window,
            fail=args.fail,
            models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
            request_log=args.request_log,
            verify_true_rate=args.verify_true_rate,
            seed=args.seed,
        )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    from vlmprobe.log import setup_logging

    setup_logging()
    _parser = argparse.ArgumentParser(prog="python -m vlmprobe.sim.server", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
