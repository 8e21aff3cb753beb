"""What a teacher request asks Gemini for: its contents, the HTTP options and the generation config.

The contents are the images (downscaled first, :mod:`vlmprobe.teacher.imageprep`) and then the
prompt, with an estimate of their prompt tokens for the per-minute token quota.

The config asks for JSON of a pydantic schema (:func:`~vlmprobe.teacher.answers.response_schema`)
and bounds the bill: ``thinking_budget`` (0 by default: no thinking where the model allows it;
2.5 Pro cannot stop thinking and is clamped to its minimum of 128, see
:func:`thinking_budget_for`) and ``max_output_tokens`` per request kind (``factor``, ``verify``,
``qa``; thinking counts against it on 2.5 models, so the budget is added on top).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.genai import types
from pydantic import BaseModel

from vlmprobe.teacher.answers import response_schema
from vlmprobe.teacher.imageprep import image_tokens, prepare_image, text_tokens

DEFAULT_MAX_OUTPUT_TOKENS: dict[str, int] = {"factor": 1024, "verify": 512, "qa": 2048}


@dataclass
class Contents:
    """A request's parts (images first, then the prompt) and their estimated prompt tokens;
    ``sent_as_is`` says why an image could not be prepared (it goes as it is: Gemini judges it)."""

    parts: list[Any]
    tokens: int
    sent_as_is: list[str] = field(default_factory=list)


async def contents_of(prompt: str, images: Sequence[tuple[bytes, str]], image_max_side: int) -> Contents:
    """The contents for ``prompt`` about ``images`` ((bytes, mime) pairs), each image downscaled
    to ``image_max_side`` (0: as it is) in a worker thread."""
    parts, tokens, sent_as_is = [], 0, []
    for data, mime in images:
        if mime.startswith("image/") and image_max_side > 0:
            try:
                prepared = await asyncio.to_thread(prepare_image, data, mime, image_max_side)
            except ValueError as e:  # let Gemini judge it: a 400 becomes this record's error row
                sent_as_is.append(str(e))
            else:
                parts.append(types.Part.from_bytes(data=prepared.data, mime_type=prepared.mime))
                tokens += prepared.tokens
                continue
        parts.append(types.Part.from_bytes(data=data, mime_type=mime))
        tokens += image_tokens(1, 1)
    return Contents([*parts, types.Part.from_text(text=prompt)], text_tokens(prompt) + tokens, sent_as_is)


def thinking_budget_for(model: str, budget: int | None) -> int | None:
    """The thinking budget to send for ``model``: None sends none (the model's default, or a model
    that does not think). 2.5 Pro cannot turn thinking off: 0 (or less than 128) becomes its
    minimum, 128. 2.5 Flash-Lite thinks with 512 or more, or not at all. -1 asks for dynamic thinking."""
    if budget is None:
        return None
    name = model.strip().lower().removeprefix("models/")
    if name.startswith(("gemini-1.", "gemini-2.0")):
        return None
    if name.startswith("gemini-2.5-pro"):
        return budget if budget == -1 else min(max(budget, 128), 32768)
    if name.startswith("gemini-2.5-flash-lite"):
        return budget if budget in (-1, 0) else min(max(budget, 512), 24576)
    if name.startswith("gemini-2.5-flash"):
        return budget if budget == -1 else min(max(budget, 0), 24576)
    return budget


def http_options(base_url: str | None, timeout_s: float, session: Any) -> types.HttpOptions:
    """One attempt per call, ``timeout_s`` long, over ``session`` (an aiohttp session, or None)."""
    return types.HttpOptions(
        base_url=base_url,
        api_version="v1beta",
        timeout=int(timeout_s * 1000),  # milliseconds
        # One attempt: our policy retries. Without retry_options the SDK's aiohttp path
        # silently retries connection errors once after sleeping 1-10 s.
        retry_options=types.HttpRetryOptions(attempts=1),
        aiohttp_client=session,
    )


def generation_config(schema: type[BaseModel], temperature: float, max_output: int | None,
                      thinking_budget: int | None) -> types.GenerateContentConfig:
    """JSON of ``schema``; ``max_output`` answer tokens (None: the model's cap) with room for
    ``thinking_budget`` (None: none sent) on top."""
    thinking = None
    if thinking_budget is not None:
        thinking = types.ThinkingConfig(thinking_budget=thinking_budget)
        if max_output is not None and thinking_budget != 0:
            # Thinking counts against max_output_tokens on 2.5 models: give it room on top.
            max_output += thinking_budget if thinking_budget > 0 else 8192
    return types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=response_schema(schema),
        temperature=temperature, max_output_tokens=max_output, thinking_config=thinking,
    )
