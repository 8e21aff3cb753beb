"""``python -m vlmprobe.demo`` (``make demo``): the whole DAG, offline, on this machine.

1. writes synthetic parquet files and a tiny LLaVA (random weights, real loading path);
2. starts the Gemini simulator on loopback (with a little latency and some 429/503/bad JSON, and
   Batch API jobs that take seconds instead of hours);
3. runs ``airflow dags test vlm_failure_pipeline 2026-11-26T02:00:00+00:00`` on SQLite with
   ``VLMPROBE_POD_MODE=local`` — the night of 2026-11-26, whose run date is 2026-11-25 — so the
   probe pod's ranks (2 on the CPU) and each QA pod run as local processes. QA runs in batch mode
   (``qa_mode=batch``): each shard's ``qa.submit`` submits one Batch API job, ``qa.wait`` waits for
   it in a trigger (run inline by ``dags test``), ``qa.generate`` collects and writes the shard;
4. prints where the QA dataset and manifest are, its item count, one line per step of what the
   teacher cost (requests, retries, 429s, tokens, estimated cost), the cost per mode next to the
   same work at standard online (the manifest's ``teacher_modes``: the saving), how many QA items
   the target failed (the QA shards put every item to the tiny LLaVA: ``qa_target_check=on``), three
   items, and last the path of the run report (``report.html``: open it in a browser).

Everything goes under ``demo-output/`` (git-ignored); rerunning replaces the run's outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# The 02:00 run of 2026-11-26 covers the day before: its data interval starts on its run date.
LOGICAL_DATE = "2026-11-26T02:00:00+00:00"
RUN_DATE = "2026-11-25"


def _run(cmd: list[str], env: dict[str, str], log_file: Path) -> None:
    print(f"$ {' '.join(cmd)}   (log: {log_file})", flush=True)
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        tail = log_file.read_text().splitlines()[-40:]
        sys.exit(f"{cmd[0]} {cmd[1]} failed (exit {proc.returncode}); last lines of {log_file}:\n" + "\n".join(tail))


def _as_in_file(counts: dict[str, int]) -> dict[str, int]:
    """Counts in the manifest file's (sorted) key order, as the demo has always printed them."""
    return dict(sorted(counts.items()))


def main() -> int:
    from vlmprobe.contracts import Manifest
    from vlmprobe.demo.data import DEMO_RUN_PARAMS, build_tiny_llava, write_demo_parquet
    from vlmprobe.io import RunLayout
    from vlmprobe.publish.costs import saving_line
    from vlmprobe.publish.run import teacher_line
    from vlmprobe.sim import GeminiSimulator

    out = REPO / "demo-output"
    data, runs, home = out / "data", out / "runs", out / "airflow"
    for d in (data, runs, home):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print("1/3 demo data: synthetic parquet + tiny LLaVA", flush=True)
    write_demo_parquet(str(data / "parquet"))
    model_dir = build_tiny_llava(str(data / "tiny-llava"))

    conf = {
        "input_uri": str(data / "parquet"),
        "output_uri": str(runs),
        "target_model": model_dir,
        "gemini_model": "gemini-2.5-flash",
        **DEMO_RUN_PARAMS,
        # each QA item is put to the target (on the CPU here; a QA pod with a GPU does it by default)
        "qa_target_check": "on",
        # QA through the Batch API at half price; the simulator's jobs take seconds: look every second
        "qa_mode": "batch",
        "batch_poll_s": 1,
    }
    with GeminiSimulator(port=0, latency_ms=30, rate_429=0.05, rate_503=0.03, rate_malformed=0.03,
                         batch_pending_s=2, batch_running_s=2, seed=7) as sim:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "VLMPROBE_POD_MODE": "local",
            # Airflow 3.3.2's `dags test` cannot finish a run of a DAG with a DeadlineAlert: off here
            "VLMPROBE_RUN_DEADLINE_HOURS": "0",
            "VLMPROBE_GEMINI_BASE_URL": sim.base_url,
            # The simulator accepts any key; a real one in the shell is never handed to it (a real
            # deployment reads it from a Kubernetes Secret).
            "GEMINI_API_KEY": "demo-simulator-key",
        }
        print(f"2/3 Gemini simulator on {sim.base_url}; Airflow on SQLite in {home}", flush=True)
        _run(["airflow", "db", "migrate"], env, out / "airflow-db-migrate.log")
        print(f"3/3 airflow dags test vlm_failure_pipeline {LOGICAL_DATE} (run date {RUN_DATE}, local pod mode)",
              flush=True)
        _run(["airflow", "dags", "test", "vlm_failure_pipeline", LOGICAL_DATE, "-c", json.dumps(conf)],
             env, out / "airflow-dags-test.log")
        sim_stats = sim.stats()
        batch_stats = sim.batch_stats()

    layout = RunLayout(str(runs), RUN_DATE)
    manifest = Manifest.read(layout.manifest)
    qa_files = manifest.outputs.qa
    items = [json.loads(line) for f in qa_files for line in open(f) if line.strip()]
    print()
    print(f"QA dataset:  {runs / RUN_DATE / 'qa'}  ({len(qa_files)} shard file(s))")
    print(f"QA items:    {len(items)}")
    print(f"manifest:    {layout.manifest}")
    print(f"counts:      probe {_as_in_file(manifest.probe.counts.model_dump())}")
    print(f"             sample {_as_in_file(manifest.sample.counts.model_dump())}")
    print(f"             qa {_as_in_file(manifest.qa.counts)}")
    for step, figures in (("probe", manifest.teacher.probe), ("qa", manifest.teacher.qa)):
        print(f"{'teacher:' if step == 'probe' else '':<13}{teacher_line(step, figures)}")
    if manifest.teacher_modes is not None:  # what each mode cost next to standard online: the saving
        for label, step in (("qa", manifest.teacher_modes.qa), ("run", manifest.teacher_modes.run)):
            print(f"{'':<13}{saving_line(label, step)}")
    check = manifest.qa.target_check
    if check:
        print(f"target check: the target failed {check.items_target_failed} of {check.items_checked} QA items "
              f"({check.target_failed_rate:.0%}); those are the items that probe its failures best")
    print(f"simulator:   {json.dumps(sim_stats, sort_keys=True)[:300]}")
    if batch_stats["jobs_created"]:
        print(f"{'':<13}batch: {batch_stats['jobs_created']} job(s) {batch_stats['jobs_by_state']}, "
              f"{batch_stats['requests_answered']} answered, {batch_stats['requests_failed']} failed")
    else:  # the run date's batch ledgers (qa/_batch/) outlive a rerun: its answers are not paid twice
        print(f"{'':<13}batch: no new job: the QA answers came from the jobs of an earlier demo run")
    print("three QA items:")
    for item in items[:3]:
        keep = {k: item[k] for k in ("failure_key", "answer_type", "question", "choices", "answer")}
        print("  " + json.dumps(keep, ensure_ascii=False))
    print(f"done in {time.monotonic() - t0:.0f} s")
    if manifest.report is None:  # publish logged why (a WARNING); the run itself is fine
        print(f"report:      not written (see {out / 'airflow-dags-test.log'}); make it with: vlmprobe report "
              f"{layout.root}")
    else:
        print(f"report:      {manifest.report.uri}")
    return 0 if items else 1


if __name__ == "__main__":
    sys.exit(main())
