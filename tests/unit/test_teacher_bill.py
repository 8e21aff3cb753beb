"""What bounds the teacher's bill: the price table, image downscaling, thinking budgets."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from vlmprobe.teacher.imageprep import fitted_size, image_tokens, prepare_image, text_tokens
from vlmprobe.teacher.pricing import PRICES_AS_OF, PRICES_SOURCE, estimate_cost, price_of
from vlmprobe.teacher.request import thinking_budget_for


def _image(size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_prices_match_model_families_and_bill_cached_and_thinking_tokens():
    assert PRICES_AS_OF and PRICES_SOURCE.startswith("https://ai.google.dev/")
    assert price_of("gemini-2.5-flash-lite-preview-06-17") == price_of("gemini-2.5-flash-lite")
    assert price_of("models/gemini-2.5-flash-001") == price_of("gemini-2.5-flash")
    assert price_of("gemini-2.5-flash-lite") != price_of("gemini-2.5-flash")
    assert price_of("gemini-sim-flash") is None and estimate_cost("gemini-sim-flash", 10, 10) is None
    # 1M prompt tokens of which 400k cached, 100k output (thinking included) on 2.5 Flash
    assert estimate_cost("gemini-2.5-flash", 1_000_000, 100_000, cached_tokens=400_000) == pytest.approx(
        0.6 * 0.30 + 0.4 * 0.03 + 0.1 * 2.50)


def test_publish_reads_the_same_price_table():
    from vlmprobe.publish import costs  # publish prices a step there (what the steps recorded, else tokens)
    from vlmprobe.teacher import pricing

    assert costs.estimate_cost is pricing.estimate_cost


@pytest.mark.parametrize("size, expected", [
    ((8000, 6000), (768, 576)), ((1000, 3000), (256, 768)), ((768, 100), (768, 100)), ((5000, 1), (768, 1)),
])
def test_downscaling_keeps_the_aspect(size, expected):
    assert fitted_size(*size, 768) == expected
    assert fitted_size(*size, 0) == size


def test_a_large_image_is_downscaled_and_reencoded_a_small_one_sent_as_is():
    big = prepare_image(_image((3000, 2000), "PNG"), "image/png", 768)
    assert (big.width, big.height) == (768, 512) and big.resized and big.mime == "image/jpeg"
    assert Image.open(io.BytesIO(big.data)).size == (768, 512)
    small_bytes = _image((300, 200), "JPEG")
    small = prepare_image(small_bytes, "image/jpeg", 768)
    assert small.data == small_bytes and not small.resized and small.tokens == 258
    cutout = prepare_image(_image((2000, 1000), "PNG", "RGBA"), "image/png", 768)
    assert cutout.mime == "image/png" and Image.open(io.BytesIO(cutout.data)).mode == "RGBA"
    bmp = prepare_image(_image((100, 50), "BMP"), "image/bmp", 768)
    assert bmp.mime == "image/jpeg"  # a format Gemini does not take is re-encoded even when small
    with pytest.raises(ValueError, match="not a readable image"):
        prepare_image(b"not an image", "image/png", 768)


def test_token_estimates():
    assert image_tokens(384, 384) == 258 and image_tokens(385, 100) == 2 * 258
    assert image_tokens(768, 576) == 2 * 2 * 258
    assert text_tokens("abcd") == 1 and text_tokens("abcde") == 2


@pytest.mark.parametrize("model, asked, sent", [
    ("gemini-2.5-flash", 0, 0), ("gemini-2.5-flash", 100_000, 24_576), ("gemini-2.5-flash", -1, -1),
    ("gemini-2.5-pro", 0, 128), ("gemini-2.5-pro", 1000, 1000),  # Pro cannot stop thinking
    ("gemini-2.5-flash-lite", 0, 0), ("gemini-2.5-flash-lite", 100, 512),
    ("gemini-2.0-flash", 0, None),  # does not think: nothing sent
    ("gemini-sim-flash", 0, 0), ("gemini-2.5-flash", None, None),
])
def test_thinking_budget_per_model(model, asked, sent):
    assert thinking_budget_for(model, asked) == sent
