"""Step 2: stream step 1's verified failures, keep up to ``samples_per_key`` per failure key.

Reads the failure files named in ``probe/_SUCCESS.json`` (never a glob, so a stale file from an
earlier attempt cannot mix in), keeps a seeded reservoir per ``failure_key``, and writes
``sample/failures.jsonl`` (or ``failures.json``, one array, with ``error_output_format=json``)
and ``sample/shards.json``. With ``embed_images`` each record carries its image as base64;
otherwise only its reference. Records whose image cannot be embedded go to
``errors/sample.jsonl`` with the reason. Failures over a key's cap are counted, not kept.

Memory holds at most ``samples_per_key`` records per key. Safe to rerun: outputs are replaced.
"""

from __future__ import annotations

import base64
import logging
import random
from collections import defaultdict
from typing import Any

from vlmprobe.config import SampleConfig
from vlmprobe.io import JsonlWriter, RunLayout, exists, iter_jsonl, read_json, write_json
from vlmprobe.io.fs import remove_file
from vlmprobe.records import error_record
from vlmprobe.rundate import derive_seed

log = logging.getLogger("vlmprobe.sample")
EMBED_CHUNK = 512  # records whose images are read and written together


class Reservoir:
    """Uniform sample of at most ``k`` items from a stream (Algorithm R), seeded."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seen, self.items = k, 0, []
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)
        if j < self.k:
            self.items[j] = item


def plan_shards(total: int, num_shards: int) -> list[dict[str, int]]:
    """Contiguous, near-equal slices ``[start, stop)``; never an empty shard."""
    n = min(num_shards, total)
    base, extra = divmod(total, n) if n else (0, 0)
    shards, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        shards.append({"shard_index": i, "start": start, "stop": start + size, "count": size})
        start += size
    return shards


def _embed(records: list[dict[str, Any]], errors: JsonlWriter, run_date: str) -> list[dict[str, Any]]:
    """Copies of ``records`` with base64 image bytes, reading each file's rows once.

    A record whose image cannot be read goes to ``errors`` with the reason instead.
    """
    from vlmprobe.io.parquet import cell_image_bytes, read_cells

    def fail(r: dict[str, Any], detail: str) -> None:
        errors.write(error_record("sample", "image_unreadable", detail, id=r["id"], image=r["image"],
                                  failure_key=r["failure_key"], run_date=run_date))

    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_file[r["image"]["uri"]].append(r)
    embedded: dict[int, dict[str, Any]] = {}
    for uri, recs in by_file.items():
        try:
            cells = read_cells(uri, [r["image"]["row"] for r in recs], ["image"])
        except Exception as e:  # the whole file is unreadable now: each record gets the reason
            for r in recs:
                fail(r, f"{uri}: {e}")
            continue
        for r in recs:
            try:
                data = cell_image_bytes(cells, r["image"]["row"], uri)
            except (ValueError, OSError) as e:
                fail(r, str(e))
                continue
            embedded[id(r)] = {**r, "image_b64": base64.b64encode(data).decode("ascii")}
    return [embedded[id(r)] for r in records if id(r) in embedded]


def sample_keys(cfg: SampleConfig) -> dict[str, Any]:
    """Run step 2; returns the shard plan, as written to ``sample/shards.json`` less ``per_key``."""
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    if not exists(layout.probe_success):
        raise FileNotFoundError(
            f"{layout.probe_success} is missing: step 1 (probe) has not finished for run date "
            f"{cfg.run_date}; run or rerun probe first")
    success = read_json(layout.probe_success)

    reservoirs: dict[str, Reservoir] = {}
    seen = 0
    for uri in success["failure_files"]:
        for rec in iter_jsonl(uri):
            seen += 1
            key = rec["failure_key"]
            if key not in reservoirs:
                reservoirs[key] = Reservoir(cfg.samples_per_key, derive_seed(cfg.seed, cfg.run_date, key))
            reservoirs[key].add(rec)
    selected = [r for key in sorted(reservoirs) for r in sorted(reservoirs[key].items, key=lambda r: r["id"])]
    over_cap = seen - len(selected)

    other_format = "json" if cfg.error_output_format == "jsonl" else "jsonl"
    remove_file(layout.sampled_failures(other_format))  # a rerun in the other format must not leave both
    failures_uri = layout.sampled_failures(cfg.error_output_format)
    with JsonlWriter(layout.sample_errors) as errors, \
            JsonlWriter(failures_uri, json_array=cfg.error_output_format == "json") as out:
        # Images are embedded a chunk at a time, so memory holds one chunk of pixels, not all.
        for start in range(0, len(selected), EMBED_CHUNK):
            chunk = selected[start:start + EMBED_CHUNK]
            for r in _embed(chunk, errors, cfg.run_date) if cfg.embed_images else chunk:
                out.write(r)
    sampled = out.count
    shards = plan_shards(sampled, cfg.num_shards)
    per_key = {key: {"seen": res.seen, "kept": len(res.items)} for key, res in sorted(reservoirs.items())}
    plan = {
        "run_date": cfg.run_date,
        "failures_uri": failures_uri,
        "format": cfg.error_output_format,
        "embed_images": cfg.embed_images,
        "total": sampled,
        "num_shards": len(shards),
        "shards": shards,
        "counts": {
            "input_failures": seen,
            "sampled": sampled,
            "over_cap": over_cap,
            "errors": errors.count,
            "keys": len(reservoirs),
        },
        "per_key": per_key,
        "samples_per_key": cfg.samples_per_key,
        "seed": cfg.seed,
    }
    if seen != sampled + over_cap + errors.count:
        raise RuntimeError(f"sample_keys lost records: {plan['counts']}")
    write_json(layout.shard_plan, plan)
    log.info("sampled %d of %d failures over %d keys into %d shard(s); %d error(s)",
             sampled, seen, len(reservoirs), len(shards), errors.count)
    # The plan minus the per-key table: small enough for XCom at the 256-shard bound.
    return {"shard_plan_uri": layout.shard_plan, **{k: v for k, v in plan.items() if k != "per_key"}}
