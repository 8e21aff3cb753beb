"""Which failures the sample keeps: bottom-k per failure key by a seeded hash, in flat memory.

Every failure gets a 48-bit hash of its *identity* — its failure key and image (file + row) —
keyed by the seed. Per key the ``k`` smallest hashes are kept (bottom-k: a uniform sample
without replacement that depends only on the set of failures and the seed, never on file
order, rank count or completion order). Copies of one identity share a hash, so a duplicate
(same image, same key) is kept once; the copy kept is the one whose line hashes smallest.

Memory: a candidate is three 64-bit words in an ``array`` — (identity hash, line hash),
(file, offset, copy mode), (length, estimated tokens, duplicates) — 24 bytes, and a key holds
at most ``k`` plus a little slack of them, so memory grows with keys × ``k``, not with the
number of failures. The records themselves are read again later, by offset
(:mod:`vlmprobe.sample.run`).

Accounting (every record lands in exactly one count): ``kept`` identities, ``duplicates``
(extra copies of kept identities), ``over_cap`` (records whose identity is past the key's
``k``), ``below_min_per_key`` (records of keys with fewer than ``min_per_key`` distinct
failures), ``over_category_cap`` (records of identities cut by ``max_per_category``).
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from vlmprobe.records import key_category

# word 0: identity hash (48 bits) | line hash (16 bits)
# word 1: file (16) | offset (40) | copy mode (2)
# word 2: length (24) | estimated tokens (20) | duplicates (20)
MAX_FILES, MAX_OFFSET, MAX_LINE = 1 << 16, 1 << 40, 1 << 24
MAX_TOKENS, MAX_DUPS = (1 << 20) - 1, (1 << 20) - 1


def identity_hash(seed_key: bytes, failure_key: str, image: object, record_id: object) -> int:
    """The seeded 48-bit hash of a failure's identity: key + image reference (or id without one)."""
    if isinstance(image, dict) and "uri" in image and "row" in image:
        ident = f"{failure_key}\x1f{image['uri']}\x1f{image['row']}"
    else:
        ident = f"{failure_key}\x1fid\x1f{record_id}"
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=6, key=seed_key).digest(), "big")


def line_hash(line: bytes) -> int:
    """16 bits that tell copies of one failure apart by content (which copy is kept)."""
    return zlib.crc32(line) & 0xFFFF


@dataclass(frozen=True)
class Candidate:
    """A failure chosen so far: its hash and where its record lies."""

    hash: int
    file: int
    offset: int
    length: int
    tokens: int  # the record's estimated request tokens
    mode: int  # how pass 2 copies the record (see vlmprobe.sample.run)
    duplicates: int

    @classmethod
    def unpack(cls, w0: int, w1: int, w2: int) -> Candidate:
        return cls(w0 >> 16, w1 >> 48, (w1 >> 2) & (MAX_OFFSET - 1), w2 >> 40, (w2 >> 20) & MAX_TOKENS, w1 & 3,
                   w2 & MAX_DUPS)


class _Key:
    __slots__ = ("words", "seen", "threshold", "rejected")

    def __init__(self) -> None:
        self.words = array("Q")  # three words per candidate
        self.seen = 0
        self.threshold: int | None = None  # the k-th smallest distinct hash, once there are k
        self.rejected = 0  # records past the cap (duplicates of rejected identities included)

    def __len__(self) -> int:
        return len(self.words) // 3

    def triples(self) -> list[tuple[int, int, int]]:
        w = self.words
        return [(w[i], w[i + 1], w[i + 2]) for i in range(0, len(w), 3)]


class KeySampler:
    """Bottom-``k`` per failure key over a stream of (key, hash, location) in any order."""

    def __init__(self, k: int, slack: int | None = None) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.slack = slack if slack is not None else max(8, k // 4)
        self._limit = 3 * (k + self.slack)
        self.keys: dict[str, _Key] = {}

    def add(self, key: str, h: int, tb: int, file: int, offset: int, length: int, tokens: int = 0,
            mode: int = 0) -> None:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = _Key()
        state.seen += 1
        if state.threshold is not None and h > state.threshold:
            state.rejected += 1
            return
        if not (file < MAX_FILES and offset < MAX_OFFSET and length < MAX_LINE):
            raise ValueError(f"record out of range: file #{file}, offset {offset}, {length} bytes")
        words = state.words
        words.append((h << 16) | (tb & 0xFFFF))  # the three words of the layout above
        words.append((file << 48) | (offset << 2) | (mode & 3))
        words.append((length << 40) | (min(tokens, MAX_TOKENS) << 20))
        if len(words) > self._limit:
            self._compact(state)

    def _compact(self, state: _Key) -> None:
        """Sort, merge copies of one identity, keep the ``k`` smallest hashes."""
        merged: list[list[int]] = []
        for w0, w1, w2 in sorted(state.triples()):
            if merged and merged[-1][0] >> 16 == w0 >> 16:
                last = merged[-1]
                last[2] = (last[2] & ~MAX_DUPS) | min((last[2] & MAX_DUPS) + 1 + (w2 & MAX_DUPS), MAX_DUPS)
            else:
                merged.append([w0, w1, w2])
        for _, _, w2 in merged[self.k:]:
            state.rejected += 1 + (w2 & MAX_DUPS)
        state.words = array("Q", (w for t in merged[:self.k] for w in t))
        if len(state) == self.k:
            state.threshold = merged[self.k - 1][0] >> 16

    def finish(self) -> None:
        for state in self.keys.values():
            self._compact(state)

    def selection(self, min_per_key: int = 1, max_per_category: int = 0, max_total: int | None = None) -> Selection:
        """The final choice, after :meth:`finish`: candidates per key, and what was left out why.

        ``max_total``: at most this many candidates in all (QA's reservation), balanced across keys."""
        self.finish()
        sel = Selection()
        per_category: dict[str, list[str]] = defaultdict(list)
        for key in sorted(self.keys):
            state = self.keys[key]
            sel.seen[key] = state.seen
            sel.over_cap[key] = state.rejected
            # distinct < min_per_key <= k means nothing was ever rejected: len(state) is exact
            if state.rejected == 0 and len(state) < min_per_key:
                sel.below_min[key] = state.seen
                continue
            per_category[key_category(key)].append(key)
            sel.kept[key] = state.words
        if max_per_category:
            for keys in per_category.values():
                _cap(sel, keys, max_per_category, sel.over_category_cap)
        if max_total is not None:
            _cap(sel, list(sel.kept), max_total, sel.over_total_cap)
        return sel


def _cap(sel: Selection, keys: list[str], limit: int, dropped: dict[str, int]) -> None:
    """Keep at most ``limit`` candidates of ``keys``, round-robin in hash order: the i-th pick of
    every key before any key's (i+1)-th, so the capped keys stay balanced; ``dropped`` counts the
    rest (duplicates of a dropped candidate included) per key."""
    ranked = sorted((i // 3, sel.kept[key][i] >> 16, key) for key in keys for i in range(0, len(sel.kept[key]), 3))
    cut = {(key, i) for i, _, key in ranked[limit:]}
    if not cut:
        return
    for key in keys:
        words, keep, drop = sel.kept[key], array("Q"), 0
        for i in range(0, len(words), 3):
            if (key, i // 3) in cut:
                drop += 1 + (words[i + 2] & MAX_DUPS)
            else:
                keep.extend(words[i:i + 3])
        sel.kept[key] = keep
        if drop:
            dropped[key] = dropped.get(key, 0) + drop


class Selection:
    """The sample, by key (candidates in hash order), and per-key counts of what was left out."""

    def __init__(self) -> None:
        self.kept: dict[str, array] = {}  # three words per candidate, as _Key holds them
        self.seen: dict[str, int] = {}
        self.over_cap: dict[str, int] = {}
        self.below_min: dict[str, int] = {}
        self.over_category_cap: dict[str, int] = {}
        self.over_total_cap: dict[str, int] = {}  # left out: more than QA's reservation pays for

    def candidates(self) -> Iterator[tuple[str, Candidate]]:
        """(key, candidate) in output order: keys sorted, then by hash."""
        for key in sorted(self.kept):
            w = self.kept[key]
            for i in range(0, len(w), 3):
                yield key, Candidate.unpack(w[i], w[i + 1], w[i + 2])

    def count(self, key: str) -> int:
        return len(self.kept.get(key, ())) // 3

    def duplicates(self, key: str) -> int:
        w = self.kept.get(key, ())
        return sum(w[i] & MAX_DUPS for i in range(2, len(w), 3))

    def __len__(self) -> int:
        return sum(len(v) for v in self.kept.values()) // 3
