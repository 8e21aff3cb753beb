"""How many rows fit on a GPU next to the target's weights (issue 15): the arithmetic the README quotes."""

from __future__ import annotations

import pytest
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from vlmprobe.vlm.memory import (bytes_per_row, image_tokens, kv_bytes_per_token, parameter_count, safe_batch_size,
                                 tokens_per_row)

GIB, MIB = 2**30, 2**20
H100_80GB = 85_045_231_616  # total_memory as the driver reports an 80 GB H100 (79.2 GiB)
H200_141GB = 150_000_000_000  # an H200 (139.7 GiB)


@pytest.fixture(scope="module")
def llava_7b() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf's shape (its config.json, less what memory does not depend on)."""
    return LlavaConfig(
        text_config=LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                intermediate_size=11008, vocab_size=32064),
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                                       intermediate_size=4096, num_attention_heads=16),
        vision_feature_select_strategy="default")


def test_kv_cache_per_token_and_tokens_per_row(llava_7b):
    assert kv_bytes_per_token(llava_7b.text_config) == 2 * 32 * 32 * 128 * 2 == MIB // 2  # bf16: 0.5 MiB
    assert kv_bytes_per_token(llava_7b.text_config, dtype_bytes=4) == MIB  # float32: twice that
    # grouped-query attention keeps fewer KV heads: 8 of 32 -> a quarter
    gqa = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    assert kv_bytes_per_token(gqa) == MIB // 8
    assert image_tokens(llava_7b) == 576  # (336 / 14)^2, CLS dropped
    assert image_tokens(llava_7b.to_dict() | {"vision_feature_select_strategy": "full"}) == 577
    assert tokens_per_row(llava_7b, max_new_tokens=16) == 576 + 64 + 16 == 656


def test_the_weights_are_seven_billion_parameters(llava_7b):
    assert parameter_count(llava_7b) == pytest.approx(7.06e9, rel=0.005)  # "7B": 6.74 B text, 0.3 B vision


def test_safe_batch_size_for_llava_7b_on_80_and_141_gb(llava_7b):
    per_row = bytes_per_row(llava_7b, max_new_tokens=16)
    assert 656 * MIB // 2 < per_row < 656 * 0.7 * MIB  # the KV cache and one layer's activations
    assert per_row / MIB == pytest.approx(426.3, abs=0.1)
    assert safe_batch_size(llava_7b, H100_80GB) == 134
    assert safe_batch_size(llava_7b, H200_141GB) == 265
    # the README's old advice (128-256 on one GPU) runs out of memory at 256 on an 80 GB GPU:
    assert 256 * per_row > H100_80GB
    # more new tokens, fewer rows; a bigger GPU, more rows; the weights alone too big: none
    assert safe_batch_size(llava_7b, H100_80GB, max_new_tokens=256) < safe_batch_size(llava_7b, H100_80GB)
    assert safe_batch_size(llava_7b, 16 * GIB) == 0
    assert safe_batch_size(llava_7b, 10_000 * GIB) == 1024  # failure_batch_size's own maximum


def test_the_real_weights_size_replaces_the_estimate(llava_7b):
    estimated = safe_batch_size(llava_7b, H100_80GB)
    assert safe_batch_size(llava_7b, H100_80GB, weight_bytes=0) > estimated
    assert safe_batch_size(llava_7b, H100_80GB, weight_bytes=parameter_count(llava_7b) * 2) == estimated


def test_the_probe_logs_the_advice_for_its_gpu(tiny_llava, monkeypatch, caplog):
    import logging
    import types

    import torch

    from vlmprobe.vlm import load_target
    from vlmprobe.vlm.memory import RESERVE_BYTES, RESERVE_FRACTION, advise_batch_size

    caplog.set_level(logging.INFO, logger="vlmprobe")
    target = load_target(tiny_llava, device="cpu", max_new_tokens=4)
    assert advise_batch_size(target, 16) is None  # off CUDA: nothing to advise
    target.device = "cuda:0"  # as a rank would see it (the tiny model's weights stay on the CPU)
    weights = sum(p.numel() * p.element_size() for p in target.model.parameters())
    per_row = bytes_per_row(target.model.config, 4, dtype_bytes=4)

    def gpu_holding(rows: float) -> None:  # a GPU with room for this many rows next to the weights
        total = (RESERVE_BYTES + weights + rows * per_row) / (1 - RESERVE_FRACTION)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=int(total)))

    gpu_holding(40.5)
    assert advise_batch_size(target, 16) == 40 and "failure_batch_size 16: up to ~40 rows fit on cuda:0" in caplog.text
    gpu_holding(10.5)
    assert advise_batch_size(target, 16) == 10
    assert "failure_batch_size 16 is more than the ~10 rows that fit on cuda:0" in caplog.text
    assert "set failure_batch_size to 10 or less" in caplog.text
