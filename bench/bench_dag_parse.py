"""Cost of parsing dags/vlm_failure_pipeline.py, as the DAG processor pays it.

Each sample is a fresh interpreter that imports ``airflow.sdk`` first (the processor has it
loaded already), then times executing the DAG file. The baseline, in the same kind of fresh
interpreter, times importing the cncf.kubernetes provider's pod operator alone: the part of the
parse no DAG using KubernetesPodOperator can avoid. Prints the median of 5 of each and the ratio.

    python bench/bench_dag_parse.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAG = REPO / "dags" / "vlm_failure_pipeline.py"

TIMED = r"""
import importlib.util, json, sys, time
sys.path.insert(0, {repo!r})
import airflow.sdk
t = time.perf_counter()
{body}
print(json.dumps({{"s": time.perf_counter() - t,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                                  or m.startswith("google.genai"))}}))
"""
DAG_BODY = (f"spec = importlib.util.spec_from_file_location('d', {str(DAG)!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))")
BASE_BODY = "import airflow.providers.cncf.kubernetes.operators.pod"


def _sample(body: str) -> dict:
    out = subprocess.run([sys.executable, "-c", TIMED.format(repo=str(REPO), body=body)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    dag = [_sample(DAG_BODY) for _ in range(5)]
    base = [_sample(BASE_BODY) for _ in range(5)]
    d, b = statistics.median(x["s"] for x in dag), statistics.median(x["s"] for x in base)
    print(f"DAG file parse:            {d:.3f} s (median of 5; the design's budget is 2 s)")
    print(f"KPO import alone (base):   {b:.3f} s")
    print(f"ratio DAG / base:          {d / b:.2f}x")
    print(f"heavy modules imported:    {dag[0]['heavy'] or 'none'}")


if __name__ == "__main__":
    main()
