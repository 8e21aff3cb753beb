"""The versioned probing-factor template set shipped in the package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

DEFAULT_VERSION = "v1"


@dataclass(frozen=True)
class Factor:
    category: str
    template: str
    hint: str


@dataclass(frozen=True)
class TemplateSet:
    version: str
    factors: tuple[Factor, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(f.category for f in self.factors)

    def get(self, category: str) -> Factor:
        for f in self.factors:
            if f.category == category:
                return f
        raise KeyError(f"no probing factor {category!r} in template set {self.version}")


@lru_cache(maxsize=None)
def load_templates(version: str = DEFAULT_VERSION) -> TemplateSet:
    path = resources.files("vlmprobe.teacher") / "factor_templates" / f"{version}.json"
    if not path.is_file():
        raise ValueError(f"unknown probing-factor template set {version!r}")
    data = json.loads(path.read_text())
    return TemplateSet(data["version"], tuple(Factor(**f) for f in data["factors"]))
