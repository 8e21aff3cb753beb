"""Record shapes shared by the steps: failure keys, ids and error rows.

A failure key is ``category:value`` from a controlled vocabulary, so one failure mode is one
key. The value is normalised: Unicode NFKC, lowercase, words of letters and digits only,
leading articles dropped, the last word (the head noun) put in the singular, word synonyms and
phrase synonyms declared by the template set mapped to their canonical form. A category with a
closed vocabulary (``values`` in the template set) maps any other value to ``other``; an
unknown category becomes ``other``. ``count:circles``, ``Count: the Circles.`` and
``count:circle`` are one key: ``count:circle``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_NON_WORD = re.compile(r"[^a-z0-9]+")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
_ARTICLES = ("the", "a", "an")
OTHER = "other"


def normalize_key_part(text: str) -> str:
    """Lowercase, runs of non-alphanumerics → ``_``: ``"Light Blue "`` → ``light_blue``."""
    return _NON_WORD.sub("_", str(text).lower()).strip("_") or "unknown"


def _words(text: Any) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", str(text)).lower())


def _singular(word: str) -> str:
    import inflection

    # Short words ("gas", "bus", "is") and words ending like singulars are where rule-based
    # singularisation goes wrong; they are left as they are.
    if len(word) <= 3 or not word.isalpha() or word.endswith(("ss", "us", "is")):
        return word
    return inflection.singularize(word)


@dataclass(frozen=True)
class KeyVocabulary:
    """Failure-key normalisation for one template set (see the module docstring)."""

    version: str
    categories: frozenset[str]
    closed: dict[str, frozenset[str]]  # category -> allowed values (normalised)
    phrase_synonyms: dict[str, dict[str, str]]  # category -> variant phrase -> canonical
    word_synonyms: dict[str, str]  # variant word -> canonical word
    invariant: frozenset[str]
    no_singular: frozenset[str]  # categories whose values are kept in number (text, other)

    def category(self, raw: Any) -> str:
        cat = normalize_key_part(raw)
        return cat if cat in self.categories else OTHER

    def value(self, category: str, raw: Any) -> str:
        """The canonical value (words joined by ``_``) of ``raw`` for a normalised ``category``."""
        phrase = _canon(raw, category not in self.no_singular, self.word_synonyms, self.invariant)
        phrase = self.phrase_synonyms.get(category, {}).get(phrase, phrase)
        allowed = self.closed.get(category)
        if allowed is not None and phrase not in allowed:
            phrase = OTHER
        return phrase.replace(" ", "_") or "unknown"

    def key(self, category: Any, value: Any) -> str:
        cat = self.category(category)
        return f"{cat}:{self.value(cat, value)}"


def _canon(raw: Any, singularize: bool, word_synonyms: dict[str, str], invariant: frozenset[str]) -> str:
    """Words of ``raw``, leading articles dropped, word synonyms mapped, the last word singular."""
    words = _words(raw)
    while len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    words = [word_synonyms.get(w, w) for w in words]
    if words and singularize and words[-1] not in invariant:
        last = _singular(words[-1])
        words[-1] = word_synonyms.get(last, last)
    return " ".join(words)


def _plain(text: str) -> str:
    return " ".join(_words(text))


@lru_cache(maxsize=None)
def vocabulary(version: str = "v1") -> KeyVocabulary:
    """The key vocabulary of template set ``version`` (cached)."""
    from vlmprobe.teacher.templates import load_templates

    ts = load_templates(version)
    word_syn = {_plain(v): _plain(canon) for canon, variants in ts.word_synonyms.items() for v in variants}
    invariant = frozenset(_plain(w) for w in ts.invariant_words)
    phrases: dict[str, dict[str, str]] = {}
    closed: dict[str, frozenset[str]] = {}
    for f in ts.factors:
        def canon(text: str, f=f) -> str:  # declared forms go through the same steps as values
            return _canon(text, f.singularize, word_syn, invariant)

        phrases[f.category] = {canon(v): canon(c) for c, variants in f.synonyms.items() for v in variants}
        if f.closed:
            closed[f.category] = frozenset(canon(v) for v in f.values) | {OTHER}
    return KeyVocabulary(ts.version, frozenset(ts.categories), closed, phrases, word_syn, invariant,
                         frozenset(f.category for f in ts.factors if not f.singularize))




def failure_key(category: str, value: str, template_version: str = "v1") -> str:
    """``category:value`` from the template set's controlled vocabulary, e.g. ``count:small_square``."""
    return vocabulary(template_version).key(category, value)


def key_category(key: str) -> str:
    """The category part of a failure key."""
    return key.split(":", 1)[0]


def stable_id(*parts: Any, length: int = 16) -> str:
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]


def row_id(uri: str, row: int, given: Any = None) -> str:
    """The row's own ``id`` when it has one, else a stable id from its file and row number."""
    return str(given) if given not in (None, "") else stable_id(uri, row)


def error_record(step: str, reason: str, detail: str, **where: Any) -> dict[str, Any]:
    """An error row: which step, a short machine-friendly reason, a sentence, and where it came from."""
    return {"step": step, "reason": reason, "detail": detail[:2000], **where}
