"""Progress of a long loop, for whoever watches it: a tqdm bar on a terminal, log lines elsewhere.

Pod logs and the Airflow task log are read in a log viewer, where a bar is noise (carriage
returns, a line glued to the next log line). There :class:`Progress` logs one line per interval
— done/total, rate, ETA — through the step's logger, in the one log format::

    with Progress(total=len(failures), desc="qa shard 3", unit="failures", logger=log) as progress:
        for batch in batches:
            ...
            progress.update(len(batch))

logs ``qa shard 3: 120/480 failures (25%), 4.1 failures/s, ETA 1m28s`` every ``interval_s``
(the first one sooner, so a short run shows it is moving) and a last line when the block ends.
On a terminal it draws a tqdm bar instead, with log lines printed above it, never through it.
``update`` is thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

FIRST_LINE_AFTER_S = 10.0


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Count work done; report it every ``interval_s`` seconds (see the module docstring).

    :param total: units expected, or None when unknown (then no percentage or ETA).
    :param desc: what is being done, first on each line (``"probe rank 0"``).
    :param unit: the plural noun counted (``"rows"``, ``"failures"``).
    :param interval_s: seconds between two log lines when not on a terminal.
    :param logger: where the lines go; ``vlmprobe.progress`` by default.
    :param stream: the terminal to test (and to draw a bar on); stderr by default.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "items", interval_s: float = 30.0, *,
                 logger: logging.Logger | None = None, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.log = logger or logging.getLogger("vlmprobe.progress")
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._redirect: contextlib.AbstractContextManager | None = None
        self._started = self._next_line = 0.0

    @property
    def on_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def __enter__(self) -> Progress:
        self._started = self.clock()
        self._next_line = self._started + min(self.interval_s, FIRST_LINE_AFTER_S)
        if self.on_terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, file=self.stream,
                             mininterval=0.5, dynamic_ncols=True)
            # log records go through tqdm.write: printed above the bar, not glued to it
            self._redirect = logging_redirect_tqdm(tqdm_class=tqdm)
            self._redirect.__enter__()
        return self

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = self.clock()
            if now < self._next_line:
                return
            self._next_line = now + self.interval_s
            line = self.line(now)
        self.log.info("%s", line)

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be logged now."""
        elapsed = (self.clock() if now is None else now) - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}"
        if self.total is not None:
            text += f"/{self.total} {self.unit}"
            if self.total > 0:
                text += f" ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total is not None and 0 < rate and self.done < self.total:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            if self._redirect is not None:
                self._redirect.__exit__(*exc)
            self._bar.close()
            self._bar = None
            return
        now = self.clock()
        how = "done in" if exc[0] is None else "stopped after"
        self.log.info("%s; %s %s", self.line(now), how, format_duration(now - self._started))
