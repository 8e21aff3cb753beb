"""The probe's batch pipeline: keep the target's device busy, and say what held it back.

Four stages run at once, each batch passing through them in order::

    read (1 thread)  ->  prepare (worker threads)  ->  device (1 thread)  ->  consume (event loop)
    parquet rows         decode, resize, normalise,     the model calls        judge answers, start
                         tokenise: ``prefetch`` ahead                          teacher calls (async)

- ``prepare`` runs up to ``prefetch`` batches ahead of the device in ``workers`` threads
  (PIL, numpy and the tokenizer release the GIL for most of their work).
- The device thread runs one batch at a time; while it works on batch k+1, the event loop
  judges batch k and the teacher explains batch k's failures.
- ``consume`` may block (the probe waits for room in its teacher backlog). The device then
  finishes at most one more batch and waits: that wait is the teacher holding the GPU back.

:class:`PipelineStats` accounts for the device's wall time: busy inside model calls, waiting
for input (preprocessing or reading is too slow), or waiting on the teacher; and the tail after
the device's last batch, while the last teacher calls finish. :func:`summarize` combines the
ranks' stats into what bound the step and how many fully busy devices would have done the same
work in the same time.

Safe to call from any event loop; the threads are closed when :func:`run_pipeline` returns or
raises. The first exception of any stage (reader, a worker, the device, ``consume``) stops the
pipeline and is raised as it is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

Raw = TypeVar("Raw")
Prepared = TypeVar("Prepared")
Result = TypeVar("Result")

_END = object()
# The stage that held the device back must have cost at least this share of the wall time to be
# named; below it the run was balanced and the device itself set the pace.
BOUND_SHARE = 0.2


@dataclass
class PipelineStats:
    """Where one rank's time went. Seconds are wall-clock; ``prepare_s`` is summed over workers."""

    wall_s: float = 0.0
    device_busy_s: float = 0.0  # inside the device's model calls (the result is on the host after)
    input_wait_s: float = 0.0  # device idle: the next batch was not read and prepared yet
    teacher_wait_s: float = 0.0  # device idle: its finished batch waited for consume (teacher backlog)
    tail_s: float = 0.0  # after the device's last batch, until the last teacher call ended
    prepare_s: float = 0.0
    read_s: float = 0.0
    batches: int = 0

    @property
    def busy_fraction(self) -> float:
        return self.device_busy_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def bound(self) -> str:
        """``teacher``, ``input`` or ``target``: the stage the device mostly waited for, or itself."""
        waits = {"teacher": self.teacher_wait_s + self.tail_s, "input": self.input_wait_s}
        stage, waited = max(waits.items(), key=lambda kv: kv[1])
        return stage if self.wall_s > 0 and waited >= BOUND_SHARE * self.wall_s else "target"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        out["busy_fraction"] = round(self.busy_fraction, 3)
        out["bound"] = self.bound
        return out


def summarize(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """What bound a step, from its ranks' :meth:`PipelineStats.as_dict`.

    ``devices_for_same_time``: fully busy devices that would have done the ranks' model work in
    the slowest rank's wall time (``ceil(sum(busy) / max(wall))``); fewer than the ranks used
    means the extra devices mostly waited — on the teacher when ``bound`` is ``teacher``.
    """
    if not ranks:
        return {"bound": "target", "ranks": 0}
    wall = max(r["wall_s"] for r in ranks)
    busy = sum(r["device_busy_s"] for r in ranks)
    totals = {k: round(sum(r[k] for r in ranks), 3) for k in ("device_busy_s", "input_wait_s", "teacher_wait_s", "tail_s")}
    bounds = [r["bound"] for r in ranks]
    return {
        "ranks": len(ranks),
        "wall_s": round(wall, 3),
        **totals,
        "busy_fraction": round(busy / (wall * len(ranks)), 3) if wall > 0 else 0.0,
        "bound": max(set(bounds), key=lambda b: (bounds.count(b), b == "teacher")),
        "devices_for_same_time": max(1, math.ceil(busy / wall - 1e-9)) if wall > 0 else len(ranks),
    }


@dataclass
class _Timed(Generic[Result]):
    value: Result
    seconds: float


def _timed(fn: Callable[[Any], Result], arg: Any) -> _Timed[Result]:
    started = time.perf_counter()
    value = fn(arg)
    return _Timed(value, time.perf_counter() - started)


async def run_pipeline(
    batches: Iterator[Raw],
    prepare: Callable[[Raw], Prepared],
    infer: Callable[[Prepared], Result],
    consume: Callable[[Prepared, Result], Awaitable[None]],
    *,
    finish: Callable[[], Awaitable[None]] | None = None,
    workers: int = 2,
    prefetch: int = 4,
    device_init: Callable[[], None] | None = None,
) -> PipelineStats:
    """Run every batch of ``batches`` through prepare -> infer -> consume; return the stats.

    ``batches`` is advanced in one reader thread; ``prepare`` runs in ``workers`` threads, at
    most ``prefetch`` batches ahead; ``infer`` runs in one device thread (started with
    ``device_init``, e.g. to select the rank's GPU); ``consume`` is awaited on the loop, one
    batch at a time, in input order. ``finish`` (e.g. waiting for the last teacher calls) is
    awaited after the last ``consume`` and counts as tail time.
    """
    if workers < 1 or prefetch < 1:
        raise ValueError("run_pipeline needs workers >= 1 and prefetch >= 1")
    loop = asyncio.get_running_loop()
    stats = PipelineStats()
    reader = ThreadPoolExecutor(1, thread_name_prefix="probe-read")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="probe-prepare")
    device = ThreadPoolExecutor(1, thread_name_prefix="probe-device", initializer=device_init)
    prepared_q: asyncio.Queue = asyncio.Queue(maxsize=prefetch)
    results_q: asyncio.Queue = asyncio.Queue(maxsize=1)
    device_done = [0.0]
    started = time.monotonic()

    async def read_and_prepare() -> None:
        while True:
            item = await loop.run_in_executor(reader, _timed, lambda it: next(it, _END), batches)
            stats.read_s += item.seconds
            if item.value is _END:
                break
            # Put the future, not the result: workers prepare several batches at once, in order.
            await prepared_q.put(loop.run_in_executor(pool, _timed, prepare, item.value))
        await prepared_q.put(None)

    async def drive_device() -> None:
        while True:
            waited = time.monotonic()
            future = await prepared_q.get()
            if future is None:
                break
            prepared = await future
            stats.input_wait_s += time.monotonic() - waited
            stats.prepare_s += prepared.seconds
            result = await loop.run_in_executor(device, _timed, infer, prepared.value)
            stats.device_busy_s += result.seconds
            stats.batches += 1
            waited = time.monotonic()
            await results_q.put((prepared.value, result.value))
            stats.teacher_wait_s += time.monotonic() - waited
        device_done[0] = time.monotonic()
        await results_q.put(None)

    async def consume_results() -> None:
        while (item := await results_q.get()) is not None:
            await consume(*item)
        if finish is not None:
            await finish()

    tasks = [asyncio.create_task(stage()) for stage in (read_and_prepare, drive_device, consume_results)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for executor in (reader, pool, device):
            executor.shutdown(wait=True, cancel_futures=True)
    ended = time.monotonic()
    stats.wall_s = ended - started
    stats.tail_s = ended - device_done[0] if device_done[0] else 0.0
    return stats
