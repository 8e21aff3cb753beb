"""Gemini simulator: a Gemini-compatible HTTP server on loopback, for tests, benchmarks and the demo.

This module holds the simulator's settings: :class:`GeminiSimulator` (validated options,
start/stop in a background thread, counters and request log). Its HTTP side — the request
handler and :data:`vlmprobe.sim.http.ROUTES`, the table of endpoints it serves — is in
:mod:`vlmprobe.sim.http`: ``POST .../models/{model}:generateContent``
(:mod:`vlmprobe.sim.generate`, with the service tiers of :mod:`vlmprobe.sim.tiers`), the Batch API
(``POST .../models/{model}:batchGenerateContent``, ``GET .../batches``, ``GET|DELETE
.../batches/{id}``, ``POST .../batches/{id}:cancel``: :mod:`vlmprobe.sim.batch`), the File API
as google-genai uploads and downloads (:mod:`vlmprobe.sim.files`), ``GET /stats``,
``GET /requests``, ``GET /batch-requests`` and ``GET /batch-stats``. A new endpoint is a row in
that table with its code in a module of its own. It binds loopback addresses only; a request to
a route that needs an API key and has no ``x-goog-api-key`` header is refused with 403 (the
key's value is never logged or stored).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from vlmprobe.sim import batch, faults, files
from vlmprobe.sim.http import _loopback_host, _Server
from vlmprobe.sim.quota import QuotaWindows
from vlmprobe.sim.stats import RequestLog, SimStats

logger = logging.getLogger(__name__)


class GeminiSimulator:
    """A Gemini-compatible server in a background thread; use it as a context manager.

    ``latency_ms`` is the mean latency (uniform jitter ±50%). Seeded faults, each a fraction of
    requests: ``rate_429`` (a 429 with a ``RetryInfo`` of ``retry_delay_s``), ``rate_503``,
    ``rate_malformed`` (a 200 whose JSON is cut off), ``rate_safety`` (finish reason SAFETY, no
    text), ``rate_blocked`` (the prompt blocked: no candidates, ``promptFeedback.blockReason``),
    ``rate_max_tokens`` (finish MAX_TOKENS, text cut off) and ``rate_non_json`` (a 200 whose
    body is an HTML page). A request whose ``maxOutputTokens`` is below its answer (thinking
    included) is cut off with MAX_TOKENS too. Thinking tokens (``thoughtsTokenCount``) are
    reported unless the request's ``thinkingBudget`` is 0.

    Quotas per model, as Gemini enforces them: ``rpm`` requests and ``tpm`` input tokens per
    rolling ``quota_window_s`` (60 s), answered 429 with a QuotaFailure naming the quota and a
    RetryInfo saying when a slot frees; ``rpd`` requests per day (the simulator never reaches
    midnight), whose 429 names ``GenerateRequestsPerDayPerProjectPerModel``. Requests refused by
    a quota do not count against it. ``quota`` (older) caps successful answers per model, then
    answers 429 without ``RetryInfo``. ``fail`` forces every request to one error: ``invalid_key``
    (400 API_KEY_INVALID), ``401``, ``403``, ``404``; ``models`` (when given) lists the models
    that exist, others get the 404.

    Every generateContent request is logged (:meth:`request_log`, ``GET /requests``, and
    appended to ``request_log`` as JSONL when given) with a SHA-256 of its body (JSON,
    canonicalised), so a test can count how often the same request was sent. Faults depend only
    on ``seed`` and the request's number; answers only on ``seed`` and the request body.

    Service tiers (:mod:`vlmprobe.sim.tiers`), for a request that names one (``serviceTier``):
    a flex request waits ``flex_latency_s`` (±50%) and ``flex_shed_rate`` of them are shed with
    503 UNAVAILABLE; a priority request is served at standard with the chance
    ``priority_downgrade_rate``; the tier served is in the ``x-gemini-service-tier`` header.

    The Batch API (:mod:`vlmprobe.sim.batch`): a job is pending for ``batch_pending_s``, running
    for ``batch_running_s``, then ends; ``batch_stay_pending`` keeps every job pending until
    cancelled; the first ``batch_expire`` jobs created end EXPIRED and the next ``batch_fail``
    FAILED, without results; ``batch_error_rate`` of a job's requests get an error instead of a
    response; ``batch_shuffle`` returns results out of order; ``batch_inline_metadata=False``
    drops the ``metadata`` of inline responses (as users report of Gemini). Every request of a
    job is logged (:meth:`batch_log`) with its key and body hash; its answer is the one
    generateContent would give (same seed and body), with ``responseId`` naming the body's hash.

    New behaviour draws from RNGs of its own (per job, per flex request), so the default
    simulator's answers and faults are as before.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 0.0,
        rate_429: float = 0.0,
        retry_delay_s: float = 0.2,
        rate_503: float = 0.0,
        rate_malformed: float = 0.0,
        rate_safety: float = 0.0,
        rate_blocked: float = 0.0,
        rate_max_tokens: float = 0.0,
        rate_non_json: float = 0.0,
        quota: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        rpd: int | None = None,
        quota_window_s: float = 60.0,
        fail: str | None = None,
        models: list[str] | tuple[str, ...] | set[str] | None = None,
        request_log: str | os.PathLike[str] | None = None,
        verify_true_rate: float = 0.85,
        seed: int = 0,
        flex_latency_s: float = 0.0,
        flex_shed_rate: float = 0.0,
        priority_downgrade_rate: float = 0.0,
        batch_pending_s: float = 0.0,
        batch_running_s: float = 0.0,
        batch_stay_pending: bool = False,
        batch_expire: int = 0,
        batch_fail: int = 0,
        batch_error_rate: float = 0.0,
        batch_shuffle: bool = False,
        batch_inline_metadata: bool = True,
    ) -> None:
        self.host = _loopback_host(host)
        rates = {"rate_429": rate_429, "rate_503": rate_503, "rate_malformed": rate_malformed,
                 "rate_safety": rate_safety, "rate_blocked": rate_blocked, "rate_max_tokens": rate_max_tokens,
                 "rate_non_json": rate_non_json}
        for name, rate in {**rates, "verify_true_rate": verify_true_rate}.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}.")
        if sum(rates.values()) > 1.0:
            raise ValueError(f"the fault rates ({', '.join(rates)}) must add up to at most 1, got {sum(rates.values())}.")
        if latency_ms < 0 or retry_delay_s < 0:
            raise ValueError("latency_ms and retry_delay_s must not be negative.")
        for name, value in (("quota", quota), ("rpm", rpm), ("tpm", tpm), ("rpd", rpd)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be None (unlimited) or >= 0, got {value}.")
        if quota_window_s <= 0:
            raise ValueError(f"quota_window_s must be > 0, got {quota_window_s}.")
        if fail is not None and fail not in faults.FAIL_MODES:
            raise ValueError(f"fail must be one of {', '.join(faults.FAIL_MODES)}, got {fail!r}.")
        for name, rate in (("flex_shed_rate", flex_shed_rate), ("priority_downgrade_rate", priority_downgrade_rate),
                           ("batch_error_rate", batch_error_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}.")
        if min(flex_latency_s, batch_pending_s, batch_running_s) < 0 or min(batch_expire, batch_fail) < 0:
            raise ValueError("flex_latency_s, batch_pending_s, batch_running_s, batch_expire and batch_fail "
                             "must not be negative.")
        self.requested_port = port
        self.latency_ms = latency_ms
        self.rate_429 = rate_429
        self.retry_delay_s = retry_delay_s
        self.rate_503 = rate_503
        self.rate_malformed = rate_malformed
        self.rate_safety = rate_safety
        self.rate_blocked = rate_blocked
        self.rate_max_tokens = rate_max_tokens
        self.rate_non_json = rate_non_json
        self.quota = quota
        self.rpm, self.tpm, self.rpd = rpm, tpm, rpd
        self.quota_window_s = quota_window_s
        self.fail = fail
        self.models = frozenset(models) if models is not None else None
        self.verify_true_rate = verify_true_rate
        self.seed = seed
        self.flex_latency_s = flex_latency_s
        self.flex_shed_rate = flex_shed_rate
        self.priority_downgrade_rate = priority_downgrade_rate
        self.batch_pending_s = batch_pending_s
        self.batch_running_s = batch_running_s
        self.batch_stay_pending = batch_stay_pending
        self.batch_expire = batch_expire
        self.batch_fail = batch_fail
        self.batch_error_rate = batch_error_rate
        self.batch_shuffle = batch_shuffle
        self.batch_inline_metadata = batch_inline_metadata
        self.files = files.FileStore()
        self.batches = batch.BatchStore()
        self.counters = SimStats()
        self.quotas = QuotaWindows()
        self.requests = RequestLog(Path(request_log) if request_log is not None else None)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> GeminiSimulator:
        if self._server is not None:
            raise RuntimeError("The simulator is already running.")
        self._server = _Server((self.host, self.requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="gemini-sim", daemon=True
        )
        self._thread.start()
        logger.info("Gemini simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> GeminiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("The simulator is not running: call start() or use it in a with block.")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The counters (requests, by status, by model, in flight, tokens, quota 429s) as a JSON-able dict."""
        return self.counters.snapshot()

    def request_log(self) -> list[dict[str, Any]]:
        """Every generateContent request so far: number ``n``, arrival ``time`` (epoch s), ``model``,
        ``status``, ``outcome`` (ok, a fault, or the quota that refused it), ``sha256`` of the body,
        its ``prompt_tokens`` and ``max_output_tokens``."""
        return self.requests.entries()

    def batch_log(self) -> list[dict[str, Any]]:
        """Every request of every Batch API job, in the order the jobs ran them: ``job`` (its name),
        ``display_name``, ``index`` in the job's input, ``key`` (the file line's key, or the inline
        request's metadata), ``sha256`` of the request body, ``outcome`` (ok, error_NNN, ...)."""
        return self.batches.log_entries()

    def batch_stats(self) -> dict[str, Any]:
        """Batch API counters: jobs created, jobs by state, cancels, requests answered and failed, tokens."""
        return self.batches.snapshot(self)

    @property
    def request_log_path(self) -> Path | None:
        """The JSONL file each request is appended to, if any."""
        return self.requests.path

    def fault_rates(self) -> dict[str, float]:
        """Each fault's share of requests, keyed as in :data:`vlmprobe.sim.faults.FAULTS`."""
        return {fault: getattr(self, f"rate_{fault}") for fault in faults.FAULTS}

    def planned_fault(self, number: int) -> str | None:
        """The fault planned for request ``number`` (0-based): one of "429", "503", "malformed",
        "safety", "blocked", "max_tokens", "non_json", or None.

        Quota 429s, forced failures and 400s for bad requests come on top of this plan.
        """
        return faults.planned_fault(self.seed, number, self.fault_rates())


if __name__ == "__main__":
    # The module entry kept from before the split (it runs this file a second time as
    # vlmprobe.sim.server; harmless). `vlmprobe gemini-sim` takes the same flags.
    from vlmprobe.sim.cli import run_as_script

    raise SystemExit(run_as_script("python -m vlmprobe.sim.server"))

