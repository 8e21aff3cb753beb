"""Step 4: check that every expected output exists and adds up, then write ``manifest.json``.

Reads ``probe/_SUCCESS.json``, ``sample/shards.json`` and each shard's stats, counts the lines
of every output and error file, and refuses to publish (raises) when a shard is missing or a
count does not add up. Safe to rerun: the manifest is replaced.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

from vlmprobe.config import PublishConfig
from vlmprobe.io import RunLayout, exists, iter_jsonl, read_json, write_json
from vlmprobe.teacher.pricing import PRICES_PER_MTOK, estimate_cost  # noqa: F401  (the one price table)

log = logging.getLogger("vlmprobe.publish")


def _count_lines(uri: str) -> int:
    return sum(1 for _ in iter_jsonl(uri)) if exists(uri) else 0


def publish(cfg: PublishConfig) -> dict[str, Any]:
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    for uri, step in ((layout.probe_success, "probe"), (layout.shard_plan, "sample_keys")):
        if not exists(uri):
            raise FileNotFoundError(f"{uri} is missing: {step} has not finished for {cfg.run_date}")
    probe = read_json(layout.probe_success)
    plan = read_json(layout.shard_plan)

    problems: list[str] = []
    pc = probe["counts"]
    if pc["rows"] != pc["passed"] + pc["verified"] + pc["rejected"] + pc["errors"]:
        problems.append(f"probe counts do not add up: {pc}")
    probe_lines = sum(_count_lines(u) for u in probe["failure_files"])
    if probe_lines != pc["verified"]:
        problems.append(f"probe files hold {probe_lines} failures, _SUCCESS.json says {pc['verified']}")
    sc = plan["counts"]
    if sc["input_failures"] != pc["verified"]:
        problems.append(f"sample_keys read {sc['input_failures']} failures, probe verified {pc['verified']}")

    qa_counts: Counter[str] = Counter()
    qa_tokens: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    shards = []
    for shard in plan["shards"]:
        i = shard["shard_index"]
        stats_uri = layout.qa_stats(i)
        if not exists(stats_uri) or not exists(layout.qa_shard(i)):
            problems.append(f"qa shard {i} has no complete output ({layout.qa_shard(i)})")
            continue
        stats = read_json(stats_uri)
        items = _count_lines(layout.qa_shard(i))
        if items != stats["counts"]["items"] or stats["counts"]["failures"] != shard["count"]:
            problems.append(f"qa shard {i}: {items} items on disk, stats {stats['counts']}, plan {shard}")
        qa_counts.update(stats["counts"])
        qa_tokens.update(stats["tokens"])
        reasons.update(stats["error_reasons"])
        shards.append({"shard_index": i, "uri": layout.qa_shard(i), **stats["counts"],
                       "elapsed_s": stats["elapsed_s"]})
    if not problems and qa_counts["failures"] != sc["sampled"]:
        problems.append(f"qa saw {qa_counts['failures']} failures, sample_keys kept {sc['sampled']}")
    if problems:
        raise RuntimeError("refusing to publish " + cfg.run_date + ":\n- " + "\n- ".join(problems))

    tokens = Counter(probe.get("tokens", {})) + qa_tokens
    model = probe.get("teacher_model", cfg.gemini_model)
    manifest = {
        "run_date": cfg.run_date,
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "models": {"target": probe["target_model"], "teacher": model},
        "probe": {"counts": pc, "error_reasons": probe.get("error_reasons", {}),
                  "world_size": probe["world_size"], "input_files": len(probe["input_files"]),
                  "elapsed_s": probe["elapsed_s"], "tokens": probe.get("tokens", {})},
        "sample": {"counts": sc, "format": plan["format"], "embed_images": plan["embed_images"],
                   "uri": plan["failures_uri"]},
        "qa": {"counts": dict(qa_counts), "error_reasons": dict(reasons), "tokens": dict(qa_tokens),
               "shards": shards},
        "tokens": {"prompt_tokens": tokens["prompt_tokens"], "output_tokens": tokens["output_tokens"]},
        "timings_s": {
            "probe": probe["elapsed_s"],
            "qa_slowest_shard": max((s["elapsed_s"] for s in shards), default=0.0),
            "qa_all_shards": round(sum(s["elapsed_s"] for s in shards), 3),
        },
        "estimated_cost_usd": estimate_cost(model, tokens["prompt_tokens"], tokens["output_tokens"]),
        "outputs": {
            "qa": [s["uri"] for s in shards],
            "failures": plan["failures_uri"],
            "errors": layout.errors_dir,
        },
    }
    write_json(layout.manifest, manifest)
    log.info("published %s: %d QA items from %d failures", layout.manifest, qa_counts["items"], sc["sampled"])
    return {"manifest_uri": layout.manifest, "qa_items": qa_counts["items"], "qa_uris": manifest["outputs"]["qa"]}
