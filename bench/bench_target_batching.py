"""Images per second of the target answering in batches versus one image per call.

Builds the tiny LLaVA (random weights, the real transformers loading and generate path), then
answers the same demo images one per call (the baseline) and in batches of 8 and 32, all in this
process, and prints images/s and the ratio to the baseline. Rows with choices are scored in one
forward pass, open rows generated (``bench/probe_throughput.py`` compares the two). On a CPU with the tiny model this
measures the per-call overhead that batching removes; the GPU anchor in shared/stack-facts.md
(LLaVA-1.5-7B shape, H200: 1.2 img/s one at a time, 25 img/s batched at 64) is the figure that
matters in production.

    python bench/bench_target_batching.py
"""

from __future__ import annotations

import tempfile
import time

from vlmprobe.demo.data import build_tiny_llava, draw_scene, iter_demo_examples
from vlmprobe.vlm import load_target

N_IMAGES = 96


def _throughput(target, examples, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        target.answer([e[0] for e in chunk], [e[1] for e in chunk], [e[2] for e in chunk])
    return len(examples) / (time.perf_counter() - t0)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = load_target(build_tiny_llava(f"{tmp}/tiny-llava"), max_new_tokens=8)
        examples = []
        for row in iter_demo_examples(0, N_IMAGES, seed=0):
            examples.append((draw_scene(row["scene"]), row["question"], row["choices"]))
        _throughput(target, examples[:8], 8)  # warm-up
        base = _throughput(target, examples, 1)
        print(f"batch  1: {base:7.1f} img/s  (baseline)")
        for batch in (8, 32):
            rate = _throughput(target, examples, batch)
            print(f"batch {batch:2d}: {rate:7.1f} img/s  ratio {rate / base:.2f}x")


if __name__ == "__main__":
    main()
