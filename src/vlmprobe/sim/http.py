"""The simulator's HTTP side: :data:`ROUTES`, the table of endpoints it serves, the request handler and
the loopback-only server. A new endpoint is a row in that table with its code in a module of its
own; a request to a route that needs an API key and has no ``x-goog-api-key`` header is refused
with 403 (the key's value is never logged or stored).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from vlmprobe.sim import batch, files, generate
from vlmprobe.sim.protocol import RawBody, google_error

if TYPE_CHECKING:
    from vlmprobe.sim.server import GeminiSimulator

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
