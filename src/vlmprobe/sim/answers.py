"""Schema-driven answers: the simulator's synthetic reply to a prompt, not Gemini's.

:func:`answer_text` writes JSON valid against the request's response schema (the OpenAPI subset
or a JSON schema with ``$defs``/``$ref``), or plain text without one, from an RNG seeded by the
request body and the simulator's seed: the same body and seed give the same answer. For
vlmprobe's own prompts the answers look plausible (a factor that fits the question, yes/no and
multiple-choice QA), so failure keys repeat the way real ones do.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

from vlmprobe.sim.protocol import lookup

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

# Question words → the factor the simulator blames (vlmprobe's v1 categories).
_QUESTION_FACTORS = (
    (("color", "colour"), "color"),
    (("how many", "count", "number of"), "count"),
    (("left", "right", "top", "bottom", "above", "below", "next to"), "spatial_relation"),
    (("shape", "which"), "shape"),
    (("read", "text", "say"), "text"),
    (("big", "small", "large", "size"), "size"),
)
# Endings of yes/no questions about a factor's value: "Is the {value} {probe}?".
_YES_NO_PROBES = ("on the left", "larger than the others", "red", "fully visible", "at the top", "blue")


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
        all_of = lookup(schema, "allOf")
        if all_of:
            merged = {k: v for k, v in schema.items() if k not in ("allOf", "all_of")}
            for sub in all_of:
                sub = self._resolve(sub)
                props = {**(lookup(merged, "properties") or {}), **(lookup(sub, "properties") or {})}
                required = [*(lookup(merged, "required") or []), *(lookup(sub, "required") or [])]
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
        enum = lookup(schema, "enum")
        if enum:
            if name == "category" and (self.question or self.category is not None):
                return self._category_for_question(list(enum))
            return self.rng.choice(list(enum))
        options = lookup(schema, "anyOf") or lookup(schema, "oneOf")
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
            props = lookup(option, "properties") or {}
            enum = lookup(self._resolve(props.get("category")), "enum") if "category" in props else None
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
        if lookup(schema, "properties") is not None:
            return "object"
        if "items" in schema:
            return "array"
        if lookup(schema, "nullable"):
            return "null"  # google-genai sends a recursive field as a bare {"nullable": true}
        return "string"

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = lookup(schema, "properties") or {}
        declared = [p for p in (lookup(schema, "propertyOrdering") or []) if p in properties]
        declared += [p for p in properties if p not in declared]
        required = set(lookup(schema, "required") or ())
        out: dict[str, Any] = {}
        for name in sorted(declared, key=lambda p: _FIELD_ORDER.get(p, len(_FIELD_ORDER))):
            if depth + 1 >= _MAX_DEPTH and name not in required:
                continue  # keeps recursive schemas finite
            out[name] = self.value(properties[name], name, depth + 1, out)
        return {name: out[name] for name in declared if name in out}

    def _array(self, schema: dict[str, Any], name: str, depth: int, siblings: dict[str, Any]) -> list[Any]:
        min_items = lookup(schema, "minItems")
        max_items = lookup(schema, "maxItems")
        low = int(min_items) if min_items is not None else (0 if depth + 1 >= _MAX_DEPTH else 1)
        high = int(max_items) if max_items is not None else max(low, 3)
        low = min(low, high)
        items = self._resolve(schema.get("items", {"type": "string"}))
        answer_type = siblings.get("answer_type")
        if name in ("choices", "options") and self._type(items) == "string" and not lookup(items, "enum"):
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
        low, high = lookup(schema, "minimum"), lookup(schema, "maximum")
        ex_low, ex_high = lookup(schema, "exclusiveMinimum"), lookup(schema, "exclusiveMaximum")
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
        fmt = lookup(schema, "format")
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
        min_len, max_len = lookup(schema, "minLength"), lookup(schema, "maxLength")
        while min_len is not None and len(text) < int(min_len):
            text += " " + self._pick_words(1, 2)
        return text[: int(max_len)] if max_len is not None else text


_LENGTH_KEYS = frozenset({"maxOutputTokens", "max_output_tokens", "thinkingConfig", "thinking_config"})


def answer_text(body: dict[str, Any], prompt: str, seed: int, verify_true_rate: float) -> str:
    """The model's reply: JSON valid against the request's schema, or plain text without one."""
    config = lookup(body, "generationConfig") or {}
    schema = lookup(config, "responseJsonSchema") or lookup(config, "responseSchema")
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
    if lookup(config, "responseMimeType") == "application/json":
        return json.dumps({"text": writer._string({}, "text", {})})
    return f"Simulated reply about {writer._pick_words(3, 6)}."
