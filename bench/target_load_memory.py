"""Host memory of loading the target onto its GPU: straight there (``device_map``) vs. via the CPU.

Saves a LLaVA-1.5-7B-shaped checkpoint with random bfloat16 weights (about 14 GB of safetensors,
no download), then loads it in two fresh processes and samples each one's memory every 20 ms:

- ``load_target(dir, device="cuda:0")`` — the probe's way: each tensor goes to the GPU as it is
  read (the baseline's whole copy in host RAM never exists);
- ``from_pretrained(dir)`` on the CPU, then ``.to("cuda:0")`` — the way before, which with 8
  ranks held 8 copies of the weights in the pod's RAM at once.

Reported per way: peak anonymous memory (what the pod's limit must cover per rank), peak
file-backed resident memory (the checkpoint's page cache, shared by the ranks of a pod and
reclaimable), and GPU memory after the load. The last line compares the two. A JSON copy goes
to ``$OUT/load_memory.json`` when ``OUT`` is set. Needs CUDA; ``--shape tiny`` runs the same
steps on the demo-sized model (a smoke test of this script, on any machine).

    python bench/target_load_memory.py            # on a GPU machine (bench/probe_gpu.sh runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

GB = 1 << 30


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _measure(way: str, model_dir: str, device: str) -> dict:
    """In a fresh process: load ``model_dir`` one ``way`` while sampling /proc/self/status."""
    import torch

    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for k in peaks:
                peaks[k] = max(peaks[k], _status_kb(k))
            time.sleep(0.02)

    before = {k: _status_kb(k) for k in peaks}
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    if way == "device_map":
        from vlmprobe.vlm import load_target

        target = load_target(model_dir, device=device)
        model = target.model
    else:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16 if "cuda" in device
                                                              else torch.float32).to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "way": way,
        "load_s": round(seconds, 1),
        "weights_gb": round(params / GB, 2),
        "peak_anon_gb": round(peaks["RssAnon"] / (1 << 20), 2),
        "peak_file_gb": round(peaks["RssFile"] / (1 << 20), 2),
        "peak_rss_gb": round(peaks["VmRSS"] / (1 << 20), 2),
        "anon_before_gb": round(before["RssAnon"] / (1 << 20), 2),
        "gpu_allocated_gb": round(torch.cuda.memory_allocated(device) / GB, 2) if device.startswith("cuda") else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--child", nargs=3, metavar=("WAY", "DIR", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(*args.child)))
        return 0
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if args.shape == "7b" and device == "cpu":
        print("the 7B shape needs a CUDA GPU; try --shape tiny", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        model_dir = f"{tmp}/llava"
        started = time.perf_counter()
        if args.shape == "tiny":
            from vlmprobe.demo.data import build_tiny_llava

            build_tiny_llava(model_dir)
        else:
            from vlmprobe.demo.data import random_llava

            model, processor = random_llava(device)
            model.save_pretrained(model_dir)
            processor.save_pretrained(model_dir)
            del model
            torch.cuda.empty_cache()
        print(f"checkpoint saved in {time.perf_counter() - started:.0f}s", flush=True)
        results = []
        for way in ("device_map", "cpu_then_move"):
            proc = subprocess.run([sys.executable, __file__, "--child", way, model_dir, device],
                                  capture_output=True, text=True, timeout=900)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{way:14s} load {r['load_s']:5.1f}s  peak anon {r['peak_anon_gb']:6.2f} GB  peak file-backed "
                  f"{r['peak_file_gb']:6.2f} GB  GPU {r['gpu_allocated_gb']:6.2f} GB  (weights {r['weights_gb']} GB)",
                  flush=True)
    direct, before = results
    figures = {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu", "shape": args.shape,
               "ways": results}
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "load_memory.json"), "w") as f:
            json.dump(figures, f, indent=1)
    print(f"SUMMARY straight onto the device: peak anon {direct['peak_anon_gb']} GB per rank vs "
          f"{before['peak_anon_gb']} GB loading on the CPU first (weights {direct['weights_gb']} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
