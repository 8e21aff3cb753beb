"""Gemini simulator: a Gemini-compatible HTTP server on loopback, for tests, benchmarks and the demo.

This module holds the HTTP side and the simulator's settings: :class:`GeminiSimulator` (validated
options, start/stop in a background thread, counters and request log), the request handler, and
:data:`ROUTES`, the table of endpoints it serves: ``POST .../models/{model}:generateContent``
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

import ipaddress
import json
import logging
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from vlmprobe.sim import batch, faults, files, generate
from vlmprobe.sim.protocol import RawBody, google_error
from vlmprobe.sim.quota import QuotaWindows
from vlmprobe.sim.stats import RequestLog, SimStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """An endpoint: ``answer(sim, match, body bytes, api key)`` gives its status and payload."""

    method: str
    path: re.Pattern[str]
    answer: Callable[[GeminiSimulator, re.Match[str], bytes, str], tuple[int, Any]]
    needs_key: bool = True


# The endpoints, tried in order. A new one (a Batch or File API call) is a row here, its code in a
# module of its own; the API key is required unless the row says otherwise.
ROUTES: tuple[Route, ...] = (
    Route("POST", generate.PATH, generate.generate_content),
    Route("POST", batch.CREATE_PATH, batch.create_job),
    Route("GET", batch.LIST_PATH, batch.list_jobs),
    Route("GET", batch.JOB_PATH, batch.get_job),
    Route("DELETE", batch.JOB_PATH, batch.delete_job),
    Route("POST", batch.CANCEL_PATH, batch.cancel_job),
    Route("POST", files.START_PATH, files.start_upload),
    # The upload session's URL is its credential, as on Google's upload server: no API key is sent.
    Route("POST", files.SESSION_PATH, files.upload_chunk, needs_key=False),
    Route("GET", files.DOWNLOAD_PATH, files.download),
    Route("GET", re.compile(r"^/stats$"), lambda sim, *_: (200, sim.stats()), needs_key=False),
    Route("GET", re.compile(r"^/requests$"), lambda sim, *_: (200, {"requests": sim.request_log()}), needs_key=False),
    Route("GET", re.compile(r"^/batch-requests$"), lambda sim, *_: (200, {"requests": sim.batch_log()}),
          needs_key=False),
    Route("GET", re.compile(r"^/batch-stats$"), lambda sim, *_: (200, sim.batch_stats()), needs_key=False),
)
# The 404 for a path no route serves, by method.
_NO_ROUTE = {
    "GET": "No route for GET {path}.",
    "POST": "No route for POST {path}; the simulator answers models/{{model}}:generateContent.",
    "DELETE": "No route for DELETE {path}.",
}
_NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Google's front end
    server_version = "GeminiSimulator/1"
    timeout = 60  # an idle keep-alive connection closes after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib line carries the raw request line (query string included); we log our own.
        pass

    def _send_json(self, code: int, payload: Any, path: str) -> None:
        raw = payload if isinstance(payload, RawBody) else RawBody(
            json.dumps(payload).encode(), "application/json; charset=UTF-8")
        logger.debug("%s %s -> %d", self.command, path, code)  # before the client can see the answer
        self.send_response(code)
        self.send_header("Content-Type", raw.content_type)
        self.send_header("Content-Length", str(len(raw.data)))
        for name, value in raw.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw.data)

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def _route(self) -> None:
        """Answer the request with the first route of :data:`ROUTES` that matches its method and path."""
        path = self.path.split("?", 1)[0]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        for route in ROUTES:
            match = route.path.match(path) if route.method == self.command else None
            if match:
                break
        else:
            self._send_json(404, google_error(404, "NOT_FOUND", _NO_ROUTE[self.command].format(path=path)), path)
            return
        api_key = self.headers.get("x-goog-api-key") or ""
        if route.needs_key and not api_key:
            self._send_json(403, google_error(403, "PERMISSION_DENIED", _NO_KEY), path)
            return
        status, payload = route.answer(self.server.sim, match, raw, api_key)
        self._send_json(status, payload, path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a burst of 100+ new connections must not overflow the backlog
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: GeminiSimulator) -> None:
        self.sim = sim
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout, shutdown) is routine here, not a traceback on stderr.
        logger.debug("Connection from %s ended with an error", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock the handler threads that wait on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(
        f"The Gemini simulator only binds loopback addresses (127.0.0.1, ::1 or localhost), not {host!r}: "
        "it is a test double with no real authentication and must not be reachable from other machines."
    )


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

