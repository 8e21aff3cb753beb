"""The versioned probing-factor template set shipped in the package.

A set declares, per factor, its template and hint and optionally a closed vocabulary
(``values``) and ``synonyms``; set-wide ``word_synonyms`` and ``invariant_words`` feed the
normalisation of failure keys (:mod:`vlmprobe.records`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

DEFAULT_VERSION = "v1"


@dataclass(frozen=True)
class Factor:
    category: str
    template: str
    hint: str
    values: tuple[str, ...] = ()  # a closed vocabulary; empty = any value
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # canonical -> variants
    singularize: bool = True  # the value's last word is put in the singular

    @property
    def closed(self) -> bool:
        return bool(self.values)


@dataclass(frozen=True)
class TemplateSet:
    version: str
    factors: tuple[Factor, ...]
    word_synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    invariant_words: frozenset[str] = frozenset()

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(f.category for f in self.factors)

    def get(self, category: str) -> Factor:
        for f in self.factors:
            if f.category == category:
                return f
        raise KeyError(f"no probing factor {category!r} in template set {self.version}")


def _factor(d: dict[str, Any]) -> Factor:
    return Factor(d["category"], d["template"], d["hint"], tuple(d.get("values", ())),
                  {k: tuple(v) for k, v in d.get("synonyms", {}).items()}, bool(d.get("singularize", True)))


@lru_cache(maxsize=None)
def load_templates(version: str = DEFAULT_VERSION) -> TemplateSet:
    path = resources.files("vlmprobe.teacher") / "factor_templates" / f"{version}.json"
    if not path.is_file():
        raise ValueError(f"unknown probing-factor template set {version!r}")
    data = json.loads(path.read_text())
    return TemplateSet(data["version"], tuple(_factor(f) for f in data["factors"]),
                       {k: tuple(v) for k, v in data.get("word_synonyms", {}).items()},
                       frozenset(data.get("invariant_words", ())))
