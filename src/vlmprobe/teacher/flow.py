"""Pacing inside one process: a rate limiter whose rate can change, and AIMD concurrency.

:class:`RateLimiter` spaces acquisitions so that at most ``rate`` units pass per second (requests,
or estimated input tokens), served in arrival order. It is the "virtual scheduling" form of
GCRA: each acquisition is given the next free start time and occupies ``amount / rate`` seconds
from there, so any window of T seconds admits at most ``rate * T`` units plus one acquisition.
We do not use aiolimiter 1.3 here, though it is well kept: its rate is fixed at construction
(the share of a run-wide quota changes whenever a process joins or leaves), it refuses an
amount larger than its capacity (one large image prompt on a small token share), and it wakes
its waiters smallest amount first, so a large request can starve behind small ones.

:class:`AdaptiveConcurrency` bounds requests in flight by a limit that halves on a rate-limit
answer (at most once per ``cooldown_s``) and grows by one after ``limit`` successes in a row of
answers, within ``[1, ceiling]``: additive increase, multiplicative decrease, as TCP does.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class RateLimiter:
    """At most ``rate`` units per second, in arrival order; ``rate`` None or 0 means no limit.

    :meth:`reserve` books the caller's start time and returns how long to wait for it; the
    caller sleeps (interruptibly, its own way). A booking that is never used is simply lost
    capacity, never excess.
    """

    def __init__(self, rate: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._next_free = 0.0

    def reserve(self, amount: float = 1.0) -> float:
        """Book ``amount`` units; returns the seconds to wait before using them (0 = now)."""
        if not self.rate or self.rate <= 0:
            return 0.0
        now = self._clock()
        start = max(now, self._next_free)
        self._next_free = start + max(amount, 0.0) / self.rate
        return start - now


class AdaptiveConcurrency:
    """Requests in flight, bounded by an AIMD limit within ``[1, ceiling]``."""

    def __init__(self, ceiling: int, *, cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {ceiling}.")
        self.ceiling = ceiling
        self.limit = ceiling
        self.in_flight = 0
        self.cooldown_s = cooldown_s
        self.decreases = 0
        self._clock = clock
        self._successes = 0
        self._last_decrease = -math.inf
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def set_ceiling(self, ceiling: int) -> None:
        """Move the upper bound (auto concurrency); the limit follows it down, and may grow to it."""
        self.ceiling = max(1, ceiling)
        self.limit = min(self.limit, self.ceiling)
        self._wake()

    def on_success(self) -> None:
        """One answer that was not rate-limited: +1 to the limit after ``limit`` of them."""
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.ceiling:
            self.limit += 1
            self._successes = 0
            self._wake()

    def on_rate_limited(self) -> bool:
        """A rate-limit answer: halve the limit, at most once per ``cooldown_s``. True if it did."""
        self._successes = 0
        now = self._clock()
        if now - self._last_decrease < self.cooldown_s:
            return False
        self._last_decrease = now
        self.limit = max(1, self.limit // 2)
        self.decreases += 1
        return True

    async def acquire(self) -> None:
        while self.in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on: we were given a free slot we will not use
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
