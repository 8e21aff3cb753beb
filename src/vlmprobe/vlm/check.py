"""Putting generated QA items to the target: its answer, and whether it was right.

The QA step (:mod:`vlmprobe.qa.run`) puts a shard's generated items to the target in batches on
the shard's GPU when it has one (:func:`target_check_enabled`). Rows with
choices are scored by option log-likelihood, open rows generated (see :mod:`vlmprobe.vlm.llava`).
Importing this module does not import torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlmprobe.vlm.answers import is_correct

if TYPE_CHECKING:
    from PIL import Image

    from vlmprobe.vlm import Target

MODES = ("auto", "on", "off")


def target_check_enabled(mode: str) -> bool:
    """The ``qa_target_check`` param: ``on``, ``off``, or ``auto`` = on when this process sees a CUDA GPU."""
    if mode not in MODES:
        raise ValueError(f"qa_target_check must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class CheckedAnswer:
    """The target's answer to one QA item and whether it matches the item's answer."""

    answer: str
    correct: bool


def check_answers(
    target: Target,
    images: list[Image.Image],
    questions: list[str],
    answers: list[str],
    choices: list[list[str] | None],
    *,
    batch_size: int = 64,
) -> list[CheckedAnswer]:
    """Ask ``target`` every item, ``batch_size`` at a time, and judge each answer; in order.

    Items about the same image should pass the same PIL object: the target then encodes it once
    per batch.
    Raises what the target raises; the caller decides whether a failed batch is an error row.
    """
    if not len(images) == len(questions) == len(answers) == len(choices):
        raise ValueError("check_answers needs one image, question, answer and choices entry per item")
    out: list[CheckedAnswer] = []
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        got = target.answer(images[start:stop], questions[start:stop], choices[start:stop])
        for prediction, truth, options in zip(got, answers[start:stop], choices[start:stop]):
            out.append(CheckedAnswer(prediction, is_correct(prediction, truth, options)))
    return out
