"""Can a step pod reach what it needs? Run by the chart's ``helm test`` pod (``python -m vlmprobe.connectivity``).

It runs in a pod like the step pods (their label, so the NetworkPolicy applies to it; their
service account, so the storage identity does), and checks, printing one line each:

1. the Gemini endpoint's host resolves (DNS allowed by the NetworkPolicy);
2. a TCP connection to it opens (egress allowed);
3. the output URI takes a write: a marker ``_connectivity-check-*.json`` is written and deleted
   again (for ``gs://``/``s3://`` this needs the storage identity).

Exit code 0 when all pass, 1 otherwise. Writes nothing else; safe to rerun.
"""

from __future__ import annotations

import argparse
import socket
import sys
import uuid
from collections.abc import Callable
from urllib.parse import urlparse

GEMINI_URL = "https://generativelanguage.googleapis.com"


def _check(name: str, fn: Callable[[], str]) -> bool:
    try:
        detail = fn()
    except Exception as e:  # every failure is one line naming the check
        print(f"FAIL {name}: {type(e).__name__}: {' '.join(str(e).split())}", flush=True)
        return False
    print(f"ok   {name}: {detail}", flush=True)
    return True


def run(gemini_url: str, output_uri: str, timeout_s: float = 10.0) -> bool:
    """All checks, each printed; True when every one passed."""
    from vlmprobe.io.fs import join, remove_file, write_bytes

    url = urlparse(gemini_url if "://" in gemini_url else f"https://{gemini_url}")
    host = url.hostname or ""
    port = url.port or (80 if url.scheme == "http" else 443)

    def resolve() -> str:
        return ", ".join(sorted({a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}))

    def connect() -> str:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            return f"connected to {s.getpeername()[0]}"

    def write() -> str:
        marker = join(output_uri, f"_connectivity-check-{uuid.uuid4().hex[:12]}.json")
        write_bytes(marker, b"{}\n")
        remove_file(marker)
        return "a marker was written and deleted"

    results = [_check(f"resolve {host}", resolve)]
    if results[0]:
        results.append(_check(f"reach {host}:{port}", connect))
    else:
        print(f"skip reach {host}:{port}: the name did not resolve", flush=True)
    results.append(_check(f"write to {output_uri}", write))
    return all(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmprobe.connectivity", description=__doc__.splitlines()[0])
    p.add_argument("--gemini-url", default=GEMINI_URL, help="the Gemini endpoint (default: Google's)")
    p.add_argument("--output-uri", required=True, help="where the steps write (a path, gs:// or s3:// URI)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="seconds a connection may take")
    args = p.parse_args(argv)
    ok = run(args.gemini_url or GEMINI_URL, args.output_uri, args.timeout_s)
    print("connectivity check " + ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
