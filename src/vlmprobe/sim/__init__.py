"""A Gemini-compatible simulator on loopback, for tests, benchmarks and the offline demo.

It is a simulator, not Gemini: it answers ``POST /v1beta/models/{model}:generateContent`` (and
``/v1/...``), the Batch API and the File API closely enough for the real google-genai client,
with schema-valid JSON generated from the request and a seed (synthetic answers, not Gemini's:
the same body and seed give the same answer), optional latency, and faults injected per request
number from the seed, so a test is reproducible. Quotas (requests and input tokens per rolling
minute, requests per day) are refused the way Gemini refuses them, and forced modes answer every
request with Gemini's error bodies. ``GET /stats`` returns the counters, ``GET /requests`` the
request log, ``GET /batch-stats`` and ``GET /batch-requests`` the same for batch jobs. Stdlib
only; safe to restart at any time (it keeps no state besides its counters, quota windows, logs,
and the batch jobs and files it holds in memory).

Run it with ``vlmprobe gemini-sim`` or ``python -m vlmprobe.sim.server``; in tests use
``with GeminiSimulator(port=0) as sim: ... sim.base_url``.

One concern per module:

- :mod:`~vlmprobe.sim.server`: :class:`GeminiSimulator`, its settings, start and stop.
- :mod:`~vlmprobe.sim.http`: the HTTP handler, the loopback-only server and the route table.
- :mod:`~vlmprobe.sim.generate`: the generateContent endpoint, step by step.
- :mod:`~vlmprobe.sim.tiers`: service tiers in generateContent (flex latency and shedding, the tier served).
- :mod:`~vlmprobe.sim.batch`: the Batch API (jobs, their states, per-request errors, shuffled results).
- :mod:`~vlmprobe.sim.files`: the File API's resumable upload and download, as google-genai calls them.
- :mod:`~vlmprobe.sim.request`: reading a request's prompt and input tokens (media tiles).
- :mod:`~vlmprobe.sim.answers`: the schema-driven synthetic answers.
- :mod:`~vlmprobe.sim.faults`: the seeded fault plan and the forced failure modes.
- :mod:`~vlmprobe.sim.quota`: the rpm/tpm/rpd windows and the 429s that name them.
- :mod:`~vlmprobe.sim.protocol`: the wire format every endpoint shares (google.rpc errors, usage).
- :mod:`~vlmprobe.sim.stats`: the counters (``/stats``) and the request log (``/requests``).
- :mod:`~vlmprobe.sim.cli`: ``vlmprobe gemini-sim``'s flags and the serving process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmprobe.sim.cli import add_arguments, main, serve
    from vlmprobe.sim.server import GeminiSimulator
    from vlmprobe.sim.stats import SimStats

__all__ = ["GeminiSimulator", "SimStats", "add_arguments", "main", "serve"]
_HOMES = {"GeminiSimulator": "server", "SimStats": "stats", "add_arguments": "cli", "main": "cli", "serve": "cli"}


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m vlmprobe.sim.server` finds the module not yet imported (runpy warns otherwise).
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"vlmprobe.sim.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
