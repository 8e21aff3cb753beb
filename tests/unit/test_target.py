import base64
import io
import json
import shutil
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from vlmprobe.demo.data import draw_scene, iter_demo_examples
from vlmprobe.vlm import TargetLoadError, build_prompt_text, load_target
from fakes import chat_server as fake_chat_server

QUESTIONS = [
    "What color is the circle?",
    "How many squares are there in this picture, counting every square you can see?",
    "Is it left?",
    "Which shape is red?",
    "Where is the triangle? Look carefully at the whole image before you answer.",
]
CHOICES = [None, None, None, ["circle", "square", "triangle"], ["left", "right", "top", "bottom"]]


@pytest.fixture(scope="module")
def right_padded_llava(tiny_llava, tmp_path_factory):
    """A copy of the session's tiny LLaVA whose tokenizer was saved with right padding."""
    out = str(tmp_path_factory.mktemp("right-padded") / "tiny-llava")
    shutil.copytree(tiny_llava, out)
    # The target must switch it to left padding.
    config_path = f"{out}/tokenizer_config.json"
    with open(config_path) as f:
        config = json.load(f)
    config["padding_side"] = "right"
    with open(config_path, "w") as f:
        json.dump(config, f)
    return out


@pytest.fixture(scope="module")
def target(right_padded_llava):
    return load_target(right_padded_llava, device="cpu", max_new_tokens=6)


@pytest.fixture(scope="module")
def images():
    # Different sizes and a non-RGB mode: the processor must resize and the target convert.
    examples = list(iter_demo_examples(0, 5, seed=3))
    out = [draw_scene(ex["scene"]) for ex in examples]
    out[1] = out[1].resize((80, 48))
    out[2] = out[2].convert("L")
    return out


def test_batched_answers_equal_one_at_a_time(target, images):
    batched = target.answer(images, QUESTIONS, CHOICES)
    assert len(batched) == 5 and all(isinstance(a, str) for a in batched)
    # Greedy decoding: padding the batch must not change any answer.
    single = [target.answer([im], [q], [c])[0] for im, q, c in zip(images, QUESTIONS, CHOICES)]
    assert batched == single


def test_prompts_are_left_padded_with_one_image_each(target, images):
    # What run() hands generate: prompts of different lengths, left padded, one image's tokens each.
    assert target.processor.tokenizer.padding_side == "left"  # the checkpoint was saved with "right"
    questions = [*QUESTIONS[:4], "Is there an <image> token in this question?"]
    assert target.build_prompt(questions[4], None).count("<image>") == 1
    batch = target.prepare(images, questions, [None] * 5)
    assert batch.open_rows == [0, 1, 2, 3, 4] and batch.pixel_values.shape == (5, 3, 32, 32)
    ids, mask = batch.open_input_ids.tolist(), batch.open_attention_mask.tolist()
    lengths = [sum(row) for row in mask]
    assert len(set(lengths)) > 1, "the prompts differ in length"
    for row_ids, row_mask, n in zip(ids, mask, lengths):
        pad = len(row_mask) - n
        assert row_mask == [0] * pad + [1] * n and row_ids[:pad] == [target.pad_id] * pad  # padding on the left only
        at = [j for j, t in enumerate(row_ids) if t == target.image_token_id]
        # One image placeholder per prompt, expanded in place to one token per 8x8 patch of the 32x32 input.
        assert at == list(range(at[0], at[0] + 16))
    # Rows with choices are laid out with their prompt once: one image's tokens per row too.
    scored = target.prepare(images, QUESTIONS, CHOICES)
    assert scored.choice_rows == [3, 4]
    assert (scored.packed["input_ids"] == target.image_token_id).sum(dim=1).tolist() == [16, 16]
    # Left padding changes no answer: the padded batch answers as each row does alone.
    alone = [target.run(target.prepare([im], [q], [None]))[0] for im, q in zip(images, questions)]
    assert target.run(batch) == alone


def test_empty_batch(target):
    assert target.answer([], [], []) == []


def test_mismatched_lengths_are_refused(target, images):
    from vlmprobe.vlm.openai_backend import OpenAICompatibleTarget

    with pytest.raises(ValueError, match="one question.*got 5 images, 2 questions, 5 choices"):
        target.answer(images, QUESTIONS[:2], CHOICES)
    with OpenAICompatibleTarget("http://127.0.0.1:1/v1", "m") as server_target:  # refused before any request
        with pytest.raises(ValueError, match="one question.*got 5 images, 5 questions, 1 choices"):
            server_target.answer(images, QUESTIONS, CHOICES[:1])


def test_missing_model_folder_names_the_spec(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(TargetLoadError, match="no-such-model.*hub id.*config.json"):
        load_target(missing)
    with pytest.raises(TargetLoadError, match="no config.json"):
        load_target(str(tmp_path))


def test_build_prompt_text():
    assert build_prompt_text(" Which? ", ["red", "blue"]) == "Which?\nOptions: red, blue.\nAnswer with one of the options."
    assert build_prompt_text("How many?", None) == "How many?\nAnswer with a single word or number."


def test_importing_target_does_not_import_torch():
    code = "import sys, vlmprobe.vlm, vlmprobe.vlm.answers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def chat_server():
    # answers each chat completion with its question's first line, padded with spaces
    with fake_chat_server(lambda text: f"  {text.splitlines()[0]} ") as served:
        yield served


def test_openai_compatible_target(chat_server, images, monkeypatch):
    base_url, requests = chat_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with load_target(f"openai:{base_url}#llava-hf/llava-1.5-7b-hf", max_new_tokens=7) as target:
        assert target.name == "llava-hf/llava-1.5-7b-hf"
        answers = target.answer(images, QUESTIONS, CHOICES)
    # In order (whatever order the threads finished in), stripped.
    assert answers == QUESTIONS
    assert len(requests) == 5
    path, auth, body = requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "llava-hf/llava-1.5-7b-hf"
    assert body["max_tokens"] == 7 and body["temperature"] == 0
    by_text = {
        next(p["text"] for p in b["messages"][0]["content"] if p["type"] == "text"): b for _, _, b in requests
    }
    sent = by_text[build_prompt_text(QUESTIONS[3], CHOICES[3])]["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in sent if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.mode == "RGB" and decoded.tobytes() == images[3].tobytes()


def test_openai_target_server_error_raises(chat_server):
    base_url, _ = chat_server
    with load_target(f"openai:{base_url}/wrong#m") as target:
        with pytest.raises(httpx.HTTPStatusError, match="404"):
            target.answer([Image.new("RGB", (8, 8))], ["q"], [None])


def test_openai_spec_without_model_is_refused():
    with pytest.raises(ValueError, match="openai:http://HOST:PORT/v1#MODEL"):
        load_target("openai:http://127.0.0.1:1/v1")


def test_rows_sharing_an_image_encode_it_once(target, images):
    calls = []
    hook = target.model.model.vision_tower.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        questions = QUESTIONS * 2
        choices = CHOICES * 2
        shared = target.answer(images * 2, questions, choices, image_keys=list(range(5)) * 2)
        assert calls == [5]  # ten rows, five distinct images, one vision-tower call
        calls.clear()
        own = target.answer([im.copy() for im in images * 2], questions, choices)
        assert calls == [10]
    finally:
        hook.remove()
    assert shared == own


def test_choice_rows_are_scored_not_generated(target, images, monkeypatch):
    generated_rows = []
    real = target.model.generate

    def spy(*args, **kwargs):
        generated_rows.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(target.model, "generate", spy)
    answers = target.answer(images, QUESTIONS, CHOICES)
    assert generated_rows == [3]  # only the three open questions
    assert answers[3] in CHOICES[3] and answers[4] in CHOICES[4]
    generated_rows.clear()
    assert target.answer(images[3:], QUESTIONS[3:], CHOICES[3:])[0] == answers[3]
    assert generated_rows == []


def test_the_model_loads_straight_onto_its_device(tiny_llava, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    seen = {}
    real = LlavaForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(spy))
    target = load_target(tiny_llava, device="cpu")
    # device_map places each weight on the device as it is read: no full copy in host RAM first
    assert seen["device_map"] == "cpu" and seen["attn_implementation"] == "sdpa"
    assert target.device == "cpu" and target.model.config.text_config._attn_implementation == "sdpa"


def test_unknown_choice_mode_is_refused(tiny_llava):
    from vlmprobe.vlm.llava import LlavaTarget

    with pytest.raises(ValueError, match="choice_mode"):
        LlavaTarget(tiny_llava, device="cpu", choice_mode="vote")
