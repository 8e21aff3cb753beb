"""Opt-in GPU checks (``pytest -m gpu`` on a machine with CUDA); ``make test`` deselects them.

``bench/probe_gpu.sh`` runs them together with the GPU benchmark in one call.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def demo_rows():
    from vlmprobe.demo.data import draw_scene, iter_demo_examples

    rows = list(iter_demo_examples(0, 60, seed=3))
    return [draw_scene(r["scene"]) for r in rows], [r["question"] for r in rows], [r["choices"] for r in rows]


def test_cuda_target_loads_onto_its_gpu_in_bf16_with_sdpa(tiny_llava, demo_rows):
    from vlmprobe.vlm import load_target

    target = load_target(tiny_llava, device="cuda:0", max_new_tokens=8)
    assert target.device == "cuda:0" and target.dtype == torch.bfloat16
    assert {p.device.type for p in target.model.parameters()} == {"cuda"}
    assert target.model.config.text_config._attn_implementation == "sdpa"
    images, questions, choices = (x[:6] for x in demo_rows)
    batch = target.prepare(images, questions, choices)
    assert batch.pixel_values.is_pinned() and batch.pixel_values.dtype == torch.bfloat16
    batched = target.run(batch)
    single = [target.answer([i], [q], [c])[0] for i, q, c in zip(images, questions, choices)]
    assert any(choices) and len(batched) == 6 and all(a in c for a, c in zip(batched, choices) if c)
    # bf16 kernels may differ slightly between batch shapes; most answers must agree
    assert sum(a == b for a, b in zip(batched, single)) >= 4


def test_rows_sharing_an_image_on_cuda(tiny_llava, demo_rows):
    from vlmprobe.vlm import load_target

    target = load_target(tiny_llava, device="cuda:0", max_new_tokens=8, dtype="float32")
    images, questions, choices = (x[:5] for x in demo_rows)
    calls = []
    hook = target.model.model.vision_tower.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        shared = target.answer(images * 2, questions * 2, choices * 2, image_keys=list(range(5)) * 2)
    finally:
        hook.remove()
    assert calls == [5] and shared[:5] == shared[5:]


@pytest.mark.parametrize("dtype, min_agreement", [("float32", 1.0), ("bfloat16", 0.9)])
def test_choice_scorer_agrees_with_generate_on_cuda(answering_llava, demo_rows, dtype, min_agreement):
    from vlmprobe.vlm import load_target
    from vlmprobe.vlm.answers import match_choice

    images, questions, choices = demo_rows
    generated = load_target(answering_llava, device="cuda:0", dtype=dtype, choice_mode="generate").answer(
        images, questions, choices)
    scored = load_target(answering_llava, device="cuda:0", dtype=dtype).answer(images, questions, choices)
    compared = [(match_choice(g, c), s) for g, s, c in zip(generated, scored, choices) if c]
    compared = [(g, s) for g, s in compared if g is not None]
    assert len(compared) >= 15
    assert sum(g == s for g, s in compared) >= min_agreement * len(compared), compared


# The probe's ranks exchange only Python objects (the plan, their stats): gloo on the CPU, with
# each rank's target on its own GPU (vlmprobe.probe.ranks); no NCCL collective is left to test.
def test_probe_on_one_gpu(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    from test_probe_torchrun import _torchrun

    proc = _torchrun(1, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend=gloo" in proc.stderr and " on cuda:0 (" in proc.stderr
    assert (tmp_path / "2026-11-25" / "probe" / "_SUCCESS.json").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_ranks_probe_on_two_gpus(tmp_path, demo_parquet, tiny_llava, gemini_sim):
    from test_probe_torchrun import _torchrun

    from vlmprobe.io import read_json

    proc = _torchrun(2, tmp_path, demo_parquet, tiny_llava, gemini_sim)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend=gloo world_size=2" in proc.stderr
    assert " on cuda:0 (" in proc.stderr and " on cuda:1 (" in proc.stderr
    success = read_json(str(tmp_path / "2026-11-25" / "probe" / "_SUCCESS.json"))
    c = success["counts"]
    assert c["rows"] == 48 == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    assert [r["pipeline"]["batches"] > 0 for r in success["ranks"]] == [True, True]
