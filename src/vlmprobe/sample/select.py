"""Which failures the sample keeps: bottom-k per failure key by a seeded hash, in flat memory.

Every failure gets a 64-bit hash of its *identity* — its failure key and image (file + row) —
keyed by the seed. Per key the ``k`` smallest hashes are kept (bottom-k: a uniform sample
without replacement that depends only on the set of failures and the seed, never on file
order, rank count or completion order). Copies of one identity share a hash, so a duplicate
(same image, same key) is kept once; the copy kept is the one whose line hashes smallest.

Memory: a candidate is one Python int packing (hash, line hash, file, offset, length, estimated
tokens, copy mode, duplicates) — about 60 bytes — and a key holds at most ``k`` plus a little slack of them, so
memory grows with keys × ``k``, not with the number of failures. The records themselves are
read again later, by offset (:mod:`vlmprobe.sample.run`).

Accounting (every record lands in exactly one count): ``kept`` identities, ``duplicates``
(extra copies of kept identities), ``over_cap`` (records whose identity is past the key's
``k``), ``below_min_per_key`` (records of keys with fewer than ``min_per_key`` distinct
failures), ``over_category_cap`` (records of identities cut by ``max_per_category``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from vlmprobe.records import key_category

_TB, _FILE, _OFF, _LEN, _TOK, _MODE, _DUP = 32, 16, 40, 24, 20, 2, 24
MAX_FILES, MAX_OFFSET, MAX_LINE, MAX_TOKENS = 1 << _FILE, 1 << _OFF, 1 << _LEN, (1 << _TOK) - 1
_MODE_SHIFT = _DUP
_TOK_SHIFT = _MODE_SHIFT + _MODE
_LEN_SHIFT = _TOK_SHIFT + _TOK
_OFF_SHIFT = _LEN_SHIFT + _LEN
_FILE_SHIFT = _OFF_SHIFT + _OFF
_TB_SHIFT = _FILE_SHIFT + _FILE
_H_SHIFT = _TB_SHIFT + _TB


def identity_hash(seed_key: bytes, failure_key: str, image: object, record_id: object) -> int:
    """The seeded 64-bit hash of a failure's identity: key + image reference (or id without one)."""
    if isinstance(image, dict) and "uri" in image and "row" in image:
        ident = f"{failure_key}\x1f{image['uri']}\x1f{image['row']}"
    else:
        ident = f"{failure_key}\x1fid\x1f{record_id}"
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8, key=seed_key).digest(), "big")


def line_hash(line: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(line, digest_size=4).digest(), "big")


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
    def unpack(cls, packed: int) -> Candidate:
        return cls(packed >> _H_SHIFT, (packed >> _FILE_SHIFT) & (MAX_FILES - 1),
                   (packed >> _OFF_SHIFT) & (MAX_OFFSET - 1), (packed >> _LEN_SHIFT) & (MAX_LINE - 1),
                   (packed >> _TOK_SHIFT) & MAX_TOKENS, (packed >> _MODE_SHIFT) & 3, packed & ((1 << _DUP) - 1))


def pack(h: int, tb: int, file: int, offset: int, length: int, tokens: int = 0, mode: int = 0, dups: int = 0) -> int:
    if not (file < MAX_FILES and offset < MAX_OFFSET and length < MAX_LINE):
        raise ValueError(f"record out of range: file #{file}, offset {offset}, {length} bytes")
    return (h << _H_SHIFT) | (tb << _TB_SHIFT) | (file << _FILE_SHIFT) | (offset << _OFF_SHIFT) \
        | (length << _LEN_SHIFT) | (min(tokens, MAX_TOKENS) << _TOK_SHIFT) | ((mode & 3) << _MODE_SHIFT) \
        | min(dups, (1 << _DUP) - 1)


class _Key:
    __slots__ = ("items", "seen", "threshold", "rejected")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.seen = 0
        self.threshold: int | None = None  # the k-th smallest distinct hash, once there are k
        self.rejected = 0  # records past the cap (duplicates of rejected identities included)


class KeySampler:
    """Bottom-``k`` per failure key over a stream of (key, hash, location) in any order."""

    def __init__(self, k: int, slack: int | None = None) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.slack = slack if slack is not None else max(8, k // 4)
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
        state.items.append(pack(h, tb, file, offset, length, tokens, mode))
        if len(state.items) > self.k + self.slack:
            self._compact(state)

    def _compact(self, state: _Key) -> None:
        """Sort, merge copies of one identity, keep the ``k`` smallest hashes."""
        items = sorted(state.items)
        merged: list[int] = []
        for packed in items:
            if merged and (merged[-1] >> _H_SHIFT) == (packed >> _H_SHIFT):
                extra = 1 + (packed & ((1 << _DUP) - 1))
                last = merged[-1]
                dups = min((last & ((1 << _DUP) - 1)) + extra, (1 << _DUP) - 1)
                merged[-1] = (last & ~((1 << _DUP) - 1)) | dups
            else:
                merged.append(packed)
        for packed in merged[self.k:]:
            state.rejected += 1 + (packed & ((1 << _DUP) - 1))
        state.items = merged[:self.k]
        if len(state.items) == self.k:
            state.threshold = state.items[-1] >> _H_SHIFT

    def finish(self) -> None:
        for state in self.keys.values():
            self._compact(state)

    def selection(self, min_per_key: int = 1, max_per_category: int = 0) -> Selection:
        """The final choice, after :meth:`finish`: candidates per key, and what was left out why."""
        self.finish()
        sel = Selection()
        per_category: dict[str, list[str]] = defaultdict(list)
        for key in sorted(self.keys):
            state = self.keys[key]
            sel.seen[key] = state.seen
            sel.over_cap[key] = state.rejected
            # distinct < min_per_key <= k means nothing was ever rejected: len(items) is exact
            if state.rejected == 0 and len(state.items) < min_per_key:
                sel.below_min[key] = state.seen
                continue
            per_category[key_category(key)].append(key)
            sel.kept[key] = state.items
        if max_per_category:
            for keys in per_category.values():
                # round-robin over the category's keys in hash order: the i-th pick of every key
                # before any key's (i+1)-th, so a capped category stays balanced across its keys
                ranked = sorted((i, packed >> _H_SHIFT, key) for key in keys
                                for i, packed in enumerate(sel.kept[key]))
                cut = {(key, i) for i, _, key in ranked[max_per_category:]}
                for key in keys:
                    keep, drop = [], 0
                    for i, packed in enumerate(sel.kept[key]):
                        if (key, i) in cut:
                            drop += 1 + (packed & ((1 << _DUP) - 1))
                        else:
                            keep.append(packed)
                    sel.kept[key] = keep
                    if drop:
                        sel.over_category_cap[key] = drop
        return sel


class Selection:
    """The sample, by key (candidates in hash order), and per-key counts of what was left out."""

    def __init__(self) -> None:
        self.kept: dict[str, list[int]] = {}
        self.seen: dict[str, int] = {}
        self.over_cap: dict[str, int] = {}
        self.below_min: dict[str, int] = {}
        self.over_category_cap: dict[str, int] = {}

    def candidates(self) -> Iterator[tuple[str, Candidate]]:
        """(key, candidate) in output order: keys sorted, then by hash."""
        for key in sorted(self.kept):
            for packed in self.kept[key]:
                yield key, Candidate.unpack(packed)

    def duplicates(self, key: str) -> int:
        return sum(p & ((1 << _DUP) - 1) for p in self.kept.get(key, ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self.kept.values())
