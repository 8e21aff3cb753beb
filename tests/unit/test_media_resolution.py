"""media_resolution: sent per request kind, billed by the simulator as Gemini documents, estimated alike."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from pydantic import BaseModel

from vlmprobe.config import QAConfig
from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.batch.results import config_of
from vlmprobe.teacher.client import Teacher
from vlmprobe.teacher.request import contents_of, generation_config, request_body


class Echo(BaseModel):
    text: str


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


# (model, media_resolution) -> tokens of one 1000x800 image downscaled to 768 px (2x2 tiles unset on 2.x)
EXPECTED = {
    ("gemini-2.5-flash", "unspecified"): 4 * 258,
    ("gemini-2.5-flash", "low"): 64,
    ("gemini-2.5-flash", "medium"): 256,
    ("gemini-2.5-flash", "high"): 256,
    ("gemini-3-flash", "unspecified"): 1120,
    ("gemini-3-flash", "low"): 280,
    ("gemini-3-flash", "medium"): 560,
    ("gemini-3-flash", "high"): 1120,
}


@pytest.mark.parametrize("model,resolution", sorted(EXPECTED))
def test_the_simulator_bills_an_image_at_its_media_resolution_and_the_teacher_estimates_the_same(model, resolution):
    image = _png(1000, 800)
    prompt = "what colour is the square"  # 25 characters: 7 tokens

    async def ask(base_url: str):
        async with Teacher(model, api_key="k", base_url=base_url, media_resolution={"qa": resolution}) as teacher:
            result = await teacher.generate(prompt, Echo, images=[(image, "image/png")], kind="qa")
        contents = await contents_of(prompt, [(image, "image/png")], 768, model=model, media_resolution=resolution)
        return result, contents

    with GeminiSimulator(port=0) as sim:
        result, contents = asyncio.run(ask(sim.base_url))
    assert result.usage.prompt_tokens == 7 + EXPECTED[(model, resolution)] == contents.tokens


def test_another_kind_than_the_one_set_sends_no_media_resolution():
    image = _png(1000, 800)

    async def ask(base_url: str):
        async with Teacher("gemini-2.5-flash", api_key="k", base_url=base_url,
                           media_resolution={"verify": "low"}) as teacher:
            return [(await teacher.generate("p", Echo, images=[(image, "image/png")], kind=kind)).usage.prompt_tokens
                    for kind in ("verify", "factor")]

    with GeminiSimulator(port=0) as sim:
        verify, factor = asyncio.run(ask(sim.base_url))
    assert (verify, factor) == (1 + 64, 1 + 4 * 258)


def test_a_batch_line_carries_the_media_resolution_and_reads_back_into_a_config():
    config = generation_config(Echo, 0.2, 512, 0, media_resolution="medium")
    body = request_body(asyncio.run(contents_of("p", [], 768)).parts, config)
    assert body["generationConfig"]["mediaResolution"] == "MEDIA_RESOLUTION_MEDIUM"
    assert config_of(body)["media_resolution"] == "MEDIA_RESOLUTION_MEDIUM"
    assert "mediaResolution" not in request_body(asyncio.run(contents_of("p", [], 768)).parts,
                                                 generation_config(Echo, 0.2, 512, 0, media_resolution="unspecified"))


@pytest.mark.parametrize("concurrency,warned", [(16, True), (0, False), (128, False)])
def test_a_small_fixed_concurrency_at_flex_is_warned_about(monkeypatch, caplog, tmp_path, concurrency, warned):
    from vlmprobe.teacher.factory import make_teacher

    monkeypatch.setenv("GEMINI_API_KEY", "k")
    cfg = QAConfig(output_uri=str(tmp_path), run_date="2026-11-25", shard_index=0, concurrency=concurrency,
                   teacher_service_tier="flex")
    with caplog.at_level(logging.WARNING, logger="vlmprobe.teacher.factory"):
        teacher = make_teacher(cfg)
    assert teacher.service_tier == "flex"
    assert teacher.media_resolution == {"factor": "medium", "verify": "high", "qa": "medium"}
    assert ("use concurrency 0" in caplog.text) is warned


@pytest.mark.parametrize("tier,concurrency,expected", [("standard", 0, 64), ("flex", 0, 512), ("flex", 24, 24)])
def test_the_probe_holds_as_many_rows_with_the_teacher_as_its_tier_allows_in_flight(tmp_path, tier, concurrency,
                                                                                      expected):
    from vlmprobe.config import ProbeConfig
    from vlmprobe.probe.loop import RankProbe

    cfg = ProbeConfig(output_uri=str(tmp_path), run_date="2026-11-25", input_uri=str(tmp_path),
                      teacher_service_tier=tier, concurrency=concurrency)
    assert RankProbe(cfg, 0, target=None, journal=None).concurrency == expected


def test_a_request_with_an_image_is_written_for_a_batch_as_google_genai_sends_it_online():
    from vlmprobe.teacher.request import request_sha256

    image = _png(1000, 800)

    async def ask(base_url: str):
        async with Teacher("gemini-2.5-flash", api_key="k", base_url=base_url, media_resolution={"qa": "low"}) as t:
            await t.generate("hello", Echo, images=[(image, "image/png")], kind="qa")
        contents = await contents_of("hello", [(image, "image/png")], 768, model="gemini-2.5-flash",
                                     media_resolution="low")
        return request_body(contents.parts, generation_config(Echo, 0.2, 2048, 0, media_resolution="low"))

    with GeminiSimulator(port=0) as sim:
        body = asyncio.run(ask(sim.base_url))
        (entry,) = sim.request_log()
    assert request_sha256(body) == entry["sha256"]  # so a batch answer is the online answer
