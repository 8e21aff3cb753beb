"""How many rows of a batch fit in a GPU's memory next to the target's weights: advice for ``failure_batch_size``.

Per row, a batched ``generate`` keeps a KV cache for every token of its prompt (the image's tokens
included: 576 for LLaVA-1.5 at 336 px) and of its answer, in every layer::

    KV bytes per token = 2 (K and V) x layers x KV heads x head dim x dtype bytes
    LLaVA-1.5-7B, bf16:  2 x 32 x 32 x 128 x 2 = 524,288 B = 0.5 MiB

plus, while one layer runs, its activations (:func:`activation_bytes_per_token`: the residual
stream, q/k/v and attention output, the MLP's three intermediates, attention scores should the
math kernel run). What is left for rows is the GPU's memory less a reserve for fragmentation and
the CUDA context (:data:`RESERVE_FRACTION`, :data:`RESERVE_BYTES`) and less the weights.
:func:`safe_batch_size` divides the two; the README works it through for LLaVA-1.5-7B on 80 GB
and 141 GB GPUs. The probe logs it at start (:func:`advise_batch_size`) and, should a batch run
out of memory anyway, halves its batch (:mod:`vlmprobe.probe.loop`).

Importing this module does not import torch.
"""

from __future__ import annotations

import logging
from typing import Any

from vlmprobe.errors import VlmprobeError

log = logging.getLogger("vlmprobe.target")

RESERVE_FRACTION = 0.10  # of the GPU's memory: the caching allocator's fragmentation
RESERVE_BYTES = 2 * 1024**3  # the CUDA context, cuBLAS workspaces, the vision tower's activations
PROMPT_TEXT_TOKENS = 64  # the question, its options and the chat template around the image's tokens
MAX_BATCH = 1024  # failure_batch_size's own maximum


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def kv_bytes_per_token(text_config: Any, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token holds across all layers: 2 x layers x KV heads x head dim x dtype bytes."""
    heads = _get(text_config, "num_attention_heads")
    kv_heads = _get(text_config, "num_key_value_heads") or heads
    head_dim = _get(text_config, "head_dim") or _get(text_config, "hidden_size") // heads
    return 2 * _get(text_config, "num_hidden_layers") * kv_heads * head_dim * dtype_bytes


def activation_bytes_per_token(text_config: Any, tokens_per_row: int, dtype_bytes: int = 2) -> int:
    """Activations one token holds while a layer runs: (6 x hidden + 3 x MLP width + heads x row length) x dtype bytes.

    6 x hidden: the residual stream, its norm, q, k, v and the attention's output; 3 x MLP width: the
    gate, the up projection and their product; heads x row length: this token's row of attention
    scores, should SDPA fall back to its math kernel (the fused kernels keep none).
    """
    hidden = _get(text_config, "hidden_size")
    width = _get(text_config, "intermediate_size") or 4 * hidden
    heads = _get(text_config, "num_attention_heads")
    return (6 * hidden + 3 * width + heads * tokens_per_row) * dtype_bytes


def image_tokens(config: Any) -> int:
    """Tokens one image stands for in a LLaVA prompt: (image size / patch size)^2, plus CLS when kept."""
    vision = _get(config, "vision_config")
    patches = (_get(vision, "image_size") // _get(vision, "patch_size")) ** 2
    return patches + (_get(config, "vision_feature_select_strategy", "default") == "full")


def parameter_count(config: Any) -> int:
    """Parameters of a LLaVA (Llama-style text model, CLIP-style vision tower, two-layer projector), from its config."""
    text, vision = _get(config, "text_config"), _get(config, "vision_config")
    h, layers, vocab = _get(text, "hidden_size"), _get(text, "num_hidden_layers"), _get(text, "vocab_size")
    heads = _get(text, "num_attention_heads")
    kv = (_get(text, "num_key_value_heads") or heads) * (_get(text, "head_dim") or h // heads)
    width = _get(text, "intermediate_size") or 4 * h
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * width  # q, o; k, v; gate, up, down (norms are noise)
    tied = _get(text, "tie_word_embeddings", False)
    text_params = layers * per_layer + vocab * h * (1 if tied else 2)
    hv, vlayers = _get(vision, "hidden_size"), _get(vision, "num_hidden_layers")
    vwidth = _get(vision, "intermediate_size") or 4 * hv
    vision_params = vlayers * (4 * hv * hv + 2 * hv * vwidth)
    return text_params + vision_params + hv * h + h * h  # the projector: vision -> text, text -> text


def tokens_per_row(config: Any, max_new_tokens: int, prompt_text_tokens: int = PROMPT_TEXT_TOKENS) -> int:
    """Tokens one row holds at the end of ``generate``: the image's, the prompt's text and the answer."""
    return image_tokens(config) + prompt_text_tokens + max_new_tokens


def bytes_per_row(config: Any, max_new_tokens: int, dtype_bytes: int = 2,
                  prompt_text_tokens: int = PROMPT_TEXT_TOKENS) -> int:
    """GPU memory one row of a batch needs: its tokens x (KV cache + one layer's activations)."""
    text = _get(config, "text_config")
    n = tokens_per_row(config, max_new_tokens, prompt_text_tokens)
    return n * (kv_bytes_per_token(text, dtype_bytes) + activation_bytes_per_token(text, n, dtype_bytes))


def safe_batch_size(config: Any, gpu_bytes: int, *, max_new_tokens: int = 16, dtype_bytes: int = 2,
                    weight_bytes: int | None = None, prompt_text_tokens: int = PROMPT_TEXT_TOKENS) -> int:
    """Rows per batch that fit in ``gpu_bytes`` next to the weights (0: not even one row fits), at most 1024.

    ``config``: the LLaVA's config (object or dict, ``text_config`` and ``vision_config``);
    ``weight_bytes``: the loaded weights' size (default: estimated from the config at ``dtype_bytes``).
    """
    if weight_bytes is None:
        weight_bytes = parameter_count(config) * dtype_bytes
    free = gpu_bytes * (1 - RESERVE_FRACTION) - RESERVE_BYTES - weight_bytes
    rows = int(free // bytes_per_row(config, max_new_tokens, dtype_bytes, prompt_text_tokens)) if free > 0 else 0
    return max(0, min(rows, MAX_BATCH))


def advise_batch_size(target: Any, failure_batch_size: int) -> int | None:
    """Log how many rows fit on the target's GPU against ``failure_batch_size``; the estimate, or None off CUDA.

    Advice only: a batch that runs out of memory anyway is halved by the probe.
    """
    model, device = getattr(target, "model", None), str(getattr(target, "device", ""))
    if model is None or not device.startswith("cuda") or not hasattr(model, "config"):
        return None
    import torch

    try:
        gpu_bytes = torch.cuda.get_device_properties(torch.device(device)).total_memory
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        dtype_bytes = next(model.parameters()).element_size()
        safe = safe_batch_size(model.config, gpu_bytes, max_new_tokens=getattr(target, "max_new_tokens", 16),
                               dtype_bytes=dtype_bytes, weight_bytes=weights)
        per_row = bytes_per_row(model.config, getattr(target, "max_new_tokens", 16), dtype_bytes)
    except (AttributeError, TypeError, KeyError, ZeroDivisionError):  # not a LLaVA-shaped config
        return None
    figures = (f"{per_row / 2**20:.0f} MiB per row (KV cache and activations), weights {weights / 2**30:.1f} GiB "
               f"of {gpu_bytes / 2**30:.1f} GiB")
    if failure_batch_size > safe:
        log.warning("failure_batch_size %d is more than the ~%d rows that fit on %s (%s): batches will run out of "
                    "memory and be halved; set failure_batch_size to %d or less", failure_batch_size, safe,
                    device, figures, max(safe, 1))
    else:
        log.info("failure_batch_size %d: up to ~%d rows fit on %s (%s)", failure_batch_size, safe, device, figures)
    return safe


# -- running out of memory -----------------------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error (False when torch was never imported)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def free_device_memory() -> None:
    """Give the caching allocator's free blocks back (after an out-of-memory error, before a smaller retry)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory_at_one_row(where: str, halvings: int, first_size: int) -> VlmprobeError:
    """The error that ends a step whose target runs out of GPU memory on a batch of one row (exit 1)."""
    return VlmprobeError(
        f"{where}: the target ran out of GPU memory on a single row (batch size halved {halvings} time(s) from "
        f"{first_size} to 1): this GPU cannot hold the model and one row; use a GPU with more memory, or a "
        "smaller target or max_new_tokens (a smaller failure_batch_size cannot help below 1)")
