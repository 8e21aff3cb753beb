"""The Batch API client for one shard: :class:`BatchClient` (submit, poll_once, collect, run) and
:func:`run_batch`; the package docstring (:mod:`vlmprobe.teacher.batch`) says what it guarantees."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from google import genai
from google.genai import errors, types

from vlmprobe.teacher.answers import RejectedOutput, parsed_or_reject
from vlmprobe.teacher.batch.ledger import (
    API_KEY_ENV, BASE_URL_ENV, ENDED, INLINE_LIMIT_BYTES, JOB_REASONS, NOT_CREATED, UNSUBMITTED, BatchError,
    deadline_at, load_ledger, new_job_entry, past_deadline, results_uri, save_ledger,
)
from vlmprobe.teacher.batch.results import (
    BatchAnswer, BatchFailure, BatchOutcome, BatchRequest, BatchStatus, GoOnline, Prepared, config_of, inline_lines,
    job_summary, matched_line, response_of, state_of,
)
from vlmprobe.teacher.request import (
    DEFAULT_MAX_OUTPUT_TOKENS, close_client, contents_of, generation_config, open_client, request_body, request_sha256,
    thinking_budget_for,
)
from vlmprobe.teacher.results import one_line, redact
from vlmprobe.teacher.retry import RETRYABLE_STATUS, RetryPolicy, classify, unusable_error
from vlmprobe.teacher.usage import Ledger, Usage, usage_of

logger = logging.getLogger("vlmprobe.teacher.batch")

T = TypeVar("T")


class BatchClient:
    """The Batch API for one shard's requests, with its ledger at ``ledger_uri``.

    ``display_prefix`` starts every job's display name (:func:`display_prefix`). ``deadline_h``
    bounds the batch from the first job's intent; ``max_resubmits`` how often a request that failed
    in a job is sent again in a new one (``resend=False``: never, nor one that no job holds: :meth:`collect`
    hands them to online at once, e.g. in a pod that must not wait for a new job); ``inline_max_bytes``
    (0: never) the largest job sent inline.
    ``poll_s`` is the time between polls in :meth:`run` (and the trigger's hint). ``thinking_budget``,
    ``max_output_tokens`` and ``media_resolution`` per request kind and ``image_max_side`` build the
    requests as the online Teacher does. ``retry`` bounds the retries of each API call (create, get,
    upload, download...); ``timeout_s`` one HTTP call. ``client`` shares an open google-genai client (not closed here).
    """

    def __init__(
        self,
        model: str,
        *,
        ledger_uri: str,
        display_prefix: str,
        api_key: str | None = None,
        base_url: str | None = None,
        client: genai.Client | None = None,
        deadline_h: float = 24.0,
        max_resubmits: int = 2,
        resend: bool = True,
        inline_max_bytes: int = 0,
        poll_s: float = 30.0,
        thinking_budget: int | None = 0,
        max_output_tokens: Mapping[str, int] | None = None,
        image_max_side: int = 768,
        media_resolution: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if client is None and not api_key:
            raise ValueError(f"No Gemini API key: set the {API_KEY_ENV} environment variable (any value works "
                             "with the simulator) or pass api_key=.")
        if deadline_h <= 0 or max_resubmits < 0 or poll_s <= 0 or timeout_s <= 0:
            raise ValueError("deadline_h, poll_s and timeout_s must be > 0 and max_resubmits >= 0.")
        if not 0 <= inline_max_bytes <= INLINE_LIMIT_BYTES:
            raise ValueError(f"inline_max_bytes must be within [0, {INLINE_LIMIT_BYTES}] (Gemini's inline limit).")
        if not display_prefix or len(display_prefix) > 100:
            raise ValueError("display_prefix must be 1 to 100 characters.")
        self.model = model
        self.ledger_uri = ledger_uri
        self.display_prefix = display_prefix
        self.base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
        self.deadline_s = deadline_h * 3600.0
        self.max_resubmits = max_resubmits
        self.resend = resend
        self.inline_max_bytes = inline_max_bytes
        self.poll_s = poll_s
        self.thinking_budget = thinking_budget_for(model, thinking_budget)
        self.max_output_tokens = {**DEFAULT_MAX_OUTPUT_TOKENS, **(max_output_tokens or {})}
        self.image_max_side = image_max_side
        self.media_resolution = dict(media_resolution or {})
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._shared = client
        self._client: genai.Client | None = client
        self._session: Any = None
        self._rng = random.Random()
        self._prepared: dict[str, Prepared] = {}

    def __repr__(self) -> str:
        return (f"BatchClient(model={self.model!r}, display_prefix={self.display_prefix!r}, "
                f"ledger_uri={self.ledger_uri!r})")

    async def __aenter__(self) -> BatchClient:
        if self._shared is None:
            if self._client is not None:
                raise RuntimeError("This BatchClient is already open.")
            self._client, self._session = open_client(self._api_key, self.base_url, self.timeout_s, 8)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._shared is None:
            client, self._client = self._client, None
            session, self._session = self._session, None
            await close_client(client, session)

    @property
    def _aio(self) -> Any:
        if self._client is None:
            raise RuntimeError("Use the BatchClient as `async with BatchClient(...) as batch:`.")
        return self._client.aio

    # -- the ledger ----------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        return load_ledger(self.ledger_uri, self.model, self.display_prefix)

    def _save(self, ledger: dict[str, Any]) -> None:
        save_ledger(self.ledger_uri, ledger)

    def _results_uri(self, display_name: str) -> str:
        return results_uri(self.ledger_uri, display_name)

    def _deadline_at(self, ledger: dict[str, Any]) -> float | None:
        return deadline_at(ledger, self.deadline_s)

    def _past_deadline(self, ledger: dict[str, Any]) -> bool:
        return past_deadline(ledger, self.deadline_s)

    # -- API calls, with the retry policy ----------------------------------------------------------
    async def _call(self, what: str, call: Callable[[], Awaitable[T]], missing_ok: bool = False) -> T | None:
        """``call()`` with the retry policy (429/408/5xx, timeouts, transport errors), within its
        window; raises BatchError (or TeacherUnusable for a key or model Gemini refuses). With
        ``missing_ok``, a 404 (the job or file is gone) returns None."""
        attempt, deadline = 0, time.monotonic() + self.retry.window_s
        while True:
            attempt += 1
            try:
                return await call()
            except Exception as e:
                if missing_ok and isinstance(e, errors.APIError) and e.code == 404:
                    return None
                classified = classify(e)
                if classified is None:
                    raise
                if classified.kind == "fatal":
                    assert isinstance(e, errors.APIError)
                    raise unusable_error(e, self.model, self._api_key) from None
                decision = self.retry.decide(e, attempt, self._rng)
                retry = decision is not None and decision.retry and time.monotonic() + decision.delay < deadline
                if not retry:
                    detail = one_line(redact(str(e), self._api_key))
                    raise BatchError(f"Gemini Batch API, {what}: {detail} (reason={classified.reason}, "
                                     f"attempts={attempt}); the ledger {self.ledger_uri} keeps the jobs: "
                                     "rerun to continue") from e
                logger.info("Gemini Batch API %s failed (%s); retrying in %.2f s", what, classified.reason,
                            decision.delay)
                await asyncio.sleep(decision.delay)

    async def _find_by_display_name(self, display_name: str) -> types.BatchJob | None:
        """A job of this project whose display name is ``display_name`` (they are unique per shard,
        job number and request set), via batches.list; None when there is none."""
        async def scan() -> types.BatchJob | None:
            pager = await self._aio.batches.list(config={"page_size": 100})
            async for job in pager:
                if job.display_name == display_name:
                    return job
            return None

        return await self._call(f"list (looking for {display_name})", scan)

    async def _job_error(self, name: str) -> str | None:
        """A FAILED job's reason from the raw Operation (google-genai drops it), best effort."""
        try:
            raw = await self._client._api_client.async_request("get", name, {})  # type: ignore[union-attr]
            error = json.loads(raw.body or "{}").get("error") or {}
            return one_line(redact(str(error.get("message") or error), self._api_key)) if error else None
        except Exception:  # only a nicer message is lost
            logger.debug("could not read the reason of %s", name, exc_info=True)
            return None

    # -- requests --------------------------------------------------------------------------------
    async def _prepare(self, requests: Sequence[BatchRequest]) -> dict[str, Prepared]:
        """Each request's body (images downscaled, as online) and hash, by key; the same request
        object is prepared once per client."""
        out: dict[str, Prepared] = {}
        for request in requests:
            if request.key in out:
                raise ValueError(f"two batch requests share the key {request.key!r}: keys must be unique")
            cached = self._prepared.get(request.key)
            if cached is None or cached.request is not request:
                resolution = self.media_resolution.get(request.kind) if request.kind else None
                contents = await contents_of(request.prompt, request.images, self.image_max_side, model=self.model,
                                             media_resolution=resolution)
                max_output = request.max_output_tokens or (
                    self.max_output_tokens.get(request.kind) if request.kind else None)
                config = generation_config(request.schema, request.temperature, max_output, self.thinking_budget,
                                           media_resolution=resolution)
                body = request_body(contents.parts, config)
                cached = self._prepared[request.key] = Prepared(request, body, request_sha256(body))
            out[request.key] = cached
        return out

    # -- creating a job --------------------------------------------------------------------------
    def _plan_job(self, ledger: dict[str, Any], items: list[Prepared]) -> dict[str, Any]:
        keys = {p.request.key: p.sha256 for p in sorted(items, key=lambda p: p.request.key)}
        size = sum(len(json.dumps(p.body)) for p in items)
        inline = bool(ledger.get("inline_ok", True)) and 0 < size <= self.inline_max_bytes
        return new_job_entry(ledger, self.display_prefix, keys, inline)

    async def _submit_job(self, ledger: dict[str, Any], items: list[Prepared]) -> None:
        """Record the intent of a job for ``items``, then find it by its display name (a cleared
        task whose ledger was deleted made it already) or create it, and record its name."""
        entry = self._plan_job(ledger, items)
        if ledger.get("started_at") is None:
            ledger["started_at"] = entry["intent_at"]
        ledger["jobs"].append(entry)
        self._save(ledger)  # the intent, before anything is created
        await self._resolve_intents(ledger, {p.request.key: p for p in items})

    async def _create(self, ledger: dict[str, Any], entry: dict[str, Any], items: dict[str, Prepared]) -> None:
        """Create the job of a recorded intent (its input uploaded first in file mode); a retried
        create looks for the job by its display name before sending again."""
        display_name = entry["display_name"]
        ordered = [items[key] for key in entry["keys"]]
        if entry["mode"] == "inline":
            src: Any = [{"contents": p.body["contents"], "config": config_of(p.body),
                         "metadata": {"key": p.request.key, "sha256": p.sha256}} for p in ordered]
        else:
            lines = "".join(json.dumps({"key": p.wire_key, "request": p.body}, separators=(",", ":")) + "\n"
                            for p in ordered)
            uploaded = await self._call(f"upload of {display_name}", lambda: self._upload(lines.encode(), display_name))
            entry["input_file"] = src = uploaded.name
            self._save(ledger)

        async def create() -> types.BatchJob:
            try:
                return await self._aio.batches.create(model=self.model, src=src,
                                                      config={"display_name": display_name})
            except Exception as e:
                if classify(e) is not None and classify(e).kind in ("transient", "rate_limited"):
                    found = await self._find_by_display_name(display_name)  # it may exist all the same
                    if found is not None:
                        return found
                raise

        job = await self._call(f"create of {display_name}", create)
        self._record_job(ledger, entry, job)

    async def _upload(self, data: bytes, display_name: str) -> types.File:
        """Upload a job's JSONL input (google-genai's resumable upload, 8 MB chunks)."""
        with warnings.catch_warnings():
            # google-genai hands aiohttp each chunk as bytes, which aiohttp warns about above 1 MiB.
            warnings.filterwarnings("ignore", "Sending a large body directly", ResourceWarning)
            return await self._aio.files.upload(file=io.BytesIO(data),
                                                config={"mime_type": "jsonl", "display_name": display_name})

    def _record_job(self, ledger: dict[str, Any], entry: dict[str, Any], job: types.BatchJob) -> None:
        """Write the created job's name into the ledger (a kill before this line leaves an intent
        that the next call resolves by display name)."""
        entry.update(name=job.name, created_at=time.time(), state=state_of(job))
        self._save(ledger)
        logger.info("Gemini Batch API: created %s (%s, %d requests, %s mode)", job.name, entry["display_name"],
                    entry["request_count"], entry["mode"])

    async def _resolve_intents(self, ledger: dict[str, Any], items: dict[str, Prepared] | None) -> None:
        """Give every intent without a name its job: found by display name, else created (when the
        requests are at hand and still the same; otherwise the intent is dropped)."""
        for entry in ledger["jobs"]:
            if entry["name"] is not None or entry["state"] != UNSUBMITTED:
                continue
            found = await self._find_by_display_name(entry["display_name"])
            if found is not None:
                logger.info("Gemini Batch API: %s was created by an earlier attempt; continuing with %s",
                            entry["display_name"], found.name)
                self._record_job(ledger, entry, found)
            elif items is not None:
                if all(key in items and items[key].sha256 == sha for key, sha in entry["keys"].items()):
                    await self._create(ledger, entry, items)
                else:  # the requests changed since: plan them afresh
                    entry["state"] = NOT_CREATED
                    self._save(ledger)

    # -- states ----------------------------------------------------------------------------------
    async def _refresh(self, ledger: dict[str, Any]) -> None:
        """Ask Gemini for the state of every job not yet ended."""
        changed = False
        for entry in ledger["jobs"]:
            if entry["name"] is None or entry["state"] in ENDED:
                continue
            job = await self._call(f"get of {entry['name']}",
                                   lambda name=entry["name"]: self._aio.batches.get(name=name), missing_ok=True)
            state = state_of(job)
            if state != entry["state"]:
                entry["state"], changed = state, True
                if state == "JOB_STATE_FAILED":
                    entry["error"] = (job.error.message if job is not None and job.error and job.error.message
                                      else await self._job_error(entry["name"]))
        if changed:
            self._save(ledger)

    def _status(self, ledger: dict[str, Any]) -> BatchStatus:
        live = [e for e in ledger["jobs"] if e["state"] != NOT_CREATED]
        jobs = {e["display_name"]: e["state"] for e in live}
        all_ended = all(e["state"] in ENDED or e["cancelled_at"] is not None for e in live)
        unresolved = any(e["name"] is None for e in live)
        past = self._past_deadline(ledger)
        return BatchStatus(jobs, all_ended or past or unresolved, all_ended, self._deadline_at(ledger), past,
                           self.poll_s)

    # -- the public steps ------------------------------------------------------------------------
    async def submit(self, requests: Sequence[BatchRequest]) -> BatchStatus:
        """Make sure every request is in a job: resolve any intent left by a stopped run, then create
        one job for the requests no job holds yet (none when all are held). Safe to rerun."""
        items = await self._prepare(requests)
        ledger = self._load()
        await self._resolve_intents(ledger, items)
        held = {key for e in ledger["jobs"] if e["state"] != NOT_CREATED
                for key, sha in e["keys"].items() if key in items and items[key].sha256 == sha}
        missing = [items[key] for key in items if key not in held]
        if missing and not self._past_deadline(ledger):
            await self._submit_job(ledger, missing)
        return self._status(ledger)

    async def poll_once(self) -> BatchStatus:
        """One look at the shard's jobs (no requests needed: the trigger's call). Safe to call often."""
        ledger = self._load()
        await self._resolve_intents(ledger, None)
        await self._refresh(ledger)
        return self._status(ledger)

    async def collect(self, requests: Sequence[BatchRequest]) -> BatchOutcome:
        """Read every ended job's results, send again in one new job what failed and may be resent,
        cancel what is no longer needed, and say for every request where it stands. ``pending``
        keys wait on a job: poll, then collect again. Safe to rerun: read results are kept."""
        items = await self._prepare(requests)
        ledger = self._load()
        await self._resolve_intents(ledger, items)
        await self._refresh(ledger)
        collected_now = []
        for entry in ledger["jobs"]:
            if entry["name"] is not None and entry["state"] in ENDED and entry["collected_at"] is None:
                await self._collect_job(ledger, entry)
                collected_now.append(entry["display_name"])
        if self._past_deadline(ledger):
            await self._cancel(ledger, [e for e in ledger["jobs"] if e["name"] and e["state"] not in ENDED],
                               "the deadline passed")
        outcome, resend = self._outcome(ledger, items)
        if resend:
            await self._submit_job(ledger, resend)
            outcome.pending.extend(p.request.key for p in resend)
        waiting = set(outcome.pending)
        unneeded = [e for e in ledger["jobs"] if e["name"] and e["state"] not in ENDED and e["cancelled_at"] is None
                    and not any(key in waiting and items[key].sha256 == sha for key, sha in e["keys"].items())]
        await self._cancel(ledger, unneeded, "no request asked now waits on it")
        outcome.jobs = [job_summary(e) for e in ledger["jobs"] if e["state"] != NOT_CREATED]
        outcome.collected_now = collected_now
        outcome.pending.sort()
        return outcome

    async def run(self, requests: Sequence[BatchRequest]) -> BatchOutcome:
        """Submit, poll every ``poll_s`` and collect until every request is answered, failed or
        handed to online (the CLI's one call). Safe to rerun."""
        await self.submit(requests)
        while True:
            status = await self.poll_once()
            if status.ready:
                outcome = await self.collect(requests)
                if outcome.complete:
                    return outcome
                continue
            wait = self.poll_s
            if status.deadline_at is not None:
                wait = max(0.0, min(wait, status.deadline_at - time.time()))
            await asyncio.sleep(wait)

    async def cancel_unfinished(self, why: str = "the caller asked") -> list[str]:
        """Cancel every job of the shard not yet ended; returns their names."""
        ledger = self._load()
        entries = [e for e in ledger["jobs"] if e["name"] and e["state"] not in ENDED]
        await self._cancel(ledger, entries, why)
        return [e["name"] for e in entries]

    # -- collecting ------------------------------------------------------------------------------
    async def _cancel(self, ledger: dict[str, Any], entries: list[dict[str, Any]], why: str) -> None:
        """Cancel these jobs; one that ended meanwhile with results is collected all the same."""
        for entry in entries:
            name = entry["name"]
            await self._call(f"cancel of {name}", lambda name=name: self._aio.batches.cancel(name=name),
                             missing_ok=True)
            entry["cancelled_at"] = time.time()
            logger.info("Gemini Batch API: cancelled %s (%s): %s", name, entry["display_name"], why)
            job = await self._call(f"get of {name}", lambda name=name: self._aio.batches.get(name=name),
                                   missing_ok=True)
            entry["state"] = state_of(job)  # a cancel may take a while to show: the job counts as done for us
            self._save(ledger)
            if entry["state"] in ENDED and entry["collected_at"] is None:
                await self._collect_job(ledger, entry)

    async def _collect_job(self, ledger: dict[str, Any], entry: dict[str, Any]) -> None:
        """Read an ended job's results into its results file next to the ledger, matched by key and hash."""
        from vlmprobe.io.fs import write_bytes

        job = await self._call(f"get of {entry['name']}", lambda: self._aio.batches.get(name=entry["name"]),
                               missing_ok=True)
        dest = job.dest if job is not None else None
        lines: list[dict[str, Any]] = []
        unmatched = 0
        if dest is not None and dest.file_name:
            data = await self._call(f"download of {dest.file_name}",
                                    lambda: self._aio.files.download(file=dest.file_name), missing_ok=True)
            if data is None:
                logger.error("Gemini Batch API: the results of %s (%s) are gone: its requests are sent again",
                             entry["name"], dest.file_name)
                data = b""
            for raw in data.splitlines():
                line = matched_line(raw, entry)
                if line is None:
                    unmatched += bool(raw.strip())
                else:
                    lines.append(line)
        elif dest is not None and dest.inlined_responses:
            lines, unmatched = inline_lines(dest.inlined_responses, entry)
            if unmatched:
                ledger["inline_ok"] = False
                logger.warning("Gemini Batch API: %d inline answers of %s carry no usable metadata: the job's "
                               "requests are sent again, in file mode", unmatched, entry["name"])
        if unmatched:
            logger.warning("Gemini Batch API: %d result lines of %s match no request of it (dropped)",
                           unmatched, entry["name"])
        usage = Ledger(self.model)
        for line in lines:
            response = response_of(line)
            if response is not None:
                usage.add(usage_of(response), "batch")
        tally = usage.by_tier.get("batch")
        if lines:
            uri = self._results_uri(entry["display_name"])
            write_bytes(uri, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())
            entry["results_uri"] = uri
        entry.update(collected_at=time.time(), unmatched=unmatched, usage=usage.usage.as_dict(),
                     cost_usd=None if tally is not None and tally.unpriced else round(usage.cost_usd, 6),
                     answered=sum("response" in line or "sdk_response" in line for line in lines),
                     failed=sum("error" in line for line in lines))
        self._save(ledger)
        logger.info("Gemini Batch API: collected %s (%s): %d responses, %d errors", entry["name"], entry["state"],
                    entry["answered"], entry["failed"])

    def _results(self, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A collected job's result lines, by key."""
        from vlmprobe.io import iter_jsonl

        if not entry.get("results_uri"):
            return {}
        return {line["key"]: line for line in iter_jsonl(entry["results_uri"])}

    def _outcome(self, ledger: dict[str, Any], items: dict[str, Prepared]) -> tuple[BatchOutcome, list[Prepared]]:
        """Every key's standing from the ledger and the kept results, and the requests to send again."""
        outcome = BatchOutcome()
        billed = Ledger(self.model)
        results = {}
        for entry in ledger["jobs"]:
            if entry.get("collected_at") is not None:
                results[entry["display_name"]] = self._results(entry)
                for line in results[entry["display_name"]].values():
                    response = response_of(line)
                    if response is not None:
                        billed.add(usage_of(response), "batch")
        past = self._past_deadline(ledger)
        resend: list[Prepared] = []
        for key, item in items.items():
            jobs = [e for e in ledger["jobs"] if e["state"] != NOT_CREATED and e["keys"].get(key) == item.sha256]
            verdict = self._verdict(key, item, jobs, results)
            if isinstance(verdict, BatchAnswer):
                outcome.answers[key] = verdict
            elif isinstance(verdict, BatchFailure):
                outcome.failures[key] = verdict
            elif verdict == "pending":
                outcome.pending.append(key)
            else:
                reason, retryable = verdict
                if self.resend and retryable and not past and len(jobs) <= self.max_resubmits:
                    resend.append(item)
                else:
                    reason = "deadline" if reason == "unsubmitted" and past else reason
                    outcome.go_online[key] = GoOnline(key, reason, len(jobs))
        outcome.usage = billed.usage
        tally = billed.by_tier.get("batch")
        if tally is not None:
            outcome.cost_usd = None if tally.unpriced else round(tally.cost_usd, 6)
            outcome.standard_cost_usd = round(tally.standard_cost_usd, 6)
        else:
            outcome.cost_usd = outcome.standard_cost_usd = 0.0
        return outcome, resend

    def _verdict(self, key: str, item: Prepared, jobs: list[dict[str, Any]],
                 results: dict[str, dict[str, dict[str, Any]]]) -> Any:
        """A key's standing: a BatchAnswer or BatchFailure, "pending", or (reason, retryable)."""
        last: tuple[str, bool] = ("unsubmitted", True)
        for entry in jobs:
            if entry["name"] is None or entry["state"] not in ENDED or entry["collected_at"] is None:
                if entry["cancelled_at"] is None:
                    return "pending"
                last = ("deadline", True)
                continue
            line = results.get(entry["display_name"], {}).get(key)
            if line is None:
                reason = ("deadline" if entry["cancelled_at"] is not None
                          else JOB_REASONS.get(entry["state"], "no_result"))
                last = (reason, True)
                continue
            response = response_of(line)
            if response is None:
                error = line.get("error") or {}
                code = int(error.get("code") or 0)
                retryable = code in RETRYABLE_STATUS or code >= 500 or code == 0
                if not retryable:
                    return BatchFailure(key, f"http_{code}", one_line(str(error.get("message") or error)), Usage(),
                                        entry["display_name"])
                last = (f"http_{code}", True)
                continue
            usage = usage_of(response)
            try:
                parsed = parsed_or_reject(response, item.request.schema)
            except RejectedOutput as e:
                if e.kind == "final":
                    return BatchFailure(key, e.reason, str(e), usage, entry["display_name"])
                last = (e.reason, e.kind != "max_tokens")  # a cut-off answer goes online (it grows there)
                if e.kind == "max_tokens":
                    return last
                continue
            return BatchAnswer(key, parsed, usage, entry["display_name"], response.response_id)
        return last


async def run_batch(model: str, requests: Sequence[BatchRequest], *, ledger_uri: str, display_prefix: str,
                    **options: Any) -> BatchOutcome:
    """Submit, poll and collect ``requests`` in one call (:meth:`BatchClient.run`); ``options`` are
    :class:`BatchClient`'s. Safe to rerun with the same ledger."""
    async with BatchClient(model, ledger_uri=ledger_uri, display_prefix=display_prefix, **options) as batch:
        return await batch.run(requests)
