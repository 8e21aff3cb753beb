"""What a teacher request asks Gemini for: its contents, the HTTP options and the generation config.

The contents are the images (downscaled first, :mod:`vlmprobe.teacher.imageprep`) and then the
prompt, with an estimate of their prompt tokens for the per-minute token quota.

The config asks for JSON of a pydantic schema (:func:`~vlmprobe.teacher.answers.response_schema`)
and bounds the bill: ``thinking_budget`` (0 by default: no thinking where the model allows it;
2.5 Pro cannot stop thinking and is clamped to its minimum of 128, see
:func:`thinking_budget_for`) and ``max_output_tokens`` per request kind (``factor``, ``verify``,
``qa``; thinking counts against it on 2.5 models, so the budget is added on top). A service tier
other than standard is sent as ``service_tier`` (google-genai 3.6.1 puts it top-level in the body,
``"serviceTier": "flex"``); standard sends nothing, so a standard request is the same bytes as
before the tiers existed. A ``media_resolution`` (low, medium, high) is sent as
``generationConfig.mediaResolution`` and sets what each image costs
(:data:`~vlmprobe.teacher.imageprep.MEDIA_RESOLUTION_TOKENS`); unspecified sends nothing.

:func:`request_body` writes the same request as the JSON google-genai would send for it (the
``request`` of a Batch API line); :func:`request_sha256` is the hash of its canonical form, by
which a batch answer is matched back to the request it answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.genai import types
from pydantic import BaseModel

try:  # google-genai uses aiohttp as its transport when it is installed, else httpx
    import aiohttp
except ImportError:  # pragma: no cover - the probe/qa extras install google-genai[aiohttp]
    aiohttp = None  # type: ignore[assignment]

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


async def contents_of(prompt: str, images: Sequence[tuple[bytes, str]], image_max_side: int, *,
                      model: str = "", media_resolution: str | None = None) -> Contents:
    """The contents for ``prompt`` about ``images`` ((bytes, mime) pairs), each image downscaled
    to ``image_max_side`` (0: as it is) in a worker thread; tokens estimated for ``model`` at
    ``media_resolution``."""
    parts, tokens, sent_as_is = [], 0, []
    for data, mime in images:
        if mime.startswith("image/") and image_max_side > 0:
            try:
                prepared = await asyncio.to_thread(prepare_image, data, mime, image_max_side)
            except ValueError as e:  # let Gemini judge it: a 400 becomes this record's error row
                sent_as_is.append(str(e))
            else:
                parts.append(types.Part.from_bytes(data=prepared.data, mime_type=prepared.mime))
                tokens += image_tokens(prepared.width, prepared.height, model, media_resolution)
                continue
        parts.append(types.Part.from_bytes(data=data, mime_type=mime))
        tokens += image_tokens(1, 1, model, media_resolution)
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


def media_resolution_of(name: str | None) -> types.MediaResolution | None:
    """The SDK's value for ``low``, ``medium`` or ``high``; None (nothing sent) for unspecified or None."""
    if name in (None, "", "unspecified"):
        return None
    return types.MediaResolution(f"MEDIA_RESOLUTION_{name.upper()}")


def generation_config(schema: type[BaseModel], temperature: float, max_output: int | None,
                      thinking_budget: int | None, service_tier: str = "standard",
                      media_resolution: str | None = None) -> types.GenerateContentConfig:
    """JSON of ``schema``; ``max_output`` answer tokens (None: the model's cap) with room for
    ``thinking_budget`` (None: none sent) on top; ``service_tier`` sent unless it is standard;
    ``media_resolution`` (low, medium, high) sent unless unspecified."""
    thinking = None
    if thinking_budget is not None:
        thinking = types.ThinkingConfig(thinking_budget=thinking_budget)
        if max_output is not None and thinking_budget != 0:
            # Thinking counts against max_output_tokens on 2.5 models: give it room on top.
            max_output += thinking_budget if thinking_budget > 0 else 8192
    tier = None if service_tier == "standard" else types.ServiceTier(service_tier)
    return types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=response_schema(schema),
        temperature=temperature, max_output_tokens=max_output, thinking_config=thinking, service_tier=tier,
        media_resolution=media_resolution_of(media_resolution),
    )


# GenerateContentConfig fields that google-genai sends inside ``generationConfig``, with their names
# there; request_body refuses a config that sets anything else (it would be sent elsewhere).
_GENERATION_FIELDS = {
    "response_mime_type": "responseMimeType", "response_json_schema": "responseJsonSchema",
    "temperature": "temperature", "max_output_tokens": "maxOutputTokens", "thinking_config": "thinkingConfig",
    "media_resolution": "mediaResolution",
}


def _part_json(part: types.Part) -> dict[str, Any]:
    if part.text is not None:
        return {"text": part.text}
    if part.inline_data is not None and part.inline_data.data is not None:
        # google-genai sends bytes as URL-safe base64, and the Blob's fields as it dumps them
        # (mime_type in snake_case, as thinking_config): a batch line is the online body, byte for byte.
        data = base64.urlsafe_b64encode(part.inline_data.data).decode("ascii")
        return {"inlineData": {"data": data, "mime_type": part.inline_data.mime_type}}
    raise ValueError("request_body writes text and inline-data parts only.")


def request_body(parts: Sequence[types.Part], config: types.GenerateContentConfig) -> dict[str, Any]:
    """The generateContent request body google-genai 3.6.1 sends for ``parts`` and ``config`` (as one
    user turn), as a JSON-able dict: the ``request`` of a Batch API line. Service tiers are not
    part of it (a batch is its own mode); raises ValueError for a config field it does not write."""
    extra = sorted(name for name in config.model_fields_set - set(_GENERATION_FIELDS) - {"service_tier"}
                   if getattr(config, name) is not None)
    if extra:
        raise ValueError(f"request_body cannot write these config fields: {', '.join(extra)}.")
    generation: dict[str, Any] = {}
    for name, wire in _GENERATION_FIELDS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if name == "thinking_config":
            # google-genai passes this object through as it dumps it: field names in snake_case
            # ({"thinking_budget": 0}), which Gemini's JSON parser takes as well as camelCase.
            value = value.model_dump(mode="json", exclude_none=True)
        elif name == "media_resolution":
            value = value.value  # the enum's name, as the SDK sends it
        generation[wire] = value
    body: dict[str, Any] = {"contents": [{"parts": [_part_json(p) for p in parts], "role": "user"}]}
    if generation:
        body["generationConfig"] = generation
    return body


def request_sha256(body: dict[str, Any]) -> str:
    """SHA-256 of ``body``'s canonical JSON (sorted keys, no spaces): the same digest the simulator
    logs for a request."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def open_client(api_key: str, base_url: str | None, timeout_s: float, pool: int) -> tuple[Any, Any]:
    """(a google-genai client, its aiohttp session or None): one per process, closed by :func:`close_client`.

    Our own session, with a pool of ``pool`` connections and closed by us: the SDK's own subclasses
    aiohttp.ClientSession, which aiohttp >= 3.14 deprecates with a warning.
    """
    from google import genai

    session = None
    if aiohttp is not None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool), trust_env=True)
    client = genai.Client(api_key=api_key, vertexai=False, http_options=http_options(base_url, timeout_s, session))
    return client, session


async def close_client(client: Any, session: Any) -> None:
    """Close what :func:`open_client` opened (either may be None)."""
    if client is not None:
        await client.aio.aclose()
        client.close()
    if session is not None:
        await session.close()
