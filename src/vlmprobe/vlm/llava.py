"""LLaVA in process with transformers: choices scored in one forward pass, open answers generated.

The work of one batch is split in two so that a pipeline can overlap them:

- :meth:`LlavaTarget.prepare` (CPU, thread-safe, meant for background workers): resize and
  normalise each *distinct* image once, build the prompts, tokenise them and lay out the
  multiple-choice rows (:mod:`vlmprobe.vlm.choice`). Returns a :class:`PreparedBatch` of CPU
  tensors (pinned when the model is on CUDA).
- :meth:`LlavaTarget.run` (the device; call it from one thread): the vision tower once per
  distinct image, then one forward pass for the rows with choices (option log-likelihoods) and
  one batched greedy ``generate`` for the open rows, which stops at EOS per row or after
  ``max_new_tokens``.

:meth:`LlavaTarget.answer` does both. Rows that share an image (the same PIL object, or the same
``image_keys`` entry: the probe passes the image's bytes) share its vision tokens: the projected features are computed once and
handed to the language model through ``mm_encoder_outputs``.

A hub id is loaded from its pinned revision's copy on the data volume (:mod:`vlmprobe.vlm.staging`).
On CUDA the model loads straight onto its GPU (``device_map``), in bfloat16 with SDPA
attention, so a rank's host RAM never holds a full copy of the weights.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging as hf_logging

from vlmprobe.vlm import TargetLoadError, build_prompt_text, check_batch
from vlmprobe.vlm import choice as choice_layout
from vlmprobe.vlm.staging import is_local_folder, stage_target

if TYPE_CHECKING:
    from collections.abc import Hashable

    from PIL import Image

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ChoiceMode = Literal["score", "generate"]


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


def _load_error(spec: str, why: str) -> TargetLoadError:
    return TargetLoadError(
        f"Cannot load the target model {spec!r} ({why}); pass a Hugging Face hub id such as "
        "llava-hf/llava-1.5-7b-hf (with target_revision) or a local folder with config.json saved by "
        "save_pretrained."
    )


@dataclass
class PreparedBatch:
    """One batch, ready for the device: CPU tensors and the row bookkeeping (see ``prepare``)."""

    size: int
    pixel_values: torch.Tensor | None  # (distinct images, 3, H, W) in the model's dtype
    image_index: list[int]  # row -> index into pixel_values
    choice_rows: list[int] = field(default_factory=list)
    choices: list[list[str]] = field(default_factory=list)
    packed: dict[str, torch.Tensor] = field(default_factory=dict)  # input_ids, position_ids, segments, score_*
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    option_ids: list[list[list[int]]] = field(default_factory=list)
    open_rows: list[int] = field(default_factory=list)
    open_input_ids: torch.Tensor | None = None
    open_attention_mask: torch.Tensor | None = None


class LlavaTarget:
    """A LLaVA checkpoint (a local folder, or a hub id at ``revision``, staged) answering questions about images.

    ``choice_mode="score"`` (default) answers rows with choices by option log-likelihood;
    ``"generate"`` generates them like open rows (the baseline the scorer is checked against).
    """

    def __init__(
        self,
        spec: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        max_new_tokens: int = 16,
        dtype: str = "auto",
        choice_mode: ChoiceMode = "score",
    ) -> None:
        path = os.path.expanduser(spec)
        if is_local_folder(spec) and not os.path.isfile(os.path.join(path, "config.json")):
            raise _load_error(spec, "no config.json in that folder" if os.path.isdir(path) else "no such folder")
        if revision is not None or not is_local_folder(spec):
            # A hub id: its pinned commit, staged once on the data volume, loaded offline from there.
            path = stage_target(spec, revision)
        device = device or default_device()
        torch_dtype = resolve_dtype(dtype, device)
        try:
            hf_logging.disable_progress_bar()  # one bar per rank per load only clutters pod logs
            # device_map puts each tensor on the device as it is read (safetensors are mmapped),
            # so host RAM holds no full copy of the weights: 8 ranks do not need 8 copies.
            model = LlavaForConditionalGeneration.from_pretrained(
                path, dtype=torch_dtype, device_map=device, attn_implementation="sdpa"
            )
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise _load_error(spec, f"{type(exc).__name__}: {exc}") from exc
        self._setup(model, processor, name=spec.rstrip("/"), max_new_tokens=max_new_tokens, choice_mode=choice_mode)

    @classmethod
    def from_model(
        cls,
        model: LlavaForConditionalGeneration,
        processor: Any,
        *,
        name: str = "in-memory",
        max_new_tokens: int = 16,
        choice_mode: ChoiceMode = "score",
    ) -> LlavaTarget:
        """A target around a model already built and placed (benchmarks build random 7B-shaped ones)."""
        self = cls.__new__(cls)
        self._setup(model, processor, name=name, max_new_tokens=max_new_tokens, choice_mode=choice_mode)
        return self

    def _setup(self, model, processor, *, name: str, max_new_tokens: int, choice_mode: ChoiceMode) -> None:
        if choice_mode not in ("score", "generate"):
            raise ValueError(f"choice_mode must be 'score' or 'generate', not {choice_mode!r}")
        self.name = name
        self.model = model.eval()
        self.processor = processor
        self.device = str(next(model.parameters()).device)
        self.dtype = next(model.parameters()).dtype
        self.max_new_tokens = max_new_tokens
        self.choice_mode = choice_mode
        tokenizer = processor.tokenizer
        # Batched decoder-only generation needs left padding, whatever the checkpoint saved.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.image_token = processor.image_token
        self.image_token_id = model.config.image_token_index
        # A fast tokenizer's padding/truncation state is shared Rust state: "Already borrowed"
        # when two threads tokenize at once. Worker threads take turns (tokenising is cheap).
        self._tokenizer_lock = threading.Lock()
        self._tokens_per_image: dict[tuple[int, int], int] = {}
        self._option_cache: dict[tuple[str, str], list[int] | None] = {}
        self._pin = self.device.startswith("cuda")
        attn = getattr(model.config.text_config, "_attn_implementation", None) or "sdpa"
        self._additive_mask_dtype = None if attn == "sdpa" else self.dtype
        log.info("target %s on %s (%s, %s attention, choices by %s)", self.name, self.device, self.dtype, attn,
                 "log-likelihood" if choice_mode == "score" else "generate")

    def bind_thread(self) -> None:
        """Make this thread's current CUDA device the model's (call it in the thread that runs :meth:`run`)."""
        if self.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self.device))

    # -- prompts -------------------------------------------------------------------------------
    def build_prompt(self, question: str, choices: list[str] | None) -> str:
        """The full prompt for one image: exactly one image token, then the question."""
        # A literal image token in the dataset's text would ask for a second image.
        text = build_prompt_text(question.replace(self.image_token, " "), choices)
        if not self.processor.chat_template:
            return f"USER: {self.image_token}\n{text} ASSISTANT:"
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def _image_tokens(self, pixel_values: torch.Tensor, index: int) -> int:
        # The processor's own rule (patches + CLS - dropped CLS), cached per image size.
        size = tuple(pixel_values.shape[-2:])
        if size not in self._tokens_per_image:
            text = self.processor.replace_image_token({"pixel_values": pixel_values.float().numpy()}, index)
            self._tokens_per_image[size] = len(text) // len(self.image_token)
        return self._tokens_per_image[size]

    def _expand(self, ids: list[int], n_image_tokens: int) -> list[int]:
        # build_prompt puts exactly one image token in each prompt; it stands for all the image's features.
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * n_image_tokens + ids[at + 1:]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids, mask

    def _option_ids(self, rows: list[int], prompts: list[str], encoded: list[list[int]],
                    choices: list[list[str] | None]) -> list[list[list[int]] | None]:
        """Each scored row's option tokens as generation would continue its prompt (None: generate the row).

        An option's tokens depend only on the prompt's last line (a newline is a hard boundary
        for the tokenizers LLaVA uses), which the probe's prompts share; so each (last line,
        option) pair is tokenised once, in full context, and remembered. Call under the lock.
        """
        if len(self._option_cache) > 50_000:
            self._option_cache.clear()
        keys = {}
        for i in rows:
            sep = "" if prompts[i][-1:].isspace() else " "
            tail = prompts[i][prompts[i].rfind("\n") + 1:]
            for option in choices[i]:
                key = (tail, sep + option)
                if key not in self._option_cache and key not in keys:
                    keys[key] = i
        if keys:
            full = self.processor.tokenizer([prompts[i] + key[1] for key, i in keys.items()],
                                            padding=False, truncation=False)["input_ids"]
            for (key, i), ids in zip(keys.items(), full):
                found = choice_layout.option_token_ids(encoded[i], [ids])
                self._option_cache[key] = found[0] if found else None
        out: list[list[list[int]] | None] = []
        for i in rows:
            sep = "" if prompts[i][-1:].isspace() else " "
            tail = prompts[i][prompts[i].rfind("\n") + 1:]
            options = [self._option_cache[(tail, sep + option)] for option in choices[i]]
            out.append(None if any(o is None for o in options) else options)
        return out

    # -- CPU side ------------------------------------------------------------------------------
    def prepare(
        self,
        images: list[Image.Image],
        questions: list[str],
        choices: list[list[str] | None],
        image_keys: list[Hashable] | None = None,
        *,
        score_choices: bool | None = None,
    ) -> PreparedBatch:
        """Everything before the device, for one batch; safe to call from several threads.

        ``image_keys`` (e.g. the encoded bytes) mark rows that share an image; by default rows
        share an image when they pass the same PIL object. ``score_choices`` overrides the
        target's ``choice_mode`` for this batch.
        """
        if score_choices is None:
            score_choices = self.choice_mode == "score"
        check_batch(images, questions, choices)
        if image_keys is not None and len(image_keys) != len(images):
            raise ValueError("prepare() needs one image key per image")
        batch = PreparedBatch(size=len(images), pixel_values=None, image_index=[])
        if not images:
            return batch
        keys = image_keys if image_keys is not None else [id(im) for im in images]
        distinct: dict[Any, int] = {}
        unique_images = []
        for key, im in zip(keys, images):
            if key not in distinct:
                distinct[key] = len(unique_images)
                unique_images.append(im if im.mode == "RGB" else im.convert("RGB"))
            batch.image_index.append(distinct[key])
        pixel_values = self.processor.image_processor(images=unique_images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(self.dtype)
        if self._pin:
            # Pinned memory makes the copy to the GPU asynchronous. Pin under this rank's device:
            # a worker thread's current device is cuda:0, and pinning there would open a CUDA
            # context on GPU 0 from every rank.
            with torch.cuda.device(self.device):
                pixel_values = pixel_values.pin_memory()
        batch.pixel_values = pixel_values

        prompts = [self.build_prompt(q, c or None) for q, c in zip(questions, choices)]
        scored = [i for i, c in enumerate(choices) if c and score_choices]
        with self._tokenizer_lock:
            encoded = self.processor.tokenizer(prompts, padding=False, truncation=False)["input_ids"]
            option_ids = self._option_ids(scored, prompts, encoded, choices)
        n_image = self._image_tokens(pixel_values, 0)
        prompt_ids = [self._expand(ids, n_image) for ids in encoded]

        packed_prompts, packed_options = [], []
        for i, options in zip(scored, option_ids):
            if options is None:
                continue  # a merge across the prompt/option boundary: generate this row instead
            batch.choice_rows.append(i)
            batch.choices.append(list(choices[i]))
            packed_prompts.append(prompt_ids[i])
            packed_options.append(options)
        if batch.choice_rows:
            packed = choice_layout.pack(packed_prompts, packed_options, self.pad_id)
            batch.packed = {
                "input_ids": torch.tensor(packed.input_ids, dtype=torch.long),
                "position_ids": torch.tensor(packed.position_ids, dtype=torch.long),
                "segments": torch.tensor(packed.segments, dtype=torch.long),
                "score_row": torch.tensor(packed.score_row, dtype=torch.long),
                "score_col": torch.tensor(packed.score_col, dtype=torch.long),
                "score_token": torch.tensor(packed.score_token, dtype=torch.long),
            }
            batch.spans, batch.option_ids = packed.spans, packed.options
        chosen = set(batch.choice_rows)
        batch.open_rows = [i for i in range(len(images)) if i not in chosen]
        if batch.open_rows:
            batch.open_input_ids, batch.open_attention_mask = self._left_pad([prompt_ids[i] for i in batch.open_rows])
        return batch

    # -- device side ---------------------------------------------------------------------------
    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=self._pin)

    def _image_features(self, batch: PreparedBatch) -> list[torch.Tensor]:
        out = self.model.get_image_features(pixel_values=self._to_device(batch.pixel_values), return_dict=True)
        return list(out.pooler_output)

    @staticmethod
    def _encoded(features: list[torch.Tensor], image_index: list[int], rows: list[int]) -> dict[str, Any]:
        # Rows that share an image point at the same feature tensor: its vision tokens are computed once.
        return {"image": BaseModelOutputWithPooling(pooler_output=[features[image_index[r]] for r in rows])}

    def _score(self, batch: PreparedBatch, features: list[torch.Tensor]) -> tuple[list[str], list[list[float]]]:
        p = {k: self._to_device(v) for k, v in batch.packed.items()}
        mask = choice_layout.attention_mask(p["segments"], additive_dtype=self._additive_mask_dtype)
        hidden = self.model.model(
            input_ids=p["input_ids"],
            attention_mask=mask,
            position_ids=p["position_ids"],
            mm_encoder_outputs=self._encoded(features, batch.image_index, batch.choice_rows),
            use_cache=False,
        ).last_hidden_state
        # Logits only where an option token is predicted: the full vocabulary at every column
        # would cost (rows x columns x vocab) memory for nothing.
        logits = self.model.lm_head(hidden[p["score_row"], p["score_col"]]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        token_lp = logprobs.gather(1, p["score_token"][:, None])[:, 0].tolist()
        is_top = (logits.argmax(dim=-1) == p["score_token"]).tolist()
        picks, option_logprobs = [], []
        for options, spans, row_choices in zip(batch.option_ids, batch.spans, batch.choices):
            k = choice_layout.pick_option(options, [token_lp[a:b] for a, b in spans], [is_top[a:b] for a, b in spans])
            picks.append(row_choices[k])
            option_logprobs.append([sum(token_lp[a:b]) for a, b in spans])
        return picks, option_logprobs

    def _generate(self, batch: PreparedBatch, features: list[torch.Tensor]) -> list[str]:
        ids = self._to_device(batch.open_input_ids)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=self._to_device(batch.open_attention_mask),
            mm_encoder_outputs=self._encoded(features, batch.image_index, batch.open_rows),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        texts = self.processor.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return [t.strip() for t in texts]

    @torch.inference_mode()
    def run(self, batch: PreparedBatch) -> list[str]:
        """The device's work for a prepared batch: one answer per row, in order.

        For a row with choices the answer is the picked option, exactly as given.
        """
        if not batch.size:
            return []
        answers: list[str] = [""] * batch.size
        features = self._image_features(batch)
        if batch.choice_rows:
            for row, pick in zip(batch.choice_rows, self._score(batch, features)[0]):
                answers[row] = pick
        if batch.open_rows:
            for row, text in zip(batch.open_rows, self._generate(batch, features)):
                answers[row] = text
        return answers

    def answer(
        self,
        images: list[Image.Image],
        questions: list[str],
        choices: list[list[str] | None],
        image_keys: list[Hashable] | None = None,
    ) -> list[str]:
        """One answer per (image, question, choices), in order: :meth:`prepare` then :meth:`run`."""
        return self.run(self.prepare(images, questions, choices, image_keys))

    @torch.inference_mode()
    def choice_logprobs(
        self,
        images: list[Image.Image],
        questions: list[str],
        choices: list[list[str] | None],
        image_keys: list[Hashable] | None = None,
    ) -> list[list[float] | None]:
        """Per row, each option's log-likelihood after the prompt (summed over its tokens), in
        the order of its choices; None for a row without choices or one left to ``generate``."""
        batch = self.prepare(images, questions, choices, image_keys, score_choices=True)
        out: list[list[float] | None] = [None] * batch.size
        if batch.choice_rows:
            _, logprobs = self._score(batch, self._image_features(batch))
            for row, lp in zip(batch.choice_rows, logprobs):
                out[row] = lp
        return out
