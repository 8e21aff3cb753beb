"""The QA step's target check: which mode runs it, and judging items the target answers in batches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlmprobe.vlm.check import CheckedAnswer, check_answers, target_check_enabled


def test_modes():
    assert target_check_enabled("on") is True
    assert target_check_enabled("off") is False
    import torch

    assert target_check_enabled("auto") is torch.cuda.is_available()
    with pytest.raises(ValueError, match="qa_target_check"):
        target_check_enabled("sometimes")


def test_importing_the_check_does_not_import_torch():
    code = "import sys, vlmprobe.vlm.check; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class _Echo:
    """Answers each question with its first word; counts its calls."""

    name = "echo"

    def __init__(self):
        self.batches = []

    def answer(self, images, questions, choices):
        self.batches.append(len(images))
        return [q.split()[0] for q in questions]


def test_items_are_asked_in_batches_and_judged():
    target = _Echo()
    questions = ["red is it?", "blue is it?", "Yes or no?", "3 of them?", "B is it?"]
    answers = ["red", "red", "yes", "three", "blue"]
    choices = [None, None, None, None, ["red", "blue"]]
    got = check_answers(target, [None] * 5, questions, answers, choices, batch_size=2)
    assert target.batches == [2, 2, 1]
    assert got == [CheckedAnswer("red", True), CheckedAnswer("blue", False), CheckedAnswer("Yes", True),
                   CheckedAnswer("3", True), CheckedAnswer("B", True)]
    with pytest.raises(ValueError, match="one image"):
        check_answers(target, [None], questions, answers, choices)


def test_with_the_tiny_llava(tiny_llava):
    from vlmprobe.demo.data import draw_scene, iter_demo_examples
    from vlmprobe.vlm import load_target

    rows = list(iter_demo_examples(1, 6, seed=2))
    target = load_target(tiny_llava, device="cpu", max_new_tokens=4)
    got = check_answers(target, [draw_scene(r["scene"]) for r in rows], [r["question"] for r in rows],
                        [r["answer"] for r in rows], [r["choices"] for r in rows], batch_size=4)
    assert len(got) == 6
    assert sum(bool(row["choices"]) for row in rows) >= 2  # rows the check below applies to exist
    for item, row in zip(got, rows):
        if row["choices"]:
            assert item.answer in row["choices"] and item.correct == (item.answer == row["answer"])
