"""A Gemini-compatible simulator on loopback, for tests, benchmarks and the offline demo.

It is a simulator, not Gemini: answers are schema-valid JSON generated from the request,
deterministically, with optional latency and injected faults. See :mod:`vlmprobe.sim.server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmprobe.sim.server import GeminiSimulator, SimStats, add_arguments, main, serve

__all__ = ["GeminiSimulator", "SimStats", "add_arguments", "main", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m vlmprobe.sim.server` does not import the module twice.
    if name in __all__:
        from vlmprobe.sim import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
