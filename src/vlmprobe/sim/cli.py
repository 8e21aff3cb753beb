"""Running the simulator as a process: ``vlmprobe gemini-sim`` (and ``python -m vlmprobe.sim.server``).

:func:`add_arguments` declares the flags, :func:`main` runs from them, :func:`serve` serves until
SIGINT or SIGTERM and writes the chosen port to a file for whoever started it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from vlmprobe.sim.faults import FAIL_MODES
from vlmprobe.sim.server import GeminiSimulator

logger = logging.getLogger(__name__)

_DESCRIPTION = "Gemini simulator: a Gemini-compatible HTTP server on loopback, for tests, benchmarks and the demo."


def _write_port_file(path: str | os.PathLike[str], port: int) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, target)  # a reader never sees a half-written file


def serve(host: str = "127.0.0.1", port: int = 8765, port_file: str | os.PathLike[str] | None = None, **options: Any) -> None:
    """Serve until SIGINT or SIGTERM (call from the main thread).

    ``port=0`` picks a free port; the chosen port is written to ``port_file`` when given, and
    the file is removed on exit. ``options`` are :class:`GeminiSimulator`'s keyword arguments.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with GeminiSimulator(host, port, **options) as sim:
            if port_file is not None:
                _write_port_file(port_file, sim.port)
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                if port_file is not None:
                    Path(port_file).unlink(missing_ok=True)
            logger.info("Gemini simulator stopping: %s", json.dumps(sim.stats()))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vlmprobe gemini-sim`` flags."""
    parser.add_argument("--host", default="127.0.0.1", help="Loopback address to bind (default: %(default)s).")
    parser.add_argument("--port", type=int, default=8765, help="Port; 0 picks a free one (default: %(default)s).")
    parser.add_argument("--port-file", default=None, help="Write the chosen port to this file once listening.")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="Mean latency per request, ±50%% jitter.")
    parser.add_argument("--rate-429", type=float, default=0.0, help="Fraction of requests answered 429 with RetryInfo.")
    parser.add_argument("--retry-delay", type=float, default=0.2, help="RetryInfo delay of those 429s, in seconds.")
    parser.add_argument("--rate-503", type=float, default=0.0, help="Fraction of requests answered 503 UNAVAILABLE.")
    parser.add_argument("--rate-malformed", type=float, default=0.0, help="Fraction answered 200 with cut-off JSON.")
    parser.add_argument("--rate-safety", type=float, default=0.0, help="Fraction answered with finish reason SAFETY.")
    parser.add_argument("--rate-blocked", type=float, default=0.0, help="Fraction whose prompt is blocked (no candidates).")
    parser.add_argument("--rate-max-tokens", type=float, default=0.0, help="Fraction cut off with finish MAX_TOKENS.")
    parser.add_argument("--rate-non-json", type=float, default=0.0, help="Fraction answered 200 with an HTML page.")
    parser.add_argument("--quota", type=int, default=None, help="Successful answers per model before every request is a 429.")
    parser.add_argument("--rpm", type=int, default=None, help="Requests per model per rolling minute; more get a 429.")
    parser.add_argument("--tpm", type=int, default=None, help="Input tokens per model per rolling minute; more get a 429.")
    parser.add_argument("--rpd", type=int, default=None, help="Requests per model per day; more get a per-day 429.")
    parser.add_argument("--quota-window", type=float, default=60.0, help="Length of the per-minute window, seconds.")
    parser.add_argument("--fail", choices=FAIL_MODES, default=None,
                        help="Answer every request with this error: 400 API_KEY_INVALID, 401, 403 or 404.")
    parser.add_argument("--models", default=None, help="Comma-separated models that exist; others get a 404.")
    parser.add_argument("--request-log", default=None, help="Append each request (body hash, status) to this JSONL file.")
    parser.add_argument("--verify-true-rate", type=float, default=0.85, help="Chance a 'verified'/'supported' field is true.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of answers and faults (default: %(default)s).")
    tiers = parser.add_argument_group("service tiers (requests that name serviceTier)")
    tiers.add_argument("--flex-latency-s", type=float, default=0.0, help="Extra latency of a flex request, ±50%%.")
    tiers.add_argument("--flex-shed-rate", type=float, default=0.0,
                       help="Fraction of flex requests shed with 503 UNAVAILABLE.")
    tiers.add_argument("--priority-downgrade-rate", type=float, default=0.0,
                       help="Fraction of priority requests served (and labelled) standard.")
    batch = parser.add_argument_group("Batch API")
    batch.add_argument("--batch-pending-s", type=float, default=0.0, help="Seconds a job stays PENDING.")
    batch.add_argument("--batch-running-s", type=float, default=0.0, help="Seconds a job then stays RUNNING.")
    batch.add_argument("--batch-stay-pending", action="store_true", help="Every job stays PENDING until cancelled.")
    batch.add_argument("--batch-expire", type=int, default=0, help="The first N jobs created end EXPIRED.")
    batch.add_argument("--batch-fail", type=int, default=0, help="The next N jobs end FAILED.")
    batch.add_argument("--batch-error-rate", type=float, default=0.0,
                       help="Fraction of a job's requests answered with an error (429, 500 or 503).")
    batch.add_argument("--batch-shuffle", action="store_true", help="Return a job's results out of order.")
    batch.add_argument("--batch-no-inline-metadata", action="store_true",
                       help="Drop the metadata of inline responses (as users report of Gemini).")


def main(args: argparse.Namespace) -> int:
    """Run the simulator from parsed ``add_arguments`` flags; returns the exit status."""
    try:
        serve(
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            latency_ms=args.latency_ms,
            rate_429=args.rate_429,
            retry_delay_s=args.retry_delay,
            rate_503=args.rate_503,
            rate_malformed=args.rate_malformed,
            rate_safety=args.rate_safety,
            rate_blocked=args.rate_blocked,
            rate_max_tokens=args.rate_max_tokens,
            rate_non_json=args.rate_non_json,
            quota=args.quota,
            rpm=args.rpm,
            tpm=args.tpm,
            rpd=args.rpd,
            quota_window_s=args.quota_window,
            fail=args.fail,
            models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
            request_log=args.request_log,
            verify_true_rate=args.verify_true_rate,
            seed=args.seed,
            flex_latency_s=args.flex_latency_s,
            flex_shed_rate=args.flex_shed_rate,
            priority_downgrade_rate=args.priority_downgrade_rate,
            batch_pending_s=args.batch_pending_s,
            batch_running_s=args.batch_running_s,
            batch_stay_pending=args.batch_stay_pending,
            batch_expire=args.batch_expire,
            batch_fail=args.batch_fail,
            batch_error_rate=args.batch_error_rate,
            batch_shuffle=args.batch_shuffle,
            batch_inline_metadata=not args.batch_no_inline_metadata,
        )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    return 0


def run_as_script(prog: str) -> int:
    """``python -m`` entry: logging set up, flags parsed from ``sys.argv``; returns the exit status."""
    from vlmprobe.log import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    add_arguments(parser)
    return main(parser.parse_args())
