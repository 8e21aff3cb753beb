"""Input images: which formats go to the teacher as they are, and which are re-encoded."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from vlmprobe.images import decode
from vlmprobe.teacher.imageprep import prepare_image


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_formats_gemini_takes_pass_through_both_paths_unchanged(fmt, mime):
    data = _encoded(fmt)
    image, sent, sent_mime = decode(data)
    assert (sent, sent_mime) == (data, mime) and image.mode == "RGB" and image.size == (20, 10)
    prepared = prepare_image(data, "application/octet-stream", 768)
    assert (prepared.data, prepared.mime, prepared.resized) == (data, mime, False)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_other_formats_are_reencoded_on_both_paths(fmt):
    data = _encoded(fmt)
    _, sent, sent_mime = decode(data)
    assert sent != data and sent_mime == "image/png" and Image.open(io.BytesIO(sent)).format == "PNG"
    prepared = prepare_image(data, f"image/{fmt.lower()}", 768)
    assert prepared.data != data and prepared.mime == "image/jpeg"


def test_importing_the_image_modules_does_not_import_pil():
    code = "import sys, vlmprobe.images, vlmprobe.teacher.imageprep; assert 'PIL' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bytes_that_are_no_image_are_refused_alike_on_both_paths():
    said = r"^not a readable image \(UnidentifiedImageError: cannot identify image file <_io.BytesIO object at "
    with pytest.raises(ValueError, match=said):
        decode(b"not an image")
    with pytest.raises(ValueError, match=said):
        prepare_image(b"not an image", "image/png", 768)
