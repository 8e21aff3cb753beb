"""Images as the teacher sends them: downscaled, re-encoded, and their input tokens estimated.

Without ``media_resolution`` Gemini 2.x bills an image by its size: one up to 384 px on both sides
costs 258 tokens; a larger one is cut into tiles, 258 tokens each. We estimate the tiles as
384 x 384 px (a slight overestimate for most shapes, which keeps the per-minute token share on
the safe side). With ``media_resolution`` (``GenerateContentConfig.media_resolution``) an image
costs a fixed number of tokens whatever its size (:data:`MEDIA_RESOLUTION_TOKENS`): on 2.x models
64 (low), 256 (medium) and 256 (high: "zoomed reframing"), as google-genai 3.6.1 documents
``types.MediaResolution``; on Gemini 3 models 280, 560 and 1120, unset meaning high (the Gemini API's
media-resolution page). The simulator bills the same (:mod:`vlmprobe.sim.request`).

:func:`prepare_image` bounds the long side by ``max_side`` (aspect kept, Lanczos). An image that
already fits is sent as it is when Gemini takes its format (PNG, JPEG, WEBP). Anything resized or
in another format is re-encoded: JPEG (quality 90) for opaque images, PNG when there is
transparency, so a photo does not balloon into a lossless PNG and a cut-out keeps its alpha.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from vlmprobe.images import PASSTHROUGH_MIME, unreadable_image

TOKENS_PER_TILE = 258
TILE_SIDE = 384
JPEG_QUALITY = 90


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    mime: str
    width: int
    height: int
    resized: bool

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)


# Tokens of one image at each media_resolution, by model family; a resolution missing from a
# family's row (unset, on 2.x) is billed by tiles.
MEDIA_RESOLUTION_TOKENS: dict[str, dict[str, int]] = {
    "gemini-3": {"low": 280, "medium": 560, "high": 1120, "unspecified": 1120},
    "gemini-2": {"low": 64, "medium": 256, "high": 256},
}


def resolution_tokens(model: str, resolution: str | None) -> int | None:
    """Tokens of one image of ``model`` at ``resolution`` (low, medium, high, unspecified or None),
    or None when it is billed by its size (tiles)."""
    name = model.strip().lower().removeprefix("models/")
    family = "gemini-3" if name.startswith("gemini-3") else "gemini-2"
    return MEDIA_RESOLUTION_TOKENS[family].get(resolution or "unspecified")


def image_tokens(width: int, height: int, model: str = "", resolution: str | None = None) -> int:
    """Estimated input tokens of a ``width`` x ``height`` image (for ``model`` at ``resolution``)."""
    fixed = resolution_tokens(model, resolution)
    if fixed is not None:
        return fixed
    if width <= TILE_SIDE and height <= TILE_SIDE:
        return TOKENS_PER_TILE
    return TOKENS_PER_TILE * math.ceil(width / TILE_SIDE) * math.ceil(height / TILE_SIDE)


def text_tokens(text: str) -> int:
    """Estimated input tokens of ``text``: about four characters a token."""
    return math.ceil(len(text) / 4)


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the long side at most ``max_side``, aspect kept, each side >= 1."""
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_image(data: bytes, mime: str, max_side: int) -> PreparedImage:
    """The image to send for ``data``. Raises ValueError when the bytes are no image PIL reads.

    ``max_side`` <= 0 keeps the size (the format is still normalised to one Gemini takes).
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        width, height = img.size
        size = fitted_size(width, height, max_side)
        passthrough = PASSTHROUGH_MIME.get(img.format or "")
        if size == (width, height) and passthrough is not None:
            return PreparedImage(data, passthrough, width, height, resized=False)
        if img.format == "JPEG":
            img.draft("RGB", size)  # let the decoder scale down by up to 8x: far less work for huge JPEGs
        img.load()
    except Exception as e:  # PIL raises several unrelated types for bad input
        raise unreadable_image(e) from e
    alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if alpha else "RGB")
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if alpha:
        img.save(buf, format="PNG", optimize=True)
        out_mime = "image/png"
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        out_mime = "image/jpeg"
    return PreparedImage(buf.getvalue(), out_mime, size[0], size[1], resized=size != (width, height))
