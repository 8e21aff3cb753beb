"""Per-object write rates on an object store, counted by the server: GCS takes about one write per
second to one object name and answers more with 429.

Teacher quota leases and ledgers (rewritten at every heartbeat) and the resume journal (a segment
every few records) run for 30 s against moto (``moto_timed.py`` logs each request with its
arrival time) at their most aggressive settings: a 1 s heartbeat, extra refreshes in between,
ledgers changed all the time, a journal flushing many segments a second. Every final object is
written at most once per second; every temporary object (a write goes to a new temporary name
first, then is moved into place) is written once.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_object_stores import _free_port, _server

pytestmark = pytest.mark.slow
BUCKET = "vlmprobe-rate"
RUN_S = 30.0
HERE = Path(__file__).parent


def _writes(log: Path) -> dict[str, list[float]]:
    """{object key: arrival times of the requests that create, replace or delete it}."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        stamp, method, target, copy_source = line.split(" ", 3)
        path, _, query = target.partition("?")
        key = path.split("/", 2)[2] if path.count("/") >= 2 else ""
        if not key:
            continue
        if (method == "PUT" and "partNumber=" not in query) or method == "DELETE" or \
                (method == "POST" and "uploadId=" in query):  # put, copy, delete, multipart completion
            out[key].append(float(stamp))
    return out


def test_leases_ledgers_and_journal_segments_stay_at_one_write_per_second_per_object(tmp_path, monkeypatch):
    from vlmprobe.io import Journal
    from vlmprobe.teacher.quota import QuotaLimits, RunQuota

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path / "requests.log"
    with _server([sys.executable, str(HERE / "moto_timed.py"), str(port), str(log)], f"{endpoint}/moto-api/",
                 tmp_path / "server.log"):
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=10)
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(name, value)
        root = f"s3://{BUCKET}/out/2026-11-25"
        limits = QuotaLimits(rpm=6000, tpm=0, rpd=100_000)

        async def run() -> int:
            quotas = [RunQuota(limits, f"{root}/_teacher", f"qa-shard-{i:05d}", heartbeat_s=1.0) for i in range(2)]
            journal = Journal(f"{root}/qa/_journal/shard-00000", "shard-00000", flush_every=8, flush_interval_s=0.5)
            for q in quotas:
                await q.start()
            deadline = time.monotonic() + RUN_S

            async def extra_refreshes() -> None:
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                    await quotas[0].refresh()  # heartbeats in between the task's own

            extra = asyncio.create_task(extra_refreshes())
            appended = 0
            while time.monotonic() < deadline:
                for q in quotas:
                    q.count_request()  # the ledgers change all the time: written at every chance
                journal.append({"id": str(appended)})  # from the event loop, as the QA step does
                appended += 1
                await asyncio.sleep(0.01)
            await extra
            for q in quotas:
                await q.stop()
            journal.close()
            assert journal.done_ids() == {str(i) for i in range(appended)}
            return appended

        appended = asyncio.run(run())

    writes = _writes(log)
    finals = {k: v for k, v in writes.items() if ".tmp-" not in k.rsplit("/", 1)[-1] and not k.endswith("/")}
    temps = {k: v for k, v in writes.items() if ".tmp-" in k.rsplit("/", 1)[-1]}
    leases = {k: v for k, v in finals.items() if "/_teacher/" in k}
    segments = {k: v for k, v in finals.items() if "/_journal/" in k}
    assert len(leases) == 4 and segments  # 2 leases, 2 ledgers; the journal's segments

    def min_gap(times: list[float]) -> float:
        times = sorted(times)
        return min((b - a for a, b in zip(times, times[1:])), default=float("inf"))

    report = {k.split("2026-11-25/", 1)[1]: (len(v), round(min_gap(v), 3)) for k, v in sorted(leases.items())}
    print(f"\n{appended} journal records in {len(segments)} segments; per lease/ledger object "
          f"(writes, smallest gap in s): {report}")
    for key, times in leases.items():
        assert len(times) >= RUN_S / 2, key  # it did write at every heartbeat...
        assert min_gap(times) >= 0.99, (key, sorted(times))  # ...and never twice within a second
    assert all(len(times) == 1 for times in segments.values())  # each segment: a new name, written once
    assert len(segments) >= RUN_S  # more than one segment a second, each under its own name
    # every temporary object is created once (its multipart completion) and deleted once
    assert all(len(times) == 2 for times in temps.values())
