"""QA in batch mode (``qa_mode=batch``): one Gemini Batch API job per shard, at half the price.

The requests are those online mode sends — the same prompt (:meth:`ShardQA.prompt`), image
(downscaled alike) and schema (``QASet``), one per failure the shard's journal has not finished,
keyed ``{seq:06d}-{failure id}`` — and go into one job (a JSONL file through the File API) via
:class:`~vlmprobe.teacher.batch.BatchClient`, whose ledger (``qa/_batch/shard-NNNNN.json``, kept
by reruns) records the job before it is created and matches answers by key and request hash.

Three parts, run by ``vlmprobe qa --qa-phase``:

- ``submit`` (the DAG's ``qa.submit``, a CPU pod): :func:`submit_shard` builds the requests and
  submits the job, then exits; the DAG waits for the job in the triggerer (``qa.wait``), holding no
  pod and no worker slot.
- ``collect`` (the DAG's ``qa.generate``, the shard's GPU pod): the shard runs as online mode does
  (:func:`vlmprobe.qa.run.run_shard`: journal, target check, items, error rows, stats), but each
  failure is answered from the job (:class:`BatchShardQA`): an answer becomes items as online, a
  content verdict (safety, a blocked prompt, a 400) an error row, and what the job did not answer
  (an error, an unusable answer, an expired or failed job, the deadline) is sent online at
  ``teacher_service_tier``. The pod creates no job: it never waits on a second one.
- ``all`` (the CLI's default, :func:`wait_for_batch` then the collect): submit, poll every
  ``batch_poll_s`` (one progress line per poll) and collect in one process; what failed in a job is
  sent again in a new job (at most twice, before ``batch_deadline_h``), then online.

Past ``batch_deadline_h`` (from the first job's intent) unfinished jobs are cancelled and what
they held goes online. Cost: every billed batch response is priced at batch prices and added to
the run's spend (``RunQuota.add_spend``) once, when its job is collected; the shard's teacher stats
get a ``batch`` tier in ``by_tier`` and a ``batch`` summary (jobs, answered, failed, sent online)
covering every job of the shard's ledger: what the answers the shard used cost, whichever attempt
(or earlier run of the run date: the ledger is kept) paid for them.
The budget (``max_cost_usd``) is checked before a job is submitted: a job is paid as a whole, so a
run may overshoot by one shard's job. Every part is safe to rerun: the ledger finds the job again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from vlmprobe.config import QAConfig
from vlmprobe.io import RunLayout
from vlmprobe.qa.items import ShardQA

if TYPE_CHECKING:
    from vlmprobe.qa.run import _Shard
    from vlmprobe.teacher.batch import BatchOutcome, BatchRequest

log = logging.getLogger("vlmprobe.qa")

# Resubmissions of a request that failed in a job, when one process submits, waits and collects.
CLI_MAX_RESUBMITS = 2


def request_key(seq: int, rec: dict[str, Any]) -> str:
    """A failure's key in its shard's batch: its place and its id (a record that moved is another request)."""
    return f"{seq:06d}-{rec.get('id')}"


def batch_display_prefix(cfg: QAConfig) -> str:
    from vlmprobe.teacher.batch import display_prefix

    return display_prefix(cfg.run_date, "qa", cfg.shard_index)


def shard_requests(s: _Shard, work: ShardQA) -> list[BatchRequest]:
    """The batch requests of the shard's failures still to ask (not in its journal), with their images;
    records QA cannot use or whose image does not decode are left to the collect (error rows)."""
    from vlmprobe.images import decode
    from vlmprobe.qa.run import _batches, _shard_records
    from vlmprobe.teacher.batch import BatchRequest
    from vlmprobe.teacher.schemas import QASet

    requests = []
    for batch in _batches(_shard_records(s.plan, s.index), s.cfg.batch_size, lambda seq: seq not in s.done):
        for seq, rec, problem, image in batch:
            if problem is not None or seq in s.done or isinstance(image, Exception) or image is None:
                continue
            try:
                _, data, mime = decode(image)
            except (ValueError, OSError):
                continue
            requests.append(BatchRequest(request_key(seq, rec), work.prompt(rec), QASet, images=((data, mime),),
                                         kind="qa"))
    return requests


def batch_client(cfg: QAConfig, teacher: Any, **options: Any):
    """The shard's :class:`~vlmprobe.teacher.batch.BatchClient`, sharing the online teacher's google-genai
    client and building requests as it does (thinking budget, max_output_tokens, image size, media_resolution)."""
    from vlmprobe.teacher.batch import BatchClient
    from vlmprobe.teacher.factory import media_resolutions

    layout = RunLayout(cfg.output_uri, cfg.run_date)
    return BatchClient(
        cfg.gemini_model, ledger_uri=layout.qa_batch_ledger(cfg.shard_index), display_prefix=batch_display_prefix(cfg),
        client=teacher.genai_client, deadline_h=cfg.batch_deadline_h, poll_s=cfg.batch_poll_s,
        thinking_budget=cfg.thinking_budget, max_output_tokens={"qa": cfg.max_output_tokens_qa},
        image_max_side=cfg.teacher_image_max_side, media_resolution=media_resolutions(cfg),
        retry=teacher.retry, timeout_s=cfg.request_timeout_s, **options)


def _count_spend(teacher: Any, outcome: BatchOutcome) -> None:
    """Add the jobs this collect read to the run's spend (each job once: when it is collected)."""
    from vlmprobe.teacher.usage import Usage

    for job in outcome.jobs:
        if job["display_name"] in outcome.collected_now:
            usage = Usage(**(job.get("usage") or {}))
            teacher.quota.add_spend(float(job.get("cost_usd") or 0.0), usage.as_dict())


async def _until_complete(cfg: QAConfig, teacher: Any, batch: Any, requests: list[BatchRequest]) -> BatchOutcome:
    """Poll every ``batch_poll_s`` and collect until no request waits on a job; a progress line per poll."""
    from vlmprobe.progress import format_duration

    started = time.monotonic()
    while True:
        status = await batch.poll_once()
        if status.ready:
            outcome = await batch.collect(requests)
            _count_spend(teacher, outcome)
            if outcome.complete:
                return outcome
            continue  # what failed went into a new job: wait for it
        states = Counter(status.jobs.values())
        left = ("" if status.deadline_at is None
                else f", deadline in {format_duration(status.deadline_at - time.time())}")
        log.info("qa shard %d: waiting for the Gemini Batch API: %d request(s), jobs %s, %s so far%s",
                 cfg.shard_index, len(requests), dict(sorted(states.items())),
                 format_duration(time.monotonic() - started), left)
        wait = cfg.batch_poll_s
        if status.deadline_at is not None:
            wait = max(0.0, min(wait, status.deadline_at - time.time()))
        await asyncio.sleep(wait)


async def _submit(cfg: QAConfig, s: _Shard, wait: bool) -> dict[str, Any]:
    from vlmprobe.teacher.factory import make_teacher

    async with make_teacher(cfg) as teacher:
        work = ShardQA(cfg, teacher)
        requests = await asyncio.to_thread(shard_requests, s, work)
        summary: dict[str, Any] = {"shard_index": cfg.shard_index, "qa_mode": "batch", "requests": len(requests)}
        if not requests:
            log.info("qa shard %d: nothing to submit (every failure is finished or unusable)", cfg.shard_index)
            return {**summary, "jobs": {}}
        if teacher.quota.budget_reached():
            log.warning("qa shard %d: the run's teacher budget is spent (max_cost_usd): no batch job is submitted; "
                        "its failures become limited_budget rows", cfg.shard_index)
            return {**summary, "jobs": {}, "budget_reached": True}
        async with batch_client(cfg, teacher, max_resubmits=CLI_MAX_RESUBMITS) as batch:
            status = await batch.submit(requests)
            log.info("qa shard %d: %d request(s) in Gemini Batch API job(s) %s", cfg.shard_index, len(requests),
                     status.jobs)
            if wait:
                outcome = await _until_complete(cfg, teacher, batch, requests)
                log.info("qa shard %d: the batch answered %d, failed %d, hands %d to online", cfg.shard_index,
                         len(outcome.answers), len(outcome.failures), len(outcome.go_online))
                status = await batch.poll_once()
        return {**summary, "jobs": status.jobs}


def submit_shard(cfg: QAConfig, wait: bool = False) -> dict[str, Any]:
    """Build the shard's requests and submit its job (``wait``: then poll and collect until every request is
    answered, failed or handed to online, resubmitting failures in new jobs). Writes no output: the
    collect does. Returns a small summary (for XCom). Safe to rerun: the ledger finds the job."""
    from vlmprobe.qa.run import _open_shard

    s = _open_shard(cfg, load_target=False)
    try:
        return asyncio.run(_submit(cfg, s, wait))
    finally:
        s.journal.close()


def wait_for_batch(cfg: QAConfig) -> dict[str, Any]:
    """The CLI's batch mode before the shard runs: submit, wait and collect, no target loaded meanwhile."""
    return submit_shard(cfg, wait=True)


class BatchShardQA(ShardQA):
    """A shard's QA answered from its batch job: each failure's answer, failure or hand-over to online."""

    def __init__(self, cfg: QAConfig, teacher: Any, outcome: BatchOutcome) -> None:
        super().__init__(cfg, teacher)
        self.outcome = outcome
        self.sent_online: Counter[str] = Counter()

    async def ask(self, seq: int, rec: dict[str, Any], prompt: str, data: bytes, mime: str) -> Any:
        from vlmprobe.teacher.results import TeacherError, TeacherResult

        key = request_key(seq, rec)
        answer = self.outcome.answers.get(key)
        if answer is not None:
            return TeacherResult(answer.parsed, answer.usage, 1)
        failure = self.outcome.failures.get(key)
        if failure is not None:
            raise TeacherError(failure.reason, 1, f"Gemini Batch API ({failure.job}): {failure.message}",
                               failure.usage)
        online = self.outcome.go_online.get(key)
        self.sent_online[online.reason if online is not None else "not_in_a_job"] += 1
        return await super().ask(seq, rec, prompt, data, mime)

    def teacher_stats(self) -> dict[str, Any]:
        """The online teacher's stats with the batch added: its tier in ``by_tier``, its requests, tokens and
        cost in the totals, and a ``batch`` summary."""
        stats = super().teacher_stats()
        out = self.outcome
        usage = out.usage.as_dict()
        answered = sum(int(job.get("answered") or 0) for job in out.jobs)
        requests = sum(int(job.get("request_count") or 0) for job in out.jobs)
        by_tier = dict(stats.get("by_tier") or {})
        by_tier["batch"] = {"answers": answered, **usage, "estimated_cost_usd": out.cost_usd or 0.0,
                            "standard_cost_usd": out.standard_cost_usd or 0.0, "unpriced": int(out.cost_usd is None)}
        stats["by_tier"] = by_tier
        stats["requests"] = int(stats.get("requests") or 0) + requests
        for name, value in usage.items():
            stats[name] = int(stats.get(name) or 0) + value
        stats["estimated_cost_usd"] = round(float(stats.get("estimated_cost_usd") or 0.0) + (out.cost_usd or 0.0), 6)
        stats["batch"] = {"jobs": out.jobs, "requests": requests, "answered": len(out.answers),
                          "failed": len(out.failures), "sent_online": dict(self.sent_online)}
        return stats


async def batch_work(cfg: QAConfig, s: _Shard, teacher: Any) -> BatchShardQA:
    """The shard's QA from its batch, for :func:`vlmprobe.qa.run._answer`: the requests built again, the
    job(s) collected (no new job: what no job answered goes online), waiting only if one still runs."""
    work = ShardQA(cfg, teacher)
    requests = await asyncio.to_thread(shard_requests, s, work)
    async with batch_client(cfg, teacher, resend=False) as batch:
        outcome = await batch.collect(requests)
        _count_spend(teacher, outcome)
        if not outcome.complete:
            log.warning("qa shard %d: %d request(s) still wait on a Batch API job; waiting here", cfg.shard_index,
                        len(outcome.pending))
            outcome = await _until_complete(cfg, teacher, batch, requests)
    if outcome.go_online:
        reasons = Counter(o.reason for o in outcome.go_online.values())
        log.info("qa shard %d: %d request(s) go online at the %s tier (%s)", cfg.shard_index, len(outcome.go_online),
                 cfg.teacher_service_tier, dict(reasons))
    return BatchShardQA(cfg, teacher, outcome)
