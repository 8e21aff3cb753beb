"""Decoding input images and preparing them for the teacher."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

# Formats Gemini accepts as they are (PIL format -> MIME type); anything else is re-encoded.
# The teacher's image preparation (vlmprobe.teacher.imageprep) passes the same ones through.
PASSTHROUGH_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def unreadable_image(e: Exception) -> ValueError:
    """The error for bytes PIL cannot read as an image, the same wherever images are read."""
    return ValueError(f"not a readable image ({type(e).__name__}: {e})")


def decode(data: bytes) -> tuple[Image.Image, bytes, str]:
    """(RGB image, bytes to send, their MIME type). Raises ValueError for bytes that are no image."""
    from PIL import Image  # here, so that importing the table does not import PIL

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several unrelated types for bad input
        raise unreadable_image(e) from e
    mime = PASSTHROUGH_MIME.get(img.format or "")
    rgb = img.convert("RGB")
    if mime is None:
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return rgb, data, mime
