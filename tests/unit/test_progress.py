"""Progress: log lines at an interval for log viewers, a tqdm bar on a terminal, nothing stray."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from vlmprobe.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_one_line_per_interval_with_rate_and_eta(lines):
    clock = Clock()
    with Progress(total=400, desc="qa shard 3", unit="failures", interval_s=30, logger=logging.getLogger("test.progress"),
                  stream=io.StringIO(), clock=clock) as p:
        clock.now += 5
        p.update(10)  # before the first line is due (10 s): silent
        assert lines() == []
        clock.now += 5
        p.update(10)  # 10 s in: the first line, so a short run shows it moves
        clock.now += 10
        p.update(40)  # 20 s in: within the interval, silent
        clock.now += 20
        p.update(40)  # 40 s in: the next line
        clock.now += 20
        p.update(300)
    assert lines() == [
        "qa shard 3: 20/400 failures (5%), 2 failures/s, ETA 3m10s",
        "qa shard 3: 100/400 failures (25%), 2.5 failures/s, ETA 2m00s",
        "qa shard 3: 400/400 failures (100%), 6.67 failures/s; done in 1m00s",
    ]


def test_unknown_total_and_a_failed_block(lines):
    clock = Clock()
    with pytest.raises(RuntimeError):
        with Progress(total=None, desc="probe rank 0", unit="rows", interval_s=5,
                      logger=logging.getLogger("test.progress"), stream=io.StringIO(), clock=clock) as p:
            clock.now += 6
            p.update(12)
            raise RuntimeError("boom")
    assert lines() == ["probe rank 0: 12 rows, 2 rows/s", "probe rank 0: 12 rows, 2 rows/s; stopped after 6s"]


def test_a_terminal_gets_a_bar_and_no_log_lines(lines):
    term = Terminal()
    with Progress(total=50, desc="qa shard 0", unit="failures", logger=logging.getLogger("test.progress"),
                  stream=term) as p:
        assert p.on_terminal
        for _ in range(50):
            p.update(1)
    assert lines() == []
    assert "qa shard 0" in term.getvalue() and "50/50" in term.getvalue()


def test_updates_from_threads_are_all_counted():
    p = Progress(total=8000, desc="x", interval_s=3600, stream=io.StringIO())
    with p:
        threads = [threading.Thread(target=lambda: [p.update(1) for _ in range(1000)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert p.done == 8000


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
