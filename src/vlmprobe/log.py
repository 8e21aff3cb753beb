"""One logging format for every step; rank-aware under torchrun."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s [%(name)s]%(rank)s %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: str) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once: stderr, one format, ``[rank N]`` under torchrun."""
    rank = os.environ.get("RANK")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RankFilter(f" [rank {rank}]" if rank is not None else ""))
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("VLMPROBE_LOG_LEVEL", "INFO"))
    # The HTTP stack logs every request at INFO; that drowns the progress lines.
    for noisy in ("httpx", "httpcore", "google_genai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
