"""Target VLM backends: the model whose failures the probe step looks for.

``load_target(spec)`` picks the backend from the spec:

- a local folder or a Hugging Face hub id -> :class:`vlmprobe.target.hf.LlavaTarget`
  (transformers, in process, batched greedy ``generate``);
- ``openai:http://HOST:PORT/v1#MODEL`` -> :class:`vlmprobe.target.openai_server.OpenAICompatibleTarget`
  (chat completions against an OpenAI-compatible server such as vLLM).

Importing this package is cheap: torch and transformers load only when a backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

OPENAI_PREFIX = "openai:"


class TargetLoadError(RuntimeError):
    """The target model named by a spec could not be loaded."""


class Target(Protocol):
    name: str

    def answer(
        self,
        images: list[Image.Image],
        questions: list[str],
        choices: list[list[str] | None],
    ) -> list[str]:
        """One answer per (image, question, choices), in order."""
        ...


def build_prompt_text(question: str, choices: list[str] | None) -> str:
    """The text part of the prompt: the question plus how to answer it."""
    question = question.strip()
    if choices:
        return f"{question}\nOptions: {', '.join(choices)}.\nAnswer with one of the options."
    return f"{question}\nAnswer with a single word or number."


def load_target(
    spec: str,
    *,
    device: str | None = None,
    max_new_tokens: int = 16,
    dtype: str = "auto",
) -> Target:
    """Build the target backend named by ``spec`` (see the module docstring).

    ``device`` (default ``cuda:$LOCAL_RANK`` when CUDA is available, else ``cpu``) and
    ``dtype`` (``auto`` = bfloat16 on CUDA, float32 on CPU) apply to in-process models only.
    """
    if spec.startswith(OPENAI_PREFIX):
        from vlmprobe.target.openai_server import OpenAICompatibleTarget

        return OpenAICompatibleTarget.from_spec(spec, max_new_tokens=max_new_tokens)
    from vlmprobe.target.hf import LlavaTarget

    return LlavaTarget(spec, device=device, max_new_tokens=max_new_tokens, dtype=dtype)


__all__ = ["Target", "TargetLoadError", "build_prompt_text", "load_target"]
