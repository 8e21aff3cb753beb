"""Reading a generateContent request: its prompt text and its input tokens.

The text comes from ``contents`` and the system instruction; each media part costs what Gemini
charges for it: without ``generationConfig.mediaResolution``, 258 tokens per image up to 384 px and
per 384 px tile of a larger one (Gemini 2.x); with it, a fixed count per image whatever its size
(:data:`MEDIA_RESOLUTION_TOKENS`: on 2.x models 64 low, 256 medium, 256 high, as google-genai 3.6.1
documents ``types.MediaResolution``; on Gemini 3 models 280, 560 and 1120, unset meaning high, as the
Gemini API's media-resolution page says). A body Gemini would refuse raises :class:`BadRequest`,
answered 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from vlmprobe.sim.protocol import lookup

_MEDIA_PREFIXES = ("image/", "video/", "audio/", "text/", "application/pdf")
TOKENS_PER_IMAGE = 258  # per image up to 384 px on both sides, and per 384 px tile of a larger one
TILE_SIDE = 384
# Tokens per image at each media resolution, by model family; unset on 2.x: by tiles.
MEDIA_RESOLUTION_TOKENS = {
    "gemini-3": {"MEDIA_RESOLUTION_LOW": 280, "MEDIA_RESOLUTION_MEDIUM": 560, "MEDIA_RESOLUTION_HIGH": 1120,
                 None: 1120},
    "gemini-2": {"MEDIA_RESOLUTION_LOW": 64, "MEDIA_RESOLUTION_MEDIUM": 256, "MEDIA_RESOLUTION_HIGH": 256},
}


class BadRequest(Exception):
    """The body is not a request Gemini would accept: answered 400 INVALID_ARGUMENT."""


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, JPEG or WEBP header; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] == b"GIF8" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + length
    return None


def media_resolution(body: Any) -> str | None:
    """The request's ``generationConfig.mediaResolution`` (``MEDIA_RESOLUTION_LOW``...), None when unset
    or MEDIA_RESOLUTION_UNSPECIFIED."""
    config = lookup(body, "generationConfig") if isinstance(body, dict) else None
    value = lookup(config, "mediaResolution") if isinstance(config, dict) else None
    value = str(value).upper() if isinstance(value, str) else None
    return None if value in (None, "MEDIA_RESOLUTION_UNSPECIFIED") else value


def media_tokens(data: bytes, resolution: str | None = None, model: str = "") -> int:
    """Input tokens of one media part for ``model`` at ``resolution``: a fixed count per image when the
    resolution (or the model's default) fixes one, else 258 per 384 px tile of an image, 258 for
    anything else."""
    family = "gemini-3" if model.lower().removeprefix("models/").startswith("gemini-3") else "gemini-2"
    fixed = MEDIA_RESOLUTION_TOKENS[family].get(resolution)
    if fixed is not None:
        return fixed
    size = _image_size(data)
    if size is None or (size[0] <= TILE_SIDE and size[1] <= TILE_SIDE):
        return TOKENS_PER_IMAGE
    return TOKENS_PER_IMAGE * math.ceil(size[0] / TILE_SIDE) * math.ceil(size[1] / TILE_SIDE)


def read_prompt(body: Any, model: str = "") -> tuple[str, int]:
    """The request's text (contents and system instruction) and the input tokens of its media parts
    (billed for ``model`` at the request's media resolution)."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    texts: list[str] = []
    media = 0
    resolution = media_resolution(body)
    system = lookup(body, "systemInstruction")
    blocks = [*contents, *([system] if isinstance(system, dict) else [])]
    for block in blocks:
        parts = block.get("parts") if isinstance(block, dict) else None
        if not isinstance(parts, list) or not parts:
            raise BadRequest("* GenerateContentRequest.contents.parts: contents.parts must not be empty.")
        for part in parts:
            if not isinstance(part, dict):
                raise BadRequest("Each part must be a JSON object.")
            inline = lookup(part, "inlineData")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(inline, dict):
                mime = str(lookup(inline, "mimeType") or "")
                if not mime.startswith(_MEDIA_PREFIXES):
                    raise BadRequest(f"Unsupported MIME type: {mime or '(none)'}")
                try:
                    # google-genai sends URL-safe base64 (-_), other clients the standard one (+/).
                    data = str(inline.get("data", "")).replace("-", "+").replace("_", "/")
                    decoded = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    raise BadRequest("Invalid value at 'contents.parts.inline_data.data': not base64.") from None
                media += media_tokens(decoded, resolution, model)
            elif isinstance(lookup(part, "fileData"), dict):
                media += media_tokens(b"", resolution, model)
            else:
                raise BadRequest("A part must hold text, inlineData or fileData.")
    return "\n".join(texts), media
