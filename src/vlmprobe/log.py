"""One logging format for every step; rank-aware under torchrun.

``%(asctime)s %(levelname)s [%(name)s] [rank N] %(message)s`` — the pod operator parses the level
out of each line and re-logs it at that level in the task log. The rank tag lives in the
formatter (not a handler filter), so a handler that copies the formatter — tqdm's logging
redirect, for one — keeps it.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s [%(name)s]%(rank)s %(message)s"


class RankFormatter(logging.Formatter):
    """:data:`FORMAT` with `` [rank N]`` filled in under torchrun (empty otherwise)."""

    def __init__(self, rank: str | None = None) -> None:
        super().__init__(FORMAT)
        self.rank = f" [rank {rank}]" if rank is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        record.rank = self.rank
        return super().format(record)


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once: stderr, one format, ``[rank N]`` under torchrun."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RankFormatter(os.environ.get("RANK")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("VLMPROBE_LOG_LEVEL", "INFO"))
    # The HTTP stack logs every request at INFO; that drowns the progress lines.
    for noisy in ("httpx", "httpcore", "google_genai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
