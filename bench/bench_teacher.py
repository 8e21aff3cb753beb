"""Throughput of ``Teacher.generate`` against the Gemini simulator, as a ratio to the ideal.

With a server latency L and C requests in flight, the ideal is C / L requests per second. This
runs the simulator on loopback at 200 ms mean latency and the Teacher at concurrency 20 and 100
(a few hundred requests each, after a warm-up wave that opens the connections), all in this
process, and prints requests/s and the ratio to the ideal. A ``raw-http`` line sends the same
requests with plain aiohttp: the gap between the two is the client's own cost (google-genai
spends a few ms of CPU per call). Finishes in well under a minute.

    python bench/bench_teacher.py
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from pydantic import BaseModel, Field

from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.client import Teacher


class Answer(BaseModel):
    answer_type: str
    choices: list[str] = Field(max_length=4)
    answer: str
    verified: bool


async def _raw_throughput(base_url: str, concurrency: int, waves: int) -> tuple[int, float]:
    """The same requests as plain aiohttp POSTs: what the simulator and the tail allow."""
    body = {
        "contents": [{"parts": [{"text": "What is in the image?"}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": Answer.model_json_schema()},
    }
    url = f"{base_url}/v1beta/models/gemini-sim:generateContent"
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post() -> None:
            async with limit, session.post(url, json=body, headers={"x-goog-api-key": "bench"}) as response:
                response.raise_for_status()
                await response.read()

        await asyncio.gather(*(post() for _ in range(concurrency)))
        n = concurrency * waves
        started = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(n)))
        return n, time.perf_counter() - started


async def _throughput(base_url: str, concurrency: int, waves: int) -> tuple[int, float]:
    async with Teacher("gemini-sim", api_key="bench", base_url=base_url, concurrency=concurrency) as teacher:
        await asyncio.gather(*(teacher.generate(f"warm-up {i}", Answer) for i in range(concurrency)))
        n = concurrency * waves
        started = time.perf_counter()
        await asyncio.gather(*(teacher.generate(f"What is in image {i}?", Answer) for i in range(n)))
        elapsed = time.perf_counter() - started
        assert teacher.stats["retries"] == 0, teacher.stats
    return n, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--waves", type=int, default=3, help="Requests per run = concurrency x waves.")
    args = parser.parse_args()

    with GeminiSimulator(port=0, latency_ms=args.latency_ms) as sim:
        for concurrency in args.concurrency:
            ideal = concurrency / (args.latency_ms / 1000.0)
            for label, run in (("teacher", _throughput), ("raw-http", _raw_throughput)):
                n, elapsed = asyncio.run(run(sim.base_url, concurrency, args.waves))
                rate = n / elapsed
                print(
                    f"{label:<8s} concurrency={concurrency:<4d} latency={args.latency_ms:.0f}ms requests={n:<4d} "
                    f"{rate:7.1f} req/s  ideal {ideal:6.1f} req/s  ratio {rate / ideal:.2f}"
                )


if __name__ == "__main__":
    main()
