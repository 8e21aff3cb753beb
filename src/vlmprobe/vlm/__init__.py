"""Target VLM backends: the model whose failures the probe step looks for.

``load_target(spec)`` picks the backend from the spec:

- a local folder or a Hugging Face hub id -> :class:`vlmprobe.vlm.llava.LlavaTarget`
  (transformers, in process: rows with choices scored by option log-likelihood in one forward
  pass, open rows by batched greedy ``generate``; rows sharing an image encode it once). A hub
  id is loaded at a pinned ``revision`` from its copy staged on the data volume
  (:mod:`vlmprobe.vlm.staging`);
- ``openai:http://HOST:PORT/v1#MODEL`` -> :class:`vlmprobe.vlm.openai_backend.OpenAICompatibleTarget`
  (chat completions against an OpenAI-compatible server such as vLLM).

Importing this package is cheap: torch and transformers load only when a backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sized

    from PIL import Image

OPENAI_PREFIX = "openai:"


class TargetLoadError(RuntimeError):
    """The target model named by a spec could not be loaded."""


class Target(Protocol):
    """What the probe and the QA target check need from a backend.

    ``answer`` returns one answer per row; for a row with choices an in-process target returns
    the picked option exactly as given. Judge it with :func:`vlmprobe.vlm.answers.is_correct`.
    In-process backends also split the work as ``prepare(images, questions, choices,
    image_keys)`` (CPU, any thread) and ``run(prepared)`` (the device, one thread), which
    :mod:`vlmprobe.probe.pipeline` overlaps; a backend without them is called through ``answer``.
    """

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


def check_batch(images: Sized, questions: Sized, choices: Sized) -> None:
    """Raise ValueError unless a batch has one question and one choices entry per image."""
    if not len(images) == len(questions) == len(choices):
        raise ValueError(
            f"answer() needs one question and one choices entry per image; got {len(images)} "
            f"images, {len(questions)} questions, {len(choices)} choices"
        )


def load_target(
    spec: str,
    *,
    revision: str | None = None,
    device: str | None = None,
    max_new_tokens: int = 16,
    dtype: str = "auto",
    choice_mode: str = "score",
) -> Target:
    """Build the target backend named by ``spec`` (see the module docstring).

    ``revision``: the commit of a hub id (required for one, refused for a folder or a server:
    :func:`vlmprobe.vlm.staging.revision_problem`, a :class:`~vlmprobe.errors.UsageError`).

    ``device`` (default ``cuda:$LOCAL_RANK`` when CUDA is available, else ``cpu``), ``dtype``
    (``auto`` = bfloat16 on CUDA, float32 on CPU) and ``choice_mode`` (``score``: rows with
    choices answered by option log-likelihood; ``generate``: generated like open rows) apply to
    in-process models only; a server backend always generates.
    """
    from vlmprobe.vlm.staging import revision_problem

    if problem := revision_problem(spec, revision):
        from vlmprobe.errors import UsageError

        raise UsageError(problem)
    if spec.startswith(OPENAI_PREFIX):
        from vlmprobe.vlm.openai_backend import OpenAICompatibleTarget

        return OpenAICompatibleTarget.from_spec(spec, max_new_tokens=max_new_tokens)
    from vlmprobe.vlm.llava import LlavaTarget

    return LlavaTarget(spec, revision=revision, device=device, max_new_tokens=max_new_tokens, dtype=dtype,
                       choice_mode=choice_mode)


__all__ = ["Target", "TargetLoadError", "build_prompt_text", "check_batch", "load_target"]
