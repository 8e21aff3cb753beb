"""Offline demo inputs: synthetic shape images as parquet, and a tiny random LLaVA.

Nothing is downloaded. The parquet rows have true answers (the images are drawn from the
scene the question is about); the tiny LLaVA has random weights, so it answers wrongly most
of the time, which gives the probe step plenty of failures to explain.
"""

from __future__ import annotations

import io
import json
import random
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlmprobe.io import fs

IMAGE_SIDE = 64
ROW_GROUP_SIZE = 8
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
}
BACKGROUND = (255, 255, 255)
# Region centres for questions about position; a shape in "top" is neither left nor right.
REGIONS = {"left": (12, 32), "right": (52, 32), "top": (32, 12), "bottom": (32, 52)}
GRID = (8, 24, 40, 56)  # 4x4 cell centres for counting scenes
# Rows of part-00000 that exercise the error path (see write_demo_parquet).
CORRUPT_IMAGE_ROW = 1
NULL_QUESTION_ROW = 2
# The DAG params of a demo run on a laptop's CPU (``make demo`` and ``make up``): 2 probe ranks,
# 2 QA shards, small batches.
DEMO_RUN_PARAMS = {"nproc_per_node": 2, "failure_batch_size": 8, "parquet_sample_size": 4, "samples_per_key": 4,
                   "num_shards": 2, "concurrency": 8, "batch_size": 16,
                   # the simulator answers in tens of milliseconds, not Gemini's seconds: the night's plan
                   # knows it (else it would leave most of the demo's wrong answers unexplained)
                   "teacher_latency_s": 0.1}

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)

Shape = dict[str, Any]  # {"shape", "color", "x", "y", "r"}


def _shape(rng: random.Random, shape: str, color: str, x: int, y: int, r: int) -> Shape:
    return {"shape": shape, "color": color, "x": x + rng.randint(-2, 2), "y": y + rng.randint(-2, 2), "r": r}


def _in_grid(rng: random.Random, kinds_and_colors: list[tuple[str, str]]) -> list[Shape]:
    cells = rng.sample([(x, y) for x in GRID for y in GRID], len(kinds_and_colors))
    return [_shape(rng, s, c, x, y, 5) for (s, c), (x, y) in zip(kinds_and_colors, cells)]


def _distractors(rng: random.Random, not_shape: str) -> list[tuple[str, str]]:
    others = [s for s in SHAPES if s != not_shape]
    return [(rng.choice(others), rng.choice(list(COLORS))) for _ in range(rng.randint(0, 2))]


def make_example(rng: random.Random) -> tuple[str, list[Shape], str, str, list[str] | None]:
    """(kind, scene, question, answer, choices) for one random scene; the answer is true of it."""
    kind = rng.choice(["color", "color_choice", "count", "side", "which_shape", "where"])
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    if kind in ("color", "color_choice"):
        scene = _in_grid(rng, [(shape, color), *_distractors(rng, shape)])
        choices = None
        if kind == "color_choice":
            choices = rng.sample([c for c in COLORS if c != color], 2) + [color]
            rng.shuffle(choices)
        return kind, scene, f"What color is the {shape}?", color, choices
    if kind == "count":
        n = rng.randint(1, 5)
        scene = _in_grid(rng, [(shape, color)] * n + _distractors(rng, shape))
        return kind, scene, f"How many {shape}s are there?", str(n), None
    if kind == "which_shape":
        colors = rng.sample(list(COLORS), len(SHAPES))
        regions = rng.sample(list(REGIONS), len(SHAPES))
        scene = [_shape(rng, s, c, *REGIONS[reg], 7) for s, c, reg in zip(SHAPES, colors, regions)]
        picked = rng.choice(scene)
        return kind, scene, f"Which shape is {picked['color']}?", picked["shape"], list(SHAPES)
    region = rng.choice(list(REGIONS))
    scene = [_shape(rng, shape, color, *REGIONS[region], 7)]
    if kind == "where":
        return kind, scene, f"Where is the {shape}?", region, list(REGIONS)
    # "side": half the questions ask about the shape's true region.
    asked = region if rng.random() < 0.5 else rng.choice([r for r in REGIONS if r != region])
    return kind, scene, f"Is the {shape} on the {asked}?", "yes" if asked == region else "no", None


def draw_scene(scene: list[Shape]):
    """A 64x64 RGB PIL image of the scene; each shape's centre pixel has its exact color."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene:
        x, y, r, fill = s["x"], s["y"], s["r"], COLORS[s["color"]]
        if s["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif s["shape"] == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def iter_demo_examples(file_index: int, rows: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """The rows of ``part-{file_index:05d}.parquet`` before encoding, with their ``scene``."""
    rng = random.Random(seed * 1_000_003 + file_index)
    for row in range(rows):
        kind, scene, question, answer, choices = make_example(rng)
        yield {
            "id": f"demo-{file_index:05d}-{row:04d}",
            "kind": kind,
            "scene": scene,
            "question": question,
            "answer": answer,
            "choices": choices,
        }


def write_demo_parquet(out_dir: str, *, n_files: int = 4, rows_per_file: int = 24, seed: int = 0) -> list[str]:
    """Write ``out_dir/part-00000.parquet`` … and return their URIs (sorted).

    Columns: ``id``, ``image`` (struct ``{bytes, path}`` as Hugging Face datasets writes an
    Image feature; PNG bytes, path null), ``question``, ``answer``, ``choices`` (list of
    strings; null for open questions) and ``source`` (``synthetic-shapes:KIND``, carried as
    meta). Row groups hold 8 rows, so a file has several and readers must stream.

    Two rows of ``part-00000`` are bad on purpose, so the pipeline's error path runs in the
    demo: row 1 (``demo-00000-0001``) has image bytes that are not an image, and row 2
    (``demo-00000-0002``) has a null question. Every other row's answer is true of its image.

    Deterministic in ``seed``; safe to rerun: files are replaced atomically, and stale
    ``part-*.parquet`` files from a run with more files are removed.
    """
    if n_files < 1 or rows_per_file < 1:
        raise ValueError("write_demo_parquet needs n_files >= 1 and rows_per_file >= 1")
    written = []
    for file_index in range(n_files):
        records = []
        for ex in iter_demo_examples(file_index, rows_per_file, seed):
            image = png_bytes(draw_scene(ex["scene"]))
            question = ex["question"]
            if file_index == 0 and ex["id"].endswith(f"-{CORRUPT_IMAGE_ROW:04d}"):
                image = b"this is not a PNG image"
            if file_index == 0 and ex["id"].endswith(f"-{NULL_QUESTION_ROW:04d}"):
                question = None
            records.append(
                {
                    "id": ex["id"],
                    "image": {"bytes": image, "path": None},
                    "question": question,
                    "answer": ex["answer"],
                    "choices": ex["choices"],
                    "source": f"synthetic-shapes:{ex['kind']}",
                }
            )
        uri = fs.join(out_dir, f"part-{file_index:05d}.parquet")
        with fs.atomic_write(uri, "wb") as f:
            pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), f, row_group_size=ROW_GROUP_SIZE)
        written.append(uri)
    for stale in set(fs.list_files(out_dir, ".parquet")) - set(written):
        if stale.rsplit("/", 1)[-1].startswith("part-"):
            fs.remove_file(stale)
    return written


def _build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vlmprobe.vlm import build_prompt_text

    corpus = [
        "USER: What is shown in this image? ASSISTANT: A red circle on the left.",
        " ".join([*COLORS, *SHAPES, *(f"{s}s" for s in SHAPES), *REGIONS, "yes", "no", "Yes", "No"]),
        " ".join(str(i) for i in range(21)),
    ]
    rng = random.Random(0)
    for _ in range(60):
        _, _, question, answer, choices = make_example(rng)
        corpus.append(f"USER: {build_prompt_text(question, choices)} ASSISTANT: {answer}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 5, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},  # exposes tokenizer.image_token(_id)
        model_max_length=2048,
    )


# LLaVA-1.5 style: "USER: <image>\n{text} ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


# The demo model: a 32 px CLIP with 8 px patches (16 image tokens) and a two-layer Llama. The demo's
# counts follow from its random weights, so these shapes (and the seeds) stay as they are.
def tiny_llava_shape(image_size: int = 32, patch: int = 8) -> dict[str, dict[str, Any]]:
    """The tiny LLaVA's shapes for :func:`random_llava` (``image_size`` px images in ``patch`` px patches)."""
    if image_size % patch:
        raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
    return {
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=image_size, patch_size=patch, projection_dim=32),
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=2048),
    }


def build_tiny_llava(out_dir: str, *, image_size: int = 32, patch: int = 8, seed: int = 0) -> str:
    """Save a tiny random-weight LLaVA (CLIP vision + Llama text, ~160k parameters) and its
    processor to the local folder ``out_dir``; return ``out_dir``.

    It loads back with ``from_pretrained`` (``load_target(out_dir)``). Deterministic in
    ``seed``; safe to rerun (files are overwritten).
    """
    from transformers.utils import logging as hf_logging

    model, processor = random_llava("cpu", shape=tiny_llava_shape(image_size, patch), dtype=None, seed=seed)
    hf_logging.disable_progress_bar()  # a bar for a 1 MB file is noise
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def train_tiny_llava(model_dir: str, *, steps: int = 100, batch: int = 32, seed: int = 0) -> str:
    """Teach the tiny LLaVA in ``model_dir`` the answer format, in place; return ``model_dir``.

    A few seconds of training on demo rows (``steps`` optimiser steps of ``batch`` rows; the
    loss is on the answer tokens) make the random model answer with one short word and stop —
    often one of the options it was shown, right or wrong. Tests use it where the random model's
    babble would never pick an option (multiple-choice scoring against ``generate``).
    Deterministic in ``seed`` on one machine; safe to rerun (retrains what is saved).
    """
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlmprobe.vlm import build_prompt_text

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(model_dir)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        rows = list(iter_demo_examples(10_000 + seed, 256, seed=seed))
        prompts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": build_prompt_text(r["question"], r["choices"])}]}],
                add_generation_prompt=True, tokenize=False)
            for r in rows
        ]
        texts = [f"{p} {r['answer']}{tokenizer.eos_token}" for p, r in zip(prompts, rows)]
        enc = processor(images=[draw_scene(r["scene"]) for r in rows], text=texts, return_tensors="pt", padding=True)
        # Left padded, so each row's answer is its last tokens: learn only those.
        answer_len = [len(tokenizer(t)["input_ids"]) - len(tokenizer(p)["input_ids"]) for t, p in zip(texts, prompts)]
        labels = torch.full_like(enc["input_ids"], -100)
        for i, n in enumerate(answer_len):
            labels[i, -n:] = enc["input_ids"][i, -n:]
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(rows), (batch,))
            loss = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx],
                         pixel_values=enc["pixel_values"][idx], labels=labels[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().save_pretrained(model_dir)
    return model_dir


def write_workload_parquet(out_dir: str, *, rows: int, side: int = 336, rows_per_file: int = 256,
                           questions_per_image: int = 1, seed: int = 0) -> list[str]:
    """The probe benchmark's fixed workload: ``side`` x ``side`` JPEG images, half the rows with choices.

    Rows alternate: one with ``choices`` (multiple choice, or yes/no with ``["yes", "no"]``),
    then one open short answer (color, count, or yes/no without choices). Scenes are the demo's
    shapes, scaled up and overlaid with noise so that JPEG decoding costs what a photo's does.
    With ``questions_per_image`` > 1, that many consecutive rows ask about the same image
    (the same bytes). Writes ``part-00000.parquet`` … under ``out_dir``; returns their URIs.
    Deterministic in ``seed``; safe to rerun.
    """
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    image = b""
    for i in range(rows):
        want_choices = i % 2 == 0
        while True:
            kind, scene, question, answer, choices = make_example(rng)
            if kind == "side" and want_choices:
                choices = ["yes", "no"]
            if bool(choices) == want_choices:
                break
        if i % questions_per_image == 0:
            base = draw_scene(scene).resize((side, side), Image.Resampling.BICUBIC)
            pixels = np.asarray(base, dtype=np.int16) + noise.integers(-24, 25, (side, side, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            image = buf.getvalue()
        records.append({"id": f"load-{i:06d}", "image": {"bytes": image, "path": None}, "question": question,
                        "answer": answer, "choices": choices, "source": f"synthetic-shapes:{kind}"})
    written = []
    for n, start in enumerate(range(0, rows, rows_per_file)):
        uri = fs.join(out_dir, f"part-{n:05d}.parquet")
        with fs.atomic_write(uri, "wb") as f:
            pq.write_table(pa.Table.from_pylist(records[start:start + rows_per_file], schema=SCHEMA), f,
                           row_group_size=64)
        written.append(uri)
    return written


# LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at 336 px + a Llama-2-7B decoder): 576 image tokens.
LLAVA_7B_SHAPE = {
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
    "text": dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
}


def random_llava(device: str, *, shape: dict[str, dict[str, Any]] = LLAVA_7B_SHAPE, dtype: str | None = "bfloat16",
                 seed: int = 0):
    """(model, processor): random weights with ``shape`` (LLaVA-1.5-7B's by default), built on ``device``.

    The one place a LLaVA is assembled from the demo's tokenizer: :func:`build_tiny_llava` saves
    one with :func:`tiny_llava_shape`; GPU benchmarks take the default, the compute and memory of
    the real model (~7B parameters, SDPA attention; about 14 GB of device memory in bfloat16).
    ``dtype`` names a torch dtype; None builds in torch's default (float32) and leaves the dtype
    out of the saved config, as the demo model always has. ``shape["text"]`` without
    ``vocab_size`` gets the tokenizer's; ids past the tokenizer's vocabulary decode to nothing.
    Deterministic in ``seed``; nothing is downloaded.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,  # CLIPImageProcessor needs torchvision in transformers 5
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _build_tokenizer()
    vision = shape["vision"]
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(**{"vocab_size": len(tokenizer), **shape["text"]},
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,  # "default" drops CLS: one per patch
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration._from_config(
            config, attn_implementation="sdpa", **({} if dtype is None else {"dtype": getattr(torch, dtype)})).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    side = vision["image_size"]
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token; the "default" strategy drops it again
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )
    return model, processor


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="local folder; gets parquet/ and tiny-llava/")
    parser.add_argument("--files", type=int, default=4, help="parquet files to write")
    parser.add_argument("--rows-per-file", type=int, default=24, help="rows in each parquet file")
    parser.add_argument("--seed", type=int, default=0, help="seed for images, questions and weights")


def main(args) -> int:
    """``vlmprobe demo-data``: write the demo parquet and tiny LLaVA; print a JSON summary."""
    parquet_dir = fs.join(args.out, "parquet")
    files = write_demo_parquet(parquet_dir, n_files=args.files, rows_per_file=args.rows_per_file, seed=args.seed)
    model_dir = build_tiny_llava(fs.join(args.out, "tiny-llava"), seed=args.seed)
    summary = {"parquet": parquet_dir, "files": len(files), "rows": len(files) * args.rows_per_file, "tiny_llava": model_dir}
    print(json.dumps(summary), file=sys.stdout, flush=True)
    return 0
