"""The Batch API client against the simulator, with the real google-genai client: submit, poll and
collect by key and hash; only failures resent; a kill between create and the ledger; the deadline."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time

import pytest
from pydantic import BaseModel

from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher import batch as batch_module
from vlmprobe.teacher.batch import BatchClient, BatchError, BatchRequest, display_prefix
from vlmprobe.teacher.pricing import estimate_cost
from vlmprobe.teacher.retry import RetryPolicy

MODEL = "gemini-2.5-flash"
SECRET = "sk-batch-test-secret-4410"
FAST = RetryPolicy(base_delay=0.001, max_delay=0.05, jitter=0.0, window_s=5.0)
PREFIX = display_prefix("2026-12-01", "qa", 3)


class Echo(BaseModel):
    """The simulator fills a plain string field with words of the prompt: a one-word prompt comes
    back in the answer, so each answer names the request it answers."""

    text: str


def _word(i: int) -> str:
    return "w" + "".join(chr(ord("a") + int(d)) for d in f"{i:04d}")


def _requests(n: int) -> list[BatchRequest]:
    return [BatchRequest(f"key-{i:03d}", _word(i), Echo) for i in range(n)]


def _client(sim: GeminiSimulator, tmp_path, **options) -> BatchClient:
    options = {"retry": FAST, "poll_s": 0.02, **options}
    return BatchClient(MODEL, ledger_uri=str(tmp_path / "qa" / "_batch-00003.json"), display_prefix=PREFIX,
                       api_key=SECRET, base_url=sim.base_url, **options)


async def _run(sim, tmp_path, requests, **options):
    async with _client(sim, tmp_path, **options) as batch:
        return await batch.run(requests)


def _assert_answers_name_their_key(outcome, requests):
    words = {r.key: r.prompt for r in requests}
    for key, answer in outcome.answers.items():
        assert answer.key == key and answer.parsed.text == f"text: {words[key]}", (key, answer.parsed)


def _jobs_by_key(sim) -> dict[str, list[tuple[str, str]]]:
    """Per key (ours, from the line's key), the (job, outcome) of every time a job ran it."""
    runs = collections.defaultdict(list)
    for entry in sim.batch_log():
        runs[entry["key"].rsplit("#", 1)[0]].append((entry["job"], entry["outcome"]))
    return runs


def test_a_job_is_submitted_polled_collected_and_every_key_matched(tmp_path):
    requests = _requests(12)
    with GeminiSimulator(port=0, batch_pending_s=0.05, batch_running_s=0.05) as sim:
        outcome = asyncio.run(_run(sim, tmp_path, requests))
        stats = sim.batch_stats()
        log = sim.batch_log()
    assert outcome.complete and set(outcome.answers) == {r.key for r in requests}
    assert not outcome.failures and not outcome.go_online
    _assert_answers_name_their_key(outcome, requests)
    assert stats["jobs_created"] == 1 and stats["files_uploaded"] == 1 and len(log) == 12
    # each answer's responseId names the hash of the request body the simulator answered
    sha_by_key = {e["key"].rsplit("#", 1)[0]: e["sha256"] for e in log}
    assert all(a.response_id == f"batch-{sha_by_key[k][:32]}" for k, a in outcome.answers.items())
    # usage counted from every response, priced at batch: half of standard for 2.5 Flash
    assert outcome.usage.prompt_tokens == stats["prompt_tokens"] > 0
    assert outcome.usage.output_tokens == stats["output_tokens"] > 0
    standard = estimate_cost(MODEL, outcome.usage.prompt_tokens, outcome.usage.output_tokens)
    rounding = 1e-6 * len(requests)  # each answer's cost is rounded to 1e-6 USD
    assert outcome.standard_cost_usd == pytest.approx(standard, abs=rounding)
    assert outcome.cost_usd == pytest.approx(standard / 2, abs=rounding)
    assert sum(a.usage.prompt_tokens for a in outcome.answers.values()) == outcome.usage.prompt_tokens
    ledger = json.loads((tmp_path / "qa" / "_batch-00003.json").read_text())
    (job,) = ledger["jobs"]
    assert job["display_name"].startswith(f"{PREFIX}-j00-") and job["name"].startswith("batches/")
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["request_count"] == 12 and job["answered"] == 12


def test_shuffled_results_with_failures_and_an_expired_job_resend_only_what_failed(tmp_path):
    requests = _requests(60)
    with GeminiSimulator(port=0, seed=7, batch_shuffle=True, batch_error_rate=0.1, batch_expire=1,
                         rate_malformed=0.05, rate_safety=0.03) as sim:
        outcome = asyncio.run(_run(sim, tmp_path, requests))
        stats = sim.batch_stats()
        runs = _jobs_by_key(sim)
        order = list(dict.fromkeys(e["job"] for e in sim.batch_log()))
    keys = {r.key for r in requests}
    # every request ends as exactly one of: an answer, a failure (error row), go online
    ends = [set(outcome.answers), set(outcome.failures), set(outcome.go_online)]
    assert outcome.complete and set().union(*ends) == keys and sum(map(len, ends)) == len(keys)
    _assert_answers_name_their_key(outcome, requests)
    assert outcome.failures and all(f.reason == "finish_safety" for f in outcome.failures.values())
    assert stats["jobs_by_state"]["BATCH_STATE_EXPIRED"] == 1
    # the expired job ran nothing; the next one ran every request, and each later job ran exactly
    # the requests that failed, retryably, in the one before
    retryable = ("error_429", "error_500", "error_503", "malformed")
    first = {k for k, r in runs.items() if r[0][0] == order[0]}
    assert first == keys
    for earlier, later in zip(order, order[1:]):
        failed = {k for k, r in runs.items() for o in retryable if (earlier, o) in r}
        assert {k for k, r in runs.items() if any(j == later for j, _ in r)} == failed
    assert len(order) >= 2 and stats["jobs_created"] == len(order) + 1
    # at most 1 + max_resubmits jobs per request (the expired one counts): then online
    assert all(len(r) <= 2 for r in runs.values())
    for key, online in outcome.go_online.items():
        assert online.jobs == 3 and runs[key][-1][1] in retryable and online.reason != "deadline"
    # every billed response is counted, failed or not
    assert outcome.usage.prompt_tokens == stats["prompt_tokens"]


def test_a_kill_between_create_and_the_ledger_record_finds_the_job_by_its_display_name(tmp_path, monkeypatch):
    requests = _requests(5)

    class Killed(BaseException):
        pass

    def killed(self, ledger, entry, job):
        raise Killed()

    with GeminiSimulator(port=0, batch_pending_s=0.2) as sim:
        with monkeypatch.context() as m:
            m.setattr(BatchClient, "_record_job", killed)

            async def first():
                async with _client(sim, tmp_path) as batch:
                    await batch.submit(requests)

            with pytest.raises(Killed):
                asyncio.run(first())
        ledger = json.loads((tmp_path / "qa" / "_batch-00003.json").read_text())
        assert [j["name"] for j in ledger["jobs"]] == [None] and sim.batch_stats()["jobs_created"] == 1
        outcome = asyncio.run(_run(sim, tmp_path, requests))  # the rerun
        stats = sim.batch_stats()
    assert stats["jobs_created"] == 1 and outcome.complete and set(outcome.answers) == {r.key for r in requests}
    _assert_answers_name_their_key(outcome, requests)
    ledger = json.loads((tmp_path / "qa" / "_batch-00003.json").read_text())
    assert len(ledger["jobs"]) == 1 and ledger["jobs"][0]["name"].startswith("batches/")


def test_a_rerun_of_submit_and_collect_creates_nothing_and_downloads_nothing_again(tmp_path, monkeypatch):
    requests = _requests(4)
    with GeminiSimulator(port=0) as sim:
        async def twice():
            async with _client(sim, tmp_path) as batch:
                await batch.submit(requests)
                await batch.submit(requests)
                first = await batch.collect(requests)
            downloads = []
            async with _client(sim, tmp_path) as batch:  # a new process
                real = batch._aio.files.download

                async def counted(**kwargs):
                    downloads.append(kwargs)
                    return await real(**kwargs)

                monkeypatch.setattr(batch._aio.files, "download", counted)
                await batch.submit(requests)
                again = await batch.collect(requests)
            return first, again, downloads

        first, again, downloads = asyncio.run(twice())
        stats = sim.batch_stats()
    assert stats["jobs_created"] == 1 and downloads == []
    assert first.collected_now and not again.collected_now
    assert {k: a.parsed for k, a in first.answers.items()} == {k: a.parsed for k, a in again.answers.items()}
    assert first.cost_usd == again.cost_usd > 0


def test_a_job_pending_past_the_deadline_is_cancelled_and_its_requests_go_online(tmp_path):
    requests = _requests(6)
    with GeminiSimulator(port=0, batch_stay_pending=True) as sim:
        started = time.monotonic()
        outcome = asyncio.run(_run(sim, tmp_path, requests, deadline_h=0.5 / 3600))
        elapsed = time.monotonic() - started
        stats = sim.batch_stats()
    assert outcome.complete and not outcome.answers and elapsed < 10
    assert set(outcome.go_online) == {r.key for r in requests}
    assert all(o.reason == "deadline" and o.jobs == 1 for o in outcome.go_online.values())
    assert stats["cancels"] == 1 and stats["jobs_by_state"] == {"BATCH_STATE_CANCELLED": 1}
    assert outcome.jobs[0]["cancelled_at"] is not None and outcome.cost_usd == 0.0


def test_poll_once_says_when_collect_has_work(tmp_path):
    requests = _requests(3)
    with GeminiSimulator(port=0, batch_pending_s=0.3) as sim:
        async def steps():
            async with _client(sim, tmp_path) as batch:
                submitted = await batch.submit(requests)
            async with _client(sim, tmp_path) as batch:  # the trigger: no requests at hand
                early = await batch.poll_once()
                await asyncio.sleep(0.4)
                late = await batch.poll_once()
            return submitted, early, late

        submitted, early, late = asyncio.run(steps())
    assert not submitted.ready and not early.ready and early.deadline_at > time.time()
    assert list(early.jobs.values()) == ["JOB_STATE_PENDING"]
    assert late.ready and late.all_ended and list(late.jobs.values()) == ["JOB_STATE_SUCCEEDED"]
    assert json.loads(json.dumps(late.as_dict())) == late.as_dict()


def test_a_request_changed_since_submission_is_not_answered_by_the_old_job(tmp_path):
    before = _requests(3)
    after = [*before[:2], BatchRequest(before[2].key, _word(999), Echo)]
    with GeminiSimulator(port=0) as sim:
        async def steps():
            async with _client(sim, tmp_path) as batch:
                await batch.submit(before)
            async with _client(sim, tmp_path) as batch:
                return await batch.run(after)

        outcome = asyncio.run(steps())
        stats = sim.batch_stats()
    _assert_answers_name_their_key(outcome, after)  # key-002's answer is about the new prompt
    assert outcome.answers[before[2].key].parsed.text == f"text: {_word(999)}"
    assert stats["jobs_created"] == 2 and outcome.jobs[1]["request_count"] == 1


def test_a_failed_job_is_resent_and_its_reason_kept(tmp_path):
    requests = _requests(4)
    with GeminiSimulator(port=0, batch_fail=1) as sim:
        outcome = asyncio.run(_run(sim, tmp_path, requests))
    assert outcome.complete and set(outcome.answers) == {r.key for r in requests}
    assert outcome.jobs[0]["state"] == "JOB_STATE_FAILED" and "Simulated batch failure" in outcome.jobs[0]["error"]


@pytest.mark.parametrize("echo", [True, False])
def test_inline_answers_are_trusted_only_when_every_one_carries_its_request(tmp_path, echo):
    requests = _requests(5)
    with GeminiSimulator(port=0, batch_shuffle=True, batch_inline_metadata=echo) as sim:
        outcome = asyncio.run(_run(sim, tmp_path, requests, inline_max_bytes=1_000_000))
        stats = sim.batch_stats()
    assert outcome.complete and set(outcome.answers) == {r.key for r in requests}
    _assert_answers_name_their_key(outcome, requests)
    modes = [j["mode"] for j in outcome.jobs]
    if echo:
        assert modes == ["inline"] and stats["files_uploaded"] == 0
    else:  # unmatched: every request sent again, in file mode from then on
        assert modes == ["inline", "file"] and outcome.jobs[0]["unmatched"] == 5 and stats["files_uploaded"] == 1


def test_the_batch_shares_the_online_teachers_client(tmp_path):
    from vlmprobe.teacher.client import Teacher

    requests = _requests(2)
    with GeminiSimulator(port=0) as sim:
        async def shared():
            async with Teacher(MODEL, api_key=SECRET, base_url=sim.base_url) as teacher:
                async with BatchClient(MODEL, ledger_uri=str(tmp_path / "l.json"), display_prefix=PREFIX,
                                       client=teacher.genai_client, poll_s=0.02, retry=FAST) as batch:
                    outcome = await batch.run(requests)
                online = await teacher.generate(_word(5), Echo)  # still open after the batch
            return outcome, online

        outcome, online = asyncio.run(shared())
    assert set(outcome.answers) == {"key-000", "key-001"} and online.parsed.text == f"text: {_word(5)}"


def test_a_refused_key_stops_with_one_line_and_no_key(tmp_path, caplog):
    from vlmprobe.errors import TeacherUnusable

    caplog.set_level(logging.DEBUG)
    with GeminiSimulator(port=0, fail="403") as sim:
        with pytest.raises(TeacherUnusable) as raised:
            asyncio.run(_run(sim, tmp_path, _requests(2)))
        assert SECRET not in repr(_client(sim, tmp_path))
    assert SECRET not in str(raised.value) and SECRET not in caplog.text and "\n" not in str(raised.value)


def test_a_ledger_of_another_shard_is_refused(tmp_path):
    uri = tmp_path / "qa" / "_batch-00003.json"
    uri.parent.mkdir()
    uri.write_text(json.dumps({"version": 1, "model": MODEL, "display_prefix": "vlmprobe-x-qa-shard-00009",
                               "started_at": None, "jobs": []}))
    with GeminiSimulator(port=0) as sim:
        with pytest.raises(BatchError, match="belongs to"):
            asyncio.run(_run(sim, tmp_path, _requests(1)))


def test_options_are_checked_and_keys_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match="deadline_h"):
        BatchClient(MODEL, ledger_uri="l.json", display_prefix=PREFIX, api_key="k", deadline_h=0)
    with pytest.raises(ValueError, match="inline_max_bytes"):
        BatchClient(MODEL, ledger_uri="l.json", display_prefix=PREFIX, api_key="k", inline_max_bytes=30_000_000)
    with GeminiSimulator(port=0) as sim:
        with pytest.raises(ValueError, match="share the key"):
            asyncio.run(_run(sim, tmp_path, [*_requests(2), _requests(1)[0]]))
    assert batch_module.display_prefix("2026-12-01", "qa", 3) == "vlmprobe-2026-12-01-qa-shard-00003"


def test_requests_with_images_are_downscaled_as_online_and_a_large_input_uploads(tmp_path):
    import io
    import random

    from PIL import Image

    rng = random.Random(0)

    def noise(side: int) -> bytes:
        buf = io.BytesIO()
        Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(buf, format="PNG")
        return buf.getvalue()

    requests = [BatchRequest(f"img-{i}", _word(i), Echo, images=((noise(1000), "image/png"),)) for i in range(8)]
    with GeminiSimulator(port=0) as sim:
        outcome = asyncio.run(_run(sim, tmp_path, requests, image_max_side=768))
        (uploaded,) = [f for f in sim.files._files.values() if f.source == "UPLOADED"]
    assert len(uploaded.data) > 1 << 20  # more than aiohttp's 1 MiB warning threshold: no warning escapes
    assert outcome.complete and set(outcome.answers) == {r.key for r in requests}
    _assert_answers_name_their_key(outcome, requests)
    # 768 x 768 after downscaling: 2 x 2 tiles of 258 tokens, as online
    assert all(4 * 258 <= a.usage.prompt_tokens < 9 * 258 for a in outcome.answers.values())


def test_a_cleared_task_whose_ledger_is_gone_finds_its_job_by_display_name(tmp_path):
    requests = _requests(3)
    with GeminiSimulator(port=0) as sim:
        first = asyncio.run(_run(sim, tmp_path / "first", requests))
        again = asyncio.run(_run(sim, tmp_path / "cleared", requests))  # same shard, a fresh ledger
        stats = sim.batch_stats()
    assert stats["jobs_created"] == 1 and first.jobs[0]["name"] == again.jobs[0]["name"]
    assert {k: a.parsed for k, a in first.answers.items()} == {k: a.parsed for k, a in again.answers.items()}
