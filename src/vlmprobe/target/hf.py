"""LLaVA in process with transformers: batched greedy generation, left padded."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
from transformers.utils import logging as hf_logging

from vlmprobe.target import TargetLoadError, build_prompt_text

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """``cuda:$LOCAL_RANK`` when CUDA is available (one GPU per torchrun rank), else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _looks_local(spec: str) -> bool:
    # A hub id is "name" or "org/name"; anything else is meant as a folder on this machine.
    return os.path.exists(spec) or spec.startswith((".", "~", os.sep)) or spec.count("/") > 1


def _load_error(spec: str, why: str) -> TargetLoadError:
    return TargetLoadError(
        f"Cannot load the target model {spec!r} ({why}); pass a Hugging Face hub id such as "
        "llava-hf/llava-1.5-7b-hf or a local folder with config.json saved by save_pretrained."
    )


class LlavaTarget:
    """A LLaVA checkpoint (hub id or local folder) answering questions about images.

    One ``generate`` call per :meth:`answer` call: the prompts are padded on the left so that
    every prompt ends at the same column and the new tokens can be sliced off together.
    """

    def __init__(
        self,
        spec: str,
        *,
        device: str | None = None,
        max_new_tokens: int = 16,
        dtype: str = "auto",
    ) -> None:
        path = os.path.expanduser(spec)
        if _looks_local(spec) and not os.path.isfile(os.path.join(path, "config.json")):
            raise _load_error(spec, "no config.json in that folder" if os.path.isdir(path) else "no such folder")
        self.name = spec.rstrip("/")
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = max_new_tokens
        try:
            hf_logging.disable_progress_bar()  # one bar per rank per load only clutters pod logs
            model = LlavaForConditionalGeneration.from_pretrained(path, dtype=self.dtype)
            self.processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise _load_error(spec, f"{type(exc).__name__}: {exc}") from exc
        self.model = model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        # Batched decoder-only generation needs left padding, whatever the checkpoint saved.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.image_token = self.processor.image_token
        log.info("target %s loaded on %s (%s)", self.name, self.device, self.dtype)

    def build_prompt(self, question: str, choices: list[str] | None) -> str:
        """The full prompt for one image: exactly one image token, then the question."""
        # A literal image token in the dataset's text would ask for a second image.
        text = build_prompt_text(question.replace(self.image_token, " "), choices)
        if not self.processor.chat_template:
            return f"USER: {self.image_token}\n{text} ASSISTANT:"
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def encode(self, images: list[Image.Image], questions: list[str], choices: list[list[str] | None]):
        """Processor inputs for one batch (a ``BatchFeature`` on the model's device)."""
        if not len(images) == len(questions) == len(choices):
            raise ValueError(
                f"answer() needs one question and one choices entry per image; got {len(images)} "
                f"images, {len(questions)} questions, {len(choices)} choices"
            )
        prompts = [self.build_prompt(q, c) for q, c in zip(questions, choices)]
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        inputs = self.processor(images=rgb, text=prompts, return_tensors="pt", padding=True)
        return inputs.to(self.device, dtype=self.dtype)  # casts pixel_values only

    @torch.inference_mode()
    def answer(
        self,
        images: list[Image.Image],
        questions: list[str],
        choices: list[list[str] | None],
    ) -> list[str]:
        """Greedy answers, one per image, in order."""
        if not images:
            return []
        inputs = self.encode(images, questions, choices)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
