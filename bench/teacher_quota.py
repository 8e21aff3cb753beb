"""Goodput of QA shards sharing a run-wide Gemini quota, as a ratio to the quota.

Four ``vlmprobe qa`` shard processes (the real step, separate OS processes, each with its own
Teacher built by the factory from its QAConfig, as its pod would) share ``teacher_rpm = R``
through the run's lease folder, against a Gemini simulator that enforces R requests per rolling
minute per model (the way Gemini does) with ~300 ms latency. The shards get
``R x minutes`` failures in all, so the run lasts about ``minutes`` (2.25 by default, past two
quota windows). ``concurrency`` is 0 (auto), as a deployment that trusts the quota would set it.

Prints, from the simulator's request log: goodput (successful requests per minute, from the first
request to the last) as a ratio to R, the share of requests answered 429, and the shards' error
rows. The last line is the summary. Exit 1 unless goodput >= 0.9 R, 429s < 3 % of requests and
there are no error rows.

    python bench/teacher_quota.py [--rpm 240] [--shards 4] [--minutes 2.25]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RUN_DATE = "2026-11-25"
MODEL = "gemini-2.5-flash"


def _inputs(root: Path, failures: int, shards: int) -> None:
    """Step 1 and 2 outputs for ``failures`` failures in ``shards`` shards, images by reference."""
    from vlmprobe.config import SampleConfig
    from vlmprobe.demo.data import write_demo_parquet
    from vlmprobe.io import JsonlWriter, RunLayout, write_json
    from vlmprobe.sample.run import sample_keys

    keys = ["color:red", "count:3", "shape:circle", "spatial_relation:left", "size:small", "text:stop"]
    # every failure a distinct (image, key) pair: sampling keeps a duplicate once
    n_files, first_row = 4, 3  # rows 0-2 of part 0 are bad
    per_file = -(-failures // (len(keys) * n_files))
    files = write_demo_parquet(str(root / "parquet"), n_files=n_files, rows_per_file=first_row + per_file, seed=0)
    layout = RunLayout(str(root / "out"), RUN_DATE)
    with JsonlWriter(layout.probe_rank(0)) as w:
        for i in range(failures):
            key, image = keys[i % len(keys)], i // len(keys)
            w.write({"id": f"bench-{i:06d}", "failure_key": key,
                     "image": {"uri": files[image % n_files], "row": first_row + image // n_files},
                     "question": f"What is shown in picture {i}?", "answer": "red", "prediction": "blue",
                     "factor": {"category": key.split(":")[0], "completion": f"the {key.split(':')[1]} object"}})
    write_json(layout.probe_success, {
        "failure_files": [layout.probe_rank(0)], "world_size": 1, "input_files": files,
        "counts": {"rows": failures, "passed": 0, "wrong": failures, "verified": failures, "rejected": 0, "errors": 0},
        "tokens": {}, "target_model": "bench", "teacher_model": MODEL, "elapsed_s": 0.0})
    sample_keys(SampleConfig(output_uri=str(root / "out"), run_date=RUN_DATE, num_shards=shards,
                             samples_per_key=1_000_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=240, help="R: the run-wide quota and the simulator's limit.")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.25, help="Work for about this long at R.")
    parser.add_argument("--latency-ms", type=float, default=300.0)
    args = parser.parse_args()

    from vlmprobe.io import read_json
    from vlmprobe.sim import GeminiSimulator

    failures = int(args.rpm * args.minutes)
    with tempfile.TemporaryDirectory(prefix="bench-teacher-quota-") as tmp:
        root = Path(tmp)
        _inputs(root, failures, args.shards)
        with GeminiSimulator(port=0, latency_ms=args.latency_ms, rpm=args.rpm, seed=1) as sim:
            env = {**os.environ, "GEMINI_API_KEY": "bench-key", "GEMINI_BASE_URL": sim.base_url,
                   "VLMPROBE_LOG_LEVEL": "WARNING"}
            started = time.monotonic()
            procs = [
                subprocess.Popen([sys.executable, "-m", "vlmprobe.cli", "qa", "--run-date", RUN_DATE,
                                  "--output-uri", str(root / "out"), "--shard-index", str(i), "--gemini-model", MODEL,
                                  "--teacher-rpm", str(args.rpm), "--concurrency", "0", "--batch-size", "64"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for i in range(args.shards)
            ]
            outcomes = [(p.wait(), p.stderr.read()) for p in procs]
            wall = time.monotonic() - started
            log = sim.request_log()
        for i, (code, stderr) in enumerate(outcomes):
            if code != 0:
                print(f"shard {i} exited {code}:\n{stderr[-3000:]}", file=sys.stderr)
        stats = [read_json(str(root / "out" / RUN_DATE / "qa" / f"_shard-{i:05d}.stats.json"))
                 for i, (code, _) in enumerate(outcomes) if code == 0]

    statuses = Counter(e["status"] for e in log)
    ok = [e["time"] for e in log if e["status"] == 200]
    span_min = (max(e["time"] for e in log) - min(e["time"] for e in log)) / 60 if log else 0.0
    goodput = len(ok) / span_min if span_min else 0.0
    share_429 = statuses.get(429, 0) / max(len(log), 1)
    error_rows = sum(s["counts"]["errors"] for s in stats)
    reasons = Counter()
    for s in stats:
        reasons.update(s["error_reasons"])
    failed = sum(code != 0 for code, _ in outcomes)
    handled = sum(s["counts"]["failures"] for s in stats)  # the whole workload reached the shards
    for i, s in enumerate(stats):
        t = s["teacher"]
        print(f"shard {i}: {s['counts']['failures']} failures, {t['requests']} requests, {t['rate_limited']} 429s, "
              f"paused {t['paused_s']} s, concurrency ceiling {t['concurrency_ceiling']}, "
              f"quota {t['quota']}, {s['elapsed_s']} s")
    print(f"simulator: {len(log)} requests {dict(statuses)}, span {span_min:.2f} min, wall {wall:.0f} s; "
          f"error rows {dict(reasons)}")
    if handled != failures:
        print(f"the shards handled {handled} of {failures} failures: the workload is not what was meant",
              file=sys.stderr)
    goal = goodput >= 0.9 * args.rpm and share_429 < 0.03 and error_rows == 0 and failed == 0 and handled == failures
    print(f"teacher_quota shards={args.shards} R={args.rpm}/min goodput={goodput:.1f}/min "
          f"ratio {goodput / args.rpm:.3f} (goal >= 0.9)  429s {share_429:.2%} (goal < 3%)  "
          f"error_rows {error_rows} (goal 0)  failures {handled}/{failures}  failed_shards {failed}  "
          f"{'OK' if goal else 'MISSED'}")
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
