"""Opt-in GPU checks (``pytest -m gpu`` on a machine with CUDA); ``make test`` deselects them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_tiny_llava_on_cuda_batched_equals_single(tiny_llava):
    from vlmprobe.demo.data import draw_scene, iter_demo_examples
    from vlmprobe.target import load_target

    target = load_target(tiny_llava, device="cuda:0", max_new_tokens=8)
    assert str(target.device).startswith("cuda") and target.dtype == torch.bfloat16
    rows = list(iter_demo_examples(0, 6))
    images = [draw_scene(r["scene"]) for r in rows]
    questions = [r["question"] for r in rows]
    choices = [r["choices"] for r in rows]
    batched = target.answer(images, questions, choices)
    single = [target.answer([i], [q], [c])[0] for i, q, c in zip(images, questions, choices)]
    assert len(batched) == 6
    # bf16 kernels may differ slightly between batch shapes; most answers must agree
    assert sum(a == b for a, b in zip(batched, single)) >= 4


def test_probe_with_nccl_on_one_gpu(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    from test_probe_torchrun import _torchrun

    proc = _torchrun(1, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend=nccl" in proc.stderr
    assert (tmp_path / "2026-11-25" / "probe" / "_SUCCESS.json").exists()
