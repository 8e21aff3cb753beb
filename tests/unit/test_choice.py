"""Multiple-choice scoring: the packed layout, its mask, the pick, and agreement with generate."""

from __future__ import annotations

import pytest
import torch

from vlmprobe.demo.data import draw_scene, iter_demo_examples
from vlmprobe.vlm.answers import match_choice
from vlmprobe.vlm.choice import attention_mask, option_token_ids, pack, pick_option
from vlmprobe.vlm.llava import LlavaTarget


def test_pack_lays_options_after_a_shared_prompt():
    packed = pack([[5, 6, 7], [8, 9]], [[[1], [2, 3], [6, 7, 8]], [[4, 4, 4]]], pad_id=0)
    # An option's last token is never an input: [1] adds no column, [2, 3] adds 2, [6, 7, 8] adds 6 7.
    assert packed.input_ids == [[5, 6, 7, 2, 6, 7], [0, 8, 9, 4, 4, 0]]
    # Each option's positions restart where its row's prompt ends.
    assert packed.position_ids == [[0, 1, 2, 3, 3, 4], [0, 0, 1, 2, 3, 0]]
    assert packed.segments == [[0, 0, 0, 2, 3, 3], [-1, 0, 0, 1, 1, -1]]
    # Option tokens are predicted by the prompt's last column, then by their own previous token.
    assert list(zip(packed.score_row, packed.score_col, packed.score_token)) == [
        (0, 2, 1), (0, 2, 2), (0, 3, 3), (0, 2, 6), (0, 4, 7), (0, 5, 8), (1, 2, 4), (1, 3, 4), (1, 4, 4)]
    assert packed.spans == [[(0, 1), (1, 3), (3, 6)], [(6, 9)]]


def test_mask_keeps_options_apart():
    segments = torch.tensor([[-1, 0, 0, 1, 2, 2]])
    m = attention_mask(segments)[0, 0]
    assert m.shape == (6, 6) and m.dtype == torch.bool
    assert m[0].tolist() == [True, False, False, False, False, False]  # padding sees only itself
    assert m[2].tolist() == [False, True, True, False, False, False]  # the prompt never sees options
    assert m[3].tolist() == [False, True, True, True, False, False]  # option 1: prompt + itself
    assert m[5].tolist() == [False, True, True, False, True, True]  # option 2 skips option 1
    assert not m[:, 0][1:].any()  # nobody attends to padding
    additive = attention_mask(segments, additive_dtype=torch.float32)[0, 0]
    assert additive[5, 4] == 0 and additive[5, 3] == torch.finfo(torch.float32).min


def test_option_tokens_must_continue_the_prompt():
    assert option_token_ids([1, 2], [[1, 2, 7], [1, 2, 8, 9]]) == [[7], [8, 9]]
    assert option_token_ids([1, 2], [[1, 3, 7], [1, 2, 8]]) is None  # a merge changed the prompt's tokens
    assert option_token_ids([1, 2], [[1, 2]]) is None  # an option with no tokens


@pytest.mark.parametrize(
    "options, logprobs, is_top, expected",
    [
        ([[1], [2], [3]], [[-2.0], [-0.5], [-1.0]], [[False], [True], [False]], 1),
        # A shared first token: the second token decides, whatever the sums say.
        ([[1, 5], [1, 6], [2]], [[-0.1, -3.0], [-0.1, -2.0], [-0.2]], [[True, False], [True, False], [False]], 1),
        # "red" vs "red car": greedy writes "car" only if it is the argmax after "red".
        ([[1], [1, 9]], [[-0.1], [-0.1, -0.2]], [[True], [True, True]], 1),
        ([[1], [1, 9]], [[-0.1], [-0.1, -0.2]], [[True], [True, False]], 0),
        ([[4, 4], [4, 4]], [[-1.0, -1.0], [-1.0, -1.0]], [[True, True], [True, True]], 0),  # same tokens: first
        ([[7]], [[-9.0]], [[False]], 0),
    ],
)
def test_pick_option_follows_greedy_decoding(options, logprobs, is_top, expected):
    assert pick_option(options, logprobs, is_top) == expected


@pytest.fixture(scope="module")
def rows():
    examples = list(iter_demo_examples(0, 60, seed=3))
    return ([draw_scene(r["scene"]) for r in examples], [r["question"] for r in examples],
            [r["choices"] for r in examples])


def test_packed_scores_equal_each_option_alone(tiny_llava, rows):
    """One packed forward pass gives each option the log-likelihood of a forward pass of its own."""
    target = LlavaTarget(tiny_llava, device="cpu")
    images, questions, _ = (x[:8] for x in rows)
    # Options of several tokens, some sharing their first ones: a mask that let an option see
    # another would change their scores.
    long_options = ["dark red circle", "a purple square on the left", "blue", "a purple circle"]
    choices = [long_options[i % 4:] + long_options[:i % 4] if i % 3 else None for i in range(len(images))]
    packed = target.choice_logprobs(images, questions, choices)
    tokenizer = target.processor.tokenizer
    checked = 0
    for image, question, row_choices, got in zip(images, questions, choices, packed):
        if not row_choices:
            assert got is None
            continue
        prompt = target.build_prompt(question, row_choices)
        alone = []
        for option in row_choices:
            inputs = target.processor(images=[image], text=[f"{prompt} {option}"], return_tensors="pt")
            n_option = len(tokenizer(f"{prompt} {option}")["input_ids"]) - len(tokenizer(prompt)["input_ids"])
            with torch.inference_mode():
                logits = target.model(**inputs).logits[0].float()
            lp = torch.log_softmax(logits[-n_option - 1:-1], dim=-1)
            ids = inputs["input_ids"][0, -n_option:]
            alone.append(lp.gather(1, ids[:, None]).sum().item())
        assert got == pytest.approx(alone, abs=1e-4)
        checked += 1
    assert checked >= 4


def test_scoring_agrees_with_generate_then_match(answering_llava, rows):
    images, questions, choices = rows
    generated = LlavaTarget(answering_llava, device="cpu", choice_mode="generate").answer(images, questions, choices)
    scored = LlavaTarget(answering_llava, device="cpu").answer(images, questions, choices)
    picked_by_generate = [(match_choice(g, c), s) for g, s, c in zip(generated, scored, choices) if c]
    compared = [(g, s) for g, s in picked_by_generate if g is not None]
    assert len(compared) >= 15, f"generate picked a choice on only {len(compared)} rows"
    assert [g for g, _ in compared] == [s for _, s in compared]
    # Every row with choices gets one of its choices, exactly as given; open rows are generated alike.
    assert all(s in c for s, c in zip(scored, choices) if c)
    assert [s for s, c in zip(scored, choices) if not c] == [g for g, c in zip(generated, choices) if not c]
