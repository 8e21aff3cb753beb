"""What the teacher costs per tier, mode and image setting, on the Gemini simulator, as ratios to standard online.

The demo's workload (``vlmprobe.demo.data.write_workload_parquet``: the demo's shape scenes at
photo size, ``--side`` px JPEGs), everything in this process against one simulator (no latency,
no faults), every baseline run here too:

1. **Tokens per request of each step** — factor, verify (the probe's two requests) and QA — with the
   images as sent before (full size; downscaled to ``teacher_image_max_side`` 768 with no
   ``media_resolution``) and at each ``media_resolution`` google-genai 3.6.1 offers (low, medium,
   high), billed as Gemini documents (:mod:`vlmprobe.sim.request`); the step's real prompts.
2. **QA per 1,000 items**: the real QA step (``run_shard``) on one shard of the workload's
   failures, online at standard vs ``qa_mode=batch`` (and the settings before: standard online,
   images at 768 px with no media_resolution). Goal: batch <= 0.55x standard online, with the same
   number of items.
3. **The probe at flex**: the probe's teacher work for each row (a factor, then its verification,
   as ``RankProbe`` asks them) through the step's own teacher (``make_teacher``) at standard and at
   flex. Goal: flex <= 0.55x standard.

Costs are what the teacher recorded per tier (each answer at the tier that served it, batch at
batch prices: :mod:`vlmprobe.publish.costs`). Exit 1 when a goal is missed; the last line sums up.

    PYTHONPATH=src python bench/teacher_cost.py [--rows 48] [--side 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

MODEL = "gemini-2.5-flash"
RUN_DATE = "2026-11-25"
GOAL = 0.55
KINDS = ("factor", "verify", "qa")
# (label, teacher_image_max_side, media_resolution)
IMAGE_SETTINGS = [("full size, unset", 0, "unspecified"), ("768 px, unset (before)", 768, "unspecified"),
                  ("768 px, low", 768, "low"), ("768 px, medium", 768, "medium"), ("768 px, high", 768, "high")]
# the workload's question kinds -> the factor category its failures get
CATEGORY = {"color": "color", "color_choice": "color", "count": "count", "side": "spatial_relation",
            "where": "spatial_relation", "which_shape": "shape"}


def load_rows(parquet_dir: str, rows: int, side: int) -> list[dict[str, Any]]:
    """The workload's rows with their image bytes and where they live (file URI, row)."""
    import pyarrow.parquet as pq

    from vlmprobe.demo.data import write_workload_parquet

    out = []
    for uri in write_workload_parquet(parquet_dir, rows=rows, side=side, rows_per_file=rows):
        for i, row in enumerate(pq.read_table(uri).to_pylist()):
            out.append({**row, "uri": uri, "row": i, "kind": row["source"].split(":", 1)[1]})
    return out


def _factor_of(row: dict[str, Any]) -> tuple[str, str]:
    category = CATEGORY[row["kind"]]
    return category, f"The {category.replace('_', ' ')} asked about is {row['answer']}"


# -- 1. tokens per request ----------------------------------------------------------------------

async def _tokens_per_request(base_url: str, rows: list[dict[str, Any]], kind: str, side: int,
                              resolution: str) -> tuple[float, float, float]:
    """(prompt tokens, output tokens, standard USD) per request of ``kind`` at this image setting."""
    from vlmprobe.teacher.client import Teacher
    from vlmprobe.teacher.prompts import factor_prompt, qa_prompt, verify_prompt
    from vlmprobe.teacher.schemas import FactorCompletion, QASet, Verification
    from vlmprobe.teacher.templates import load_templates

    templates = load_templates()
    async with Teacher(MODEL, api_key="bench", base_url=base_url, image_max_side=side, concurrency=16,
                       media_resolution={kind: resolution}) as teacher:
        async def one(row):
            category, completion = _factor_of(row)
            if kind == "factor":
                prompt, schema = factor_prompt(templates, row["question"], row["answer"], "wrong", row["choices"]), \
                    FactorCompletion
            elif kind == "verify":
                prompt, schema = verify_prompt(row["question"], row["answer"], "wrong", category, completion), \
                    Verification
            else:
                prompt, schema = qa_prompt(row["question"], row["answer"], "wrong", f"{category}:{row['answer']}",
                                           completion, 3), QASet
            await teacher.generate(prompt, schema, images=[(row["image"]["bytes"], "image/jpeg")], kind=kind)

        await asyncio.gather(*(one(row) for row in rows))
        stats = teacher.stats
    n = len(rows)
    usd = stats["by_tier"]["standard"]["estimated_cost_usd"]
    return stats["prompt_tokens"] / n, stats["output_tokens"] / n, usd / n


# -- 2. QA per 1,000 items ----------------------------------------------------------------------

def write_failures(out: str, rows: list[dict[str, Any]]) -> None:
    """The probe's outputs for ``rows`` (each a verified failure) and the sample step over them: one QA shard."""
    from vlmprobe.config import SampleConfig
    from vlmprobe.contracts import InputAccounting, PipelineSummary, ProbeCounts, ProbeSuccess
    from vlmprobe.io import JsonlWriter, RunLayout
    from vlmprobe.sample.run import sample_keys

    lay = RunLayout(out, RUN_DATE)
    with JsonlWriter(lay.probe_rank(0)) as w:
        for row in rows:
            category, completion = _factor_of(row)
            w.write({"id": row["id"], "failure_key": f"{category}:{row['answer']}",
                     "image": {"uri": row["uri"], "row": row["row"]}, "question": row["question"],
                     "answer": row["answer"], "prediction": "wrong", "choices": row["choices"],
                     "factor": {"category": category, "value": row["answer"], "completion": completion}})
    n = len(rows)
    ProbeSuccess(
        run_date=RUN_DATE, world_size=1, input_uri="/bench", input_files=[], failure_files=[lay.probe_rank(0)],
        error_files=[lay.probe_errors(0)],
        counts=ProbeCounts(rows=n, passed=0, wrong=n, verified=n, rejected=0, errors=0, read_errors=0, resumed=0,
                           probed=n),
        input=InputAccounting(files=1, files_lost=0, files_lost_rows_unknown=0, row_groups=1, row_groups_lost=0,
                              rows_read=n, rows_lost=0),
        error_reasons={}, tokens={}, teacher={},
        pipeline=PipelineSummary(ranks=1, wall_s=1.0, device_busy_s=1.0, input_wait_s=0.0, teacher_wait_s=0.0,
                                 tail_s=0.0, busy_fraction=1.0, bound="target", devices_for_same_time=1),
        target_model="bench", teacher_model=MODEL, template_version="v1", ranks=[],
        started_at="2026-11-26T02:00:00+00:00", elapsed_s=1.0).write(lay.probe_success)
    sample_keys(SampleConfig(output_uri=out, run_date=RUN_DATE, num_shards=1, samples_per_key=1_000_000))


def qa_run(out: str, rows: list[dict[str, Any]], **settings: Any) -> tuple[int, float]:
    """(items, USD) of the QA step over ``rows`` with ``settings`` (QAConfig fields)."""
    from vlmprobe.config import QAConfig
    from vlmprobe.contracts import QAShardStats
    from vlmprobe.io import RunLayout
    from vlmprobe.publish.costs import recorded_cost_usd
    from vlmprobe.qa.run import run_shard

    write_failures(out, rows)
    run_shard(QAConfig(output_uri=out, run_date=RUN_DATE, shard_index=0, concurrency=16, qa_target_check="off",
                       batch_poll_s=0.1, **settings))
    stats = QAShardStats.read(RunLayout(out, RUN_DATE).qa_stats(0))
    return stats.counts.items, recorded_cost_usd([stats.teacher], MODEL) or 0.0


# -- 3. the probe at flex -----------------------------------------------------------------------

async def probe_cost(out: str, rows: list[dict[str, Any]], tier: str) -> tuple[int, float]:
    """(requests answered, USD) of the probe's teacher work on ``rows``: a factor, then its verification."""
    from vlmprobe.config import ProbeConfig
    from vlmprobe.publish.costs import recorded_cost_usd
    from vlmprobe.teacher.factory import make_teacher
    from vlmprobe.teacher.prompts import factor_prompt, verify_prompt
    from vlmprobe.teacher.schemas import FactorCompletion, Verification
    from vlmprobe.teacher.templates import load_templates

    templates = load_templates()
    cfg = ProbeConfig(output_uri=out, run_date=RUN_DATE, input_uri=out, teacher_service_tier=tier, concurrency=0)
    async with make_teacher(cfg, process=f"bench-{tier}") as teacher:
        async def explain(row):
            images = [(row["image"]["bytes"], "image/jpeg")]
            fc = await teacher.generate(factor_prompt(templates, row["question"], row["answer"], "wrong",
                                                      row["choices"]), FactorCompletion, images=images, kind="factor")
            await teacher.generate(verify_prompt(row["question"], row["answer"], "wrong", fc.parsed.category,
                                                 fc.parsed.completion), Verification, images=images, kind="verify",
                                   follow_up=True)

        await asyncio.gather(*(explain(row) for row in rows))
        stats = teacher.stats
    return stats["succeeded"], recorded_cost_usd([stats], MODEL) or 0.0


def verdict(name: str, ratio: float, ok: bool) -> str:
    return f"{name} {ratio:.2f}x (<= {GOAL}) {'met' if ok else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48, help="workload rows: QA failures and probe rows (default 48)")
    parser.add_argument("--side", type=int, default=1024, help="image side in px (default 1024)")
    parser.add_argument("--sample", type=int, default=12, help="requests per kind and image setting (default 12)")
    args = parser.parse_args(argv)

    from vlmprobe.params import PARAM_SPECS
    from vlmprobe.sim import GeminiSimulator

    defaults = {kind: PARAM_SPECS[f"teacher_media_resolution_{kind}"]["default"] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="teacher-cost-") as tmp, GeminiSimulator(port=0, seed=0) as sim:
        os.environ["GEMINI_API_KEY"] = "bench-simulator-key"
        os.environ["GEMINI_BASE_URL"] = sim.base_url
        rows = load_rows(str(Path(tmp) / "parquet"), args.rows, args.side)

        print(f"1. tokens per request ({args.sample} requests each, {args.side} px images, {MODEL}, standard prices)")
        print(f"   {'kind':<7s} {'images':<24s} {'prompt tok':>10s} {'output tok':>10s} {'$/1000 req':>10s}")
        for kind in KINDS:
            for label, side, resolution in IMAGE_SETTINGS:
                prompt, output, usd = asyncio.run(_tokens_per_request(sim.base_url, rows[:args.sample], kind, side,
                                                                      resolution))
                mark = "  <- default" if side == 768 and resolution == defaults[kind] else ""
                print(f"   {kind:<7s} {label:<24s} {prompt:10.0f} {output:10.0f} {1000 * usd:10.4f}{mark}")

        before = {f"teacher_media_resolution_{k}": "unspecified" for k in KINDS}
        items_before, cost_before = qa_run(str(Path(tmp) / "qa-before"), rows, **before)
        items_online, cost_online = qa_run(str(Path(tmp) / "qa-online"), rows)
        items_batch, cost_batch = qa_run(str(Path(tmp) / "qa-batch"), rows, qa_mode="batch")
        per_1000 = {name: 1000 * cost / items for name, cost, items in (
            ("before", cost_before, items_before), ("online", cost_online, items_online),
            ("batch", cost_batch, items_batch))}
        print(f"2. QA per 1,000 items ({len(rows)} failures, one shard)")
        print(f"   standard online, images as before: {items_before} items, ${per_1000['before']:.4f} per 1,000 items")
        print(f"   standard online, default images:   {items_online} items, ${per_1000['online']:.4f} per 1,000 items")
        print(f"   batch, default images:             {items_batch} items, ${per_1000['batch']:.4f} per 1,000 items")
        qa_ratio = per_1000["batch"] / per_1000["online"]
        qa_ok = qa_ratio <= GOAL and items_batch == items_online

        answered_standard, cost_standard = asyncio.run(probe_cost(str(Path(tmp) / "probe"), rows, "standard"))
        answered_flex, cost_flex = asyncio.run(probe_cost(str(Path(tmp) / "probe"), rows, "flex"))
        print(f"3. the probe's teacher work ({len(rows)} rows: a factor and its verification each)")
        print(f"   standard: {answered_standard} answers, ${cost_standard:.4f}; flex: {answered_flex} answers, "
              f"${cost_flex:.4f}")
        probe_ratio = cost_flex / cost_standard
        probe_ok = probe_ratio <= GOAL and answered_flex == answered_standard

    same = "" if items_batch == items_online else f" (items differ: {items_batch} vs {items_online})"
    print(f"goals: {verdict('QA batch per 1,000 items vs standard online', qa_ratio, qa_ok)}{same}; "
          f"{verdict('probe at flex vs standard', probe_ratio, probe_ok)}")
    return 0 if qa_ok and probe_ok else 1


if __name__ == "__main__":
    sys.exit(main())
