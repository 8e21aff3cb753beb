"""Decoding input images and preparing them for the teacher."""

from __future__ import annotations

import io

from PIL import Image

# Formats Gemini accepts as they are; anything else is re-encoded as PNG.
_PASSTHROUGH = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def decode(data: bytes) -> tuple[Image.Image, bytes, str]:
    """(RGB image, bytes to send, their MIME type). Raises ValueError for bytes that are no image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several unrelated types for bad input
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from e
    mime = _PASSTHROUGH.get(img.format or "")
    rgb = img.convert("RGB")
    if mime is None:
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return rgb, data, mime
