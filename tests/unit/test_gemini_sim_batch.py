"""The simulator's Batch API, File API and service tiers, driven by the real google-genai client."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager

import aiohttp
import pytest
from google import genai
from google.genai import errors
from pydantic import BaseModel

from vlmprobe.sim import GeminiSimulator
from vlmprobe.sim import cli as sim_cli
from vlmprobe.teacher.request import http_options

MODEL = "gemini-sim-flash"
SECRET = "sk-sim-batch-secret-0077"


class Echo(BaseModel):
    text: str


@asynccontextmanager
async def _sdk(sim: GeminiSimulator):
    """The real client on our own aiohttp session (as the Teacher opens it)."""
    session = aiohttp.ClientSession()
    client = genai.Client(api_key=SECRET, http_options=http_options(sim.base_url, 30, session))
    try:
        yield client.aio
    finally:
        await client.aio.aclose()
        client.close()
        await session.close()


def _request(prompt: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": Echo.model_json_schema(),
                                 "thinkingConfig": {"thinkingBudget": 0}}}


def _jsonl(n: int) -> bytes:
    return "".join(json.dumps({"key": f"k{i:03d}", "request": _request(f"prompt number {i} about zebras")}) + "\n"
                   for i in range(n)).encode()


async def _file_job(aio, data: bytes, display_name: str = "job"):
    uploaded = await aio.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl", "display_name": "in"})
    return await aio.batches.create(model=MODEL, src=uploaded.name, config={"display_name": display_name})


async def _results(aio, job) -> list[dict]:
    job = await aio.batches.get(name=job.name)
    return [json.loads(line) for line in (await aio.files.download(file=job.dest.file_name)).splitlines()]


def _post(sim: GeminiSimulator, body: dict) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{sim.base_url}/v1beta/models/{MODEL}:generateContent",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "x-goog-api-key": SECRET})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read()), dict(e.headers)


# -------------------------------------------------------------------------------- the File API


# google-genai posts each 8 MB chunk as bytes, which aiohttp warns about above 1 MiB.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
def test_a_file_uploads_in_chunks_and_results_download_as_written():
    data = b"".join(b'{"key": "k%07d", "request": {}}\n' % i for i in range(300_000))  # over one 8 MB chunk
    assert len(data) > 8 * 1024 * 1024
    with GeminiSimulator(port=0) as sim:
        async def roundtrip():
            async with _sdk(sim) as aio:
                uploaded = await aio.files.upload(file=io.BytesIO(data),
                                                  config={"mime_type": "jsonl", "display_name": "big input"})
                return uploaded, sim.files.get(uploaded.name)

        uploaded, stored = asyncio.run(roundtrip())
        assert uploaded.name.startswith("files/") and uploaded.size_bytes == len(data)
        assert uploaded.display_name == "big input" and stored.data == data
        assert sim.batch_stats()["files_uploaded"] == 1


# -------------------------------------------------------------------------------- the Batch API


def test_a_job_goes_pending_running_succeeded_and_its_results_carry_keys_and_usage():
    with GeminiSimulator(port=0, batch_pending_s=0.3, batch_running_s=0.3) as sim:
        async def lifecycle():
            async with _sdk(sim) as aio:
                job = await _file_job(aio, _jsonl(5), "vlmprobe-x-j00")
                states = [job.state.name]
                for wait in (0.0, 0.35, 0.35):
                    await asyncio.sleep(wait)
                    states.append((await aio.batches.get(name=job.name)).state.name)
                return job, states, await _results(aio, job)

        job, states, results = asyncio.run(lifecycle())
    assert job.display_name == "vlmprobe-x-j00" and job.name.startswith("batches/")
    assert states == ["JOB_STATE_PENDING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    assert sorted(r["key"] for r in results) == [f"k{i:03d}" for i in range(5)]
    assert all(r["response"]["usageMetadata"]["promptTokenCount"] > 0 for r in results)
    assert all(Echo.model_validate_json(r["response"]["candidates"][0]["content"]["parts"][0]["text"]) for r in results)


def test_a_jobs_answer_is_the_one_generate_content_gives_the_same_body():
    with GeminiSimulator(port=0, seed=3) as sim:
        async def batch():
            async with _sdk(sim) as aio:
                return await _results(aio, await _file_job(aio, _jsonl(3)))

        results = {r["key"]: r["response"] for r in asyncio.run(batch())}
        for i in range(3):
            status, online, _ = _post(sim, _request(f"prompt number {i} about zebras"))
            assert status == 200
            text = results[f"k{i:03d}"]["candidates"][0]["content"]["parts"][0]["text"]
            assert text == online["candidates"][0]["content"]["parts"][0]["text"]
            assert results[f"k{i:03d}"]["usageMetadata"] == online["usageMetadata"]


def test_errors_shuffling_and_faults_are_seeded_and_per_request():
    def run(seed: int, **options) -> tuple[list[str], list[dict]]:
        with GeminiSimulator(port=0, seed=seed, **options) as sim:
            async def go():
                async with _sdk(sim) as aio:
                    return await _results(aio, await _file_job(aio, _jsonl(60)))

            results = asyncio.run(go())
            return [r["key"] for r in results], results

    order, results = run(5, batch_shuffle=True, batch_error_rate=0.25)
    again, same = run(5, batch_shuffle=True, batch_error_rate=0.25)
    plain, _ = run(5)
    assert (order, results) == (again, same) and plain == sorted(plain) and order != plain
    assert sorted(order) == plain
    errors_ = [r["error"] for r in results if "error" in r]
    assert 5 <= len(errors_) <= 30 and {e["code"] for e in errors_} <= {429, 500, 503}
    assert all("response" in r or "error" in r for r in results)


def test_inline_responses_echo_metadata_unless_turned_off():
    src = [{"contents": [{"role": "user", "parts": [{"text": f"inline {i}"}]}], "metadata": {"key": f"m{i}"}}
           for i in range(4)]

    def run(**options):
        with GeminiSimulator(port=0, **options) as sim:
            async def go():
                async with _sdk(sim) as aio:
                    job = await aio.batches.create(model=MODEL, src=src, config={"display_name": "inline"})
                    return await aio.batches.get(name=job.name)

            return asyncio.run(go()).dest.inlined_responses

    echoed = run(batch_shuffle=True)
    assert sorted(r.metadata["key"] for r in echoed) == ["m0", "m1", "m2", "m3"]
    assert all(r.response.usage_metadata.prompt_token_count > 0 for r in echoed)
    assert all(r.metadata is None for r in run(batch_inline_metadata=False))


def test_jobs_expire_fail_stay_pending_cancel_list_and_delete():
    with GeminiSimulator(port=0, batch_expire=1, batch_fail=1) as sim:
        async def go():
            async with _sdk(sim) as aio:
                jobs = [await _file_job(aio, _jsonl(2), f"job-{i}") for i in range(3)]
                got = [await aio.batches.get(name=j.name) for j in jobs]
                listed = [j.display_name async for j in await aio.batches.list(config={"page_size": 10})]
                await aio.batches.delete(name=jobs[2].name)
                with pytest.raises(errors.APIError) as gone:
                    await aio.batches.get(name=jobs[2].name)
                return got, listed, gone.value.code

        got, listed, gone = asyncio.run(go())
        failed_op = sim.batches.jobs[got[1].name.split("/")[1]].operation()
    assert [j.state.name for j in got] == ["JOB_STATE_EXPIRED", "JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED"]
    assert got[0].dest is None and got[1].dest is None and got[2].dest.file_name
    assert "Simulated batch failure" in failed_op["error"]["message"]  # the SDK drops it: the raw has it
    assert sorted(listed) == ["job-0", "job-1", "job-2"] and gone == 404

    with GeminiSimulator(port=0, batch_stay_pending=True) as sim:
        async def stuck():
            async with _sdk(sim) as aio:
                job = await _file_job(aio, _jsonl(2))
                await asyncio.sleep(0.1)
                before = (await aio.batches.get(name=job.name)).state.name
                await aio.batches.cancel(name=job.name)
                return before, (await aio.batches.get(name=job.name)).state.name

        assert asyncio.run(stuck()) == ("JOB_STATE_PENDING", "JOB_STATE_CANCELLED")
        assert sim.batch_stats()["cancels"] == 1 and sim.batch_log() == []


def test_a_bad_create_is_refused_like_gemini():
    with GeminiSimulator(port=0, models=[MODEL]) as sim:
        async def go():
            async with _sdk(sim) as aio:
                codes = []
                for model, src, config in ((MODEL, "files/nothere", {"display_name": "x"}),
                                           (MODEL, [{"contents": "hi"}], {}),
                                           ("gemini-9", [{"contents": "hi"}], {"display_name": "x"})):
                    with pytest.raises(errors.APIError) as refused:
                        await aio.batches.create(model=model, src=src, config=config)
                    codes.append(refused.value.code)
                return codes

        assert asyncio.run(go()) == [400, 400, 404]


# -------------------------------------------------------------------------------- service tiers


def test_flex_waits_is_shed_with_503_and_names_the_tier_served():
    flex = {**_request("a flex question about owls"), "serviceTier": "flex"}
    with GeminiSimulator(port=0, flex_latency_s=0.2) as sim:
        started = time.monotonic()
        status, body, headers = _post(sim, flex)
        waited = time.monotonic() - started
        assert status == 200 and headers["x-gemini-service-tier"] == "flex" and waited >= 0.1
        assert sim.request_log()[-1]["service_tier"] == "flex"
    with GeminiSimulator(port=0, flex_shed_rate=1.0) as sim:
        status, body, headers = _post(sim, flex)
        assert status == 503 and body["error"]["status"] == "UNAVAILABLE"
        assert sim.request_log()[-1]["outcome"] == "flex_shed"
    with GeminiSimulator(port=0, priority_downgrade_rate=1.0) as sim:
        status, _, headers = _post(sim, {**flex, "serviceTier": "priority"})
        assert status == 200 and headers["x-gemini-service-tier"] == "standard"


def test_a_standard_request_is_answered_as_before_whatever_the_new_settings():
    body = _request("a standard question about owls")
    new = {"flex_latency_s": 0.5, "flex_shed_rate": 1.0, "priority_downgrade_rate": 1.0, "batch_error_rate": 1.0,
           "batch_shuffle": True, "batch_expire": 3}
    answers = []
    for options in ({}, new):
        with GeminiSimulator(port=0, seed=11, rate_503=0.3, rate_malformed=0.2, **options) as sim:
            replies = [_post(sim, body) for _ in range(8)]
            answers.append(([(s, b) for s, b, _ in replies], [h.get("x-gemini-service-tier") for _, _, h in replies],
                            [{k: e[k] for k in ("n", "status", "outcome", "sha256")} for e in sim.request_log()]))
    assert answers[0] == answers[1] and answers[1][1] == [None] * 8


def test_the_cli_passes_the_new_flags_to_the_simulator(monkeypatch):
    seen = {}
    monkeypatch.setattr(sim_cli, "serve", lambda **options: seen.update(options))
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    args = parser.parse_args(["--flex-latency-s", "2", "--flex-shed-rate", "0.1", "--priority-downgrade-rate", "0.2",
                              "--batch-pending-s", "3", "--batch-running-s", "4", "--batch-stay-pending",
                              "--batch-expire", "1", "--batch-fail", "2", "--batch-error-rate", "0.1",
                              "--batch-shuffle", "--batch-no-inline-metadata"])
    assert sim_cli.main(args) == 0
    assert {k: seen[k] for k in ("flex_latency_s", "flex_shed_rate", "priority_downgrade_rate", "batch_pending_s",
                                 "batch_running_s", "batch_stay_pending", "batch_expire", "batch_fail",
                                 "batch_error_rate", "batch_shuffle", "batch_inline_metadata")} == {
        "flex_latency_s": 2.0, "flex_shed_rate": 0.1, "priority_downgrade_rate": 0.2, "batch_pending_s": 3.0,
        "batch_running_s": 4.0, "batch_stay_pending": True, "batch_expire": 1, "batch_fail": 2,
        "batch_error_rate": 0.1, "batch_shuffle": True, "batch_inline_metadata": False}
    defaults = parser.parse_args([])
    seen.clear()
    sim_cli.main(defaults)
    GeminiSimulator(**{k: v for k, v in seen.items() if k not in ("port_file",)})  # the defaults are valid
    with pytest.raises(ValueError, match="batch_error_rate"):
        GeminiSimulator(batch_error_rate=2.0)
