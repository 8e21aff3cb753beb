"""A night at production settings against a scaled-down Gemini tier: planned, within quota, GPUs freed.

The steps run as the pods run them (the ``vlmprobe`` CLI, one process per step, 4 probe ranks
under torchrun, 2 QA shards side by side) against the Gemini simulator enforcing a scaled-down
tier: 600 requests/min and 2,000 requests/day for the project, 1-3 s per answer, a few 503s and
malformed answers. Every other setting is the params' default (concurrency, batch sizes,
headroom, probe_wall_factor, the QA target check off as on a GPU-less QA pod). The input holds
more than 5x the wrong answers the day's quota can explain.

1. a warm-up night (2 files, another Gemini project: a simulator of its own) so that the measured
   night plans from an earlier night's figures, as every night after the first does;
2. the measured night: probe -> sample-keys -> qa x2 -> publish;
3. a second run date the same Pacific day (a backfill), on part of the input.

Goals (exit 1 when one is missed; the last line is the summary):
- every step exits 0; the project's requests stay <= teacher_rpd, no request gets a per-day 429;
- 429s (per minute) < 3 % of the requests;
- the night explains >= 0.9 of what its plan budgeted;
- the probe's loop takes <= 1.25x its GPU pass (the pass measured in the same run: the loop's
  start to the device's last batch), and so the GPUs are held for little more than the pass;
- QA stays within its reservation, with 0 failures lost to a limit;
- the second run date plans with, and sends, only what the first left.

    python bench/night.py            # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlmprobe.contracts import Manifest, ProbeSuccess, ShardPlan  # noqa: E402
from vlmprobe.io import RunLayout  # noqa: E402

VLMPROBE = str(Path(sys.executable).parent / "vlmprobe")
RPM, RPD = 600, 2000
RANKS, SHARDS = 4, 2
FILES, ROWS_PER_FILE = 28, 250  # 7,000 rows; a random model answers ~80 % of them wrongly
# A random LLaVA heavy enough that the pass has a night's proportions on a shared CPU (~6 rows/s
# per rank, ~3 minutes for the pass): with the demo's tiny one the pass takes seconds and every
# night would be all teacher tail (probe_min_tail_s).
TARGET_SHAPE = {"image_size": 224, "patch": 14, "text_hidden": 256, "text_layers": 4}
NIGHT, BACKFILL, WARMUP = "2026-11-25", "2026-11-24", "2026-11-23"


def run_night(out: str, parquet: str, model: str, base_url: str, run_date: str, *, project: str = "bench",
              sample_size: int | None = None) -> dict:
    """One night's steps as the pods run them; its exit codes and wall times."""
    env = {**os.environ, "GEMINI_API_KEY": "bench-key-not-secret", "GEMINI_BASE_URL": base_url}
    common = ["--run-date", run_date, "--output-uri", out]
    quota = ["--teacher-rpm", str(RPM), "--teacher-rpd", str(RPD), "--teacher-project", project]
    probe = ["probe", "--nproc-per-node", str(RANKS), *common, *quota, "--input-uri", parquet, "--target-model", model]
    if sample_size:
        probe += ["--parquet-sample-size", str(sample_size)]
    times, codes = {}, []

    def step(name: str, *procs: list[str]) -> None:
        t0 = time.monotonic()
        running = [subprocess.Popen([VLMPROBE, *args], env=env, stdout=subprocess.DEVNULL,
                                    stderr=open(f"{out}/{run_date}-{name}.log", "w")) for args in procs]
        codes.extend(p.wait() for p in running)
        times[name] = round(time.monotonic() - t0, 1)

    step("probe", probe)
    step("sample", ["sample-keys", *common, "--num-shards", str(SHARDS)])
    lay = RunLayout(out, run_date)
    shards = ShardPlan.read(lay.shard_plan).num_shards if Path(lay.shard_plan).exists() else 0
    step("qa", *(["qa", *common, *quota, "--shard-index", str(i), "--qa-target-check", "off"] for i in range(shards)))
    step("publish", ["publish", *common, "--teacher-rpd", str(RPD), "--teacher-project", project])
    return {"codes": codes, "times_s": times}


def build_target(out_dir: str) -> str:
    from vlmprobe.demo.data import random_llava, tiny_llava_shape

    shape = tiny_llava_shape(TARGET_SHAPE["image_size"], TARGET_SHAPE["patch"])
    shape["text"].update(hidden_size=TARGET_SHAPE["text_hidden"], intermediate_size=2 * TARGET_SHAPE["text_hidden"],
                         num_hidden_layers=TARGET_SHAPE["text_layers"])
    model, processor = random_llava("cpu", shape=shape, dtype=None, seed=0)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main() -> int:
    from vlmprobe.demo.data import write_demo_parquet
    from vlmprobe.sim import GeminiSimulator

    with tempfile.TemporaryDirectory() as tmp:
        parquet, warm, out = f"{tmp}/parquet", f"{tmp}/warm", f"{tmp}/out"
        write_demo_parquet(parquet, n_files=FILES, rows_per_file=ROWS_PER_FILE, seed=3)
        write_demo_parquet(warm, n_files=2, rows_per_file=ROWS_PER_FILE, seed=4)
        model = build_target(f"{tmp}/target")
        os.makedirs(out)
        faults = dict(latency_ms=2000, rate_503=0.01, rate_malformed=0.01)
        with GeminiSimulator(port=0, seed=10, **faults) as other_project:  # its own Gemini project and quota
            warmup = run_night(out, warm, model, other_project.base_url, WARMUP, project="warmup")
        with GeminiSimulator(port=0, rpm=RPM, rpd=RPD, seed=11, **faults) as sim:
            night = run_night(out, parquet, model, sim.base_url, NIGHT)
            night_requests = len(sim.request_log())
            backfill = run_night(out, parquet, model, sim.base_url, BACKFILL, sample_size=2)
            backfill_requests = len(sim.request_log()) - night_requests
            stats = sim.stats()
        m = Manifest.read(RunLayout(out, NIGHT).manifest)
        b = Manifest.read(RunLayout(out, BACKFILL).manifest)
        success = ProbeSuccess.read(RunLayout(out, NIGHT).probe_success)

    n, plan, c = m.night, m.night.plan, m.probe.counts
    planned = min(plan.explain_budget if plan.explain_budget is not None else c.wrong, c.wrong)
    rank_ratio = max(r.pipeline.wall_s / r.explain.pass_s for r in success.ranks if r.explain and r.explain.pass_s)
    limit_429 = stats["by_status"].get("429", 0)
    per_day_429 = stats["quota_rejections"].get("rpd", 0)
    figures = {
        "codes": {"warmup": warmup["codes"], "night": night["codes"], "backfill": backfill["codes"]},
        "times_s": {"night": night["times_s"], "backfill": backfill["times_s"]},
        "plan": {"rows": plan.inputs.rows, "expected_wrong": plan.expected_wrong, "explain_budget": plan.explain_budget,
                 "caps": plan.caps, "limited_by": plan.limited_by, "probe_requests": plan.probe_requests,
                 "qa_requests": plan.qa_requests, "priors": plan.priors.source,
                 "target_pass_s": plan.target_pass_s, "teacher_window_s": plan.teacher_window_s},
        "night": {"wrong": c.wrong, "explained": n.probe.explained, "unexplained": n.probe.unexplained_reasons,
                  "limited_by": n.limited_by, "pass_s": n.probe.pass_s, "loop_s": n.probe.wall_s,
                  "gpu_hours_held": n.probe.gpu_hours_held, "gpu_hours_busy": n.probe.gpu_hours_busy,
                  "qa_items": m.qa.counts.get("items", 0), "qa_requests": n.qa.requests,
                  "qa_reserved": n.qa.reserved_requests, "qa_limited": n.qa.limited},
        "requests": {"night": night_requests, "backfill": backfill_requests,
                     "429": limit_429, "per_day_429": per_day_429},
        "backfill": {"requests_left_today": b.night.plan.inputs.requests_left_today, "explained": b.night.probe.explained},
    }
    print(json.dumps(figures, indent=1))
    ratios = {
        "explained / plan": n.probe.explained / planned if planned else 1.0,
        "loop / pass (slowest rank)": rank_ratio,
        "requests / rpd": (night_requests + backfill_requests) / RPD,
        "429s / requests": limit_429 / max(stats["requests"], 1),
    }
    goals = {
        "every step exits 0": all(code == 0 for r in (warmup, night, backfill) for code in r["codes"]),
        "requests <= rpd, no per-day 429": night_requests + backfill_requests <= RPD and per_day_429 == 0,
        "429s < 3 %": ratios["429s / requests"] < 0.03,
        "explained >= 0.9 of the plan": ratios["explained / plan"] >= 0.9,
        "probe loop <= 1.25x its pass": rank_ratio <= 1.25,
        "QA within its reservation, 0 lost": (n.qa.reserved_requests is None or n.qa.requests <= n.qa.reserved_requests)
        and n.qa.limited == 0,
        "input >= 5x the budget": c.wrong >= 5 * planned,
        "the backfill uses only what is left": b.night.plan.inputs.requests_left_today == RPD - night_requests
        and backfill_requests <= RPD - night_requests,
    }
    for name, ok in goals.items():
        print(f"{'ok  ' if ok else 'MISS'} {name}")
    missed = [name for name, ok in goals.items() if not ok]
    print(f"night: {n.probe.explained}/{planned} planned explained ({ratios['explained / plan']:.2f}), loop/pass "
          f"{rank_ratio:.2f}, {night_requests + backfill_requests}/{RPD} requests, 429s "
          f"{ratios['429s / requests']:.1%}, QA {n.qa.requests}/{n.qa.reserved_requests} reserved, limited by "
          f"{n.limited_by}; {'all goals met' if not missed else 'MISSED: ' + ', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
