"""Host memory of loading the target onto its GPU: straight there (``device_map``) vs. via the CPU.

Saves a LLaVA-1.5-7B-shaped checkpoint with random bfloat16 weights (about 14 GB of safetensors,
no download), then loads it in two fresh processes, one per way:

- ``load_target(dir, device="cuda:0")`` — the probe's way: each tensor goes to the GPU as it is
  read (the baseline's whole copy in host RAM never exists);
- ``from_pretrained(dir)`` on the CPU, then ``.to("cuda:0")`` — the way before, which with 8
  ranks held 8 copies of the weights in the pod's RAM at once.

Reported per way, peaks as the kernel and the driver keep them (nothing between two samples is
missed): the process's peak resident memory (``VmHWM``, the kernel's high-water mark: anonymous
memory plus the checkpoint's file-backed pages) and the GPU's peak allocation
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``). The kernel keeps no
separate peak of anonymous memory (what the pod's limit must cover per rank; the file-backed
part is the page cache, shared by a pod's ranks and reclaimable), so that split is sampled every
20 ms and shown as such: a lower bound. A JSON copy goes to ``$OUT/load_memory.json`` when
``OUT`` is set.

Exit status: 0 when loading straight onto the GPU peaks below loading via the CPU (``VmHWM``),
1 when it does not (or a load failed), 2 when asked for the 7B shape without CUDA. Needs CUDA;
``--shape tiny`` runs the same steps on the demo-sized model, on the CPU a smoke test of this
script with no goal (both ways are the same load there).

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

    peaks = {"RssAnon": 0, "RssFile": 0}  # sampled: the kernel keeps a peak of their sum only (VmHWM)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for k in peaks:
                peaks[k] = max(peaks[k], _status_kb(k))
            time.sleep(0.02)

    before = {k: _status_kb(k) for k in peaks}
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
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
    cuda = device.startswith("cuda")
    return {
        "way": way,
        "load_s": round(seconds, 1),
        "weights_gb": round(params / GB, 2),
        # the kernel's high-water mark of this process's resident memory (anonymous + file-backed)
        "peak_rss_gb": round(_status_kb("VmHWM") / (1 << 20), 2),
        "sampled_peak_anon_gb": round(peaks["RssAnon"] / (1 << 20), 2),
        "sampled_peak_file_gb": round(peaks["RssFile"] / (1 << 20), 2),
        "anon_before_gb": round(before["RssAnon"] / (1 << 20), 2),
        "gpu_peak_gb": round(torch.cuda.max_memory_allocated(device) / GB, 2) if cuda else 0.0,
        "gpu_allocated_gb": round(torch.cuda.memory_allocated(device) / GB, 2) if cuda else 0.0,
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
            print(f"{way:14s} load {r['load_s']:5.1f}s  peak RSS {r['peak_rss_gb']:6.2f} GB (kernel)  "
                  f"GPU peak {r['gpu_peak_gb']:6.2f} GB (driver)  sampled: anon {r['sampled_peak_anon_gb']:6.2f} GB, "
                  f"file-backed {r['sampled_peak_file_gb']:6.2f} GB  (weights {r['weights_gb']} GB)", flush=True)
    direct, before = results
    goal = device != "cpu"  # on the CPU both ways are the same load: a smoke test, nothing to compare
    met = direct["peak_rss_gb"] < before["peak_rss_gb"]
    figures = {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu", "shape": args.shape,
               "ways": results, "goal": "direct peak RSS below via-CPU peak RSS" if goal else None,
               "met": met if goal else None}
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "load_memory.json"), "w") as f:
            json.dump(figures, f, indent=1)
    print(f"SUMMARY straight onto the device: peak RSS {direct['peak_rss_gb']} GB per rank vs "
          f"{before['peak_rss_gb']} GB loading on the CPU first (kernel high-water marks; weights "
          f"{direct['weights_gb']} GB)" + (f": goal {'met' if met else 'MISSED'}" if goal else ": no goal on the CPU"))
    return 1 if goal and not met else 0


if __name__ == "__main__":
    sys.exit(main())
