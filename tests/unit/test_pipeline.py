"""The probe's batch pipeline: order, overlap, bounded prefetch, failures, and what bound a run."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from vlmprobe.probe.pipeline import PipelineStats, run_pipeline, summarize


def _run(coro):
    return asyncio.run(coro)


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("probe-")]


def test_every_batch_in_order_through_the_right_threads():
    prepared_in, inferred_in, consumed = set(), set(), []

    def prepare(batch):
        prepared_in.add(threading.current_thread().name)
        return [x * 10 for x in batch]

    def infer(prepared):
        inferred_in.add(threading.get_ident())
        return sum(prepared)

    async def consume(prepared, result):
        consumed.append((prepared, result))

    batches = iter([[i, i + 1] for i in range(0, 40, 2)])
    stats = _run(run_pipeline(batches, prepare, infer, consume, workers=3, prefetch=2))
    assert consumed == [([i * 10, (i + 1) * 10], (2 * i + 1) * 10) for i in range(0, 40, 2)]
    assert all(name.startswith("probe-prepare") for name in prepared_in)
    assert len(inferred_in) == 1 and threading.get_ident() not in inferred_in  # one device thread
    assert stats.batches == 20 and stats.wall_s > 0
    assert not _pipeline_threads()


def test_the_device_runs_the_next_batch_while_the_teacher_works_on_this_one():
    """consume() of batch 0 returns only once the device has started batch 1 (else: timeout)."""
    started: list[int] = []

    async def main():
        loop = asyncio.get_running_loop()
        second_started = asyncio.Event()

        def infer(batch):
            started.append(batch)
            if batch == 1:
                loop.call_soon_threadsafe(second_started.set)
            return batch

        async def consume(prepared, result):
            if result == 0:
                await asyncio.wait_for(second_started.wait(), timeout=10)

        return await run_pipeline(iter([0, 1, 2]), lambda b: b, infer, consume)

    stats = _run(main())
    assert started == [0, 1, 2] and stats.batches == 3


def test_prefetch_is_bounded():
    prepared_count = [0]
    inferred_count = [0]
    ahead = []
    lock = threading.Lock()

    def prepare(batch):
        with lock:
            prepared_count[0] += 1
            ahead.append(prepared_count[0] - inferred_count[0])
        return batch

    def infer(batch):
        time.sleep(0.01)  # a slow device: the workers would run ahead without a bound
        with lock:
            inferred_count[0] += 1
        return batch

    async def consume(prepared, result):
        pass

    _run(run_pipeline(iter(range(30)), prepare, infer, consume, workers=4, prefetch=2))
    # the batch on the device, the one awaited, ``prefetch`` queued: never more
    assert max(ahead) <= 2 + 2


@pytest.mark.parametrize("stage", ["read", "prepare", "infer", "consume"])
def test_the_first_failure_stops_the_pipeline_and_is_raised(stage):
    def batches():
        for i in range(100):
            if stage == "read" and i == 3:
                raise KeyError("read")
            yield i

    def prepare(b):
        if stage == "prepare" and b == 3:
            raise KeyError("prepare")
        return b

    def infer(b):
        if stage == "infer" and b == 3:
            raise KeyError("infer")
        return b

    seen = []

    async def consume(prepared, result):
        if stage == "consume" and result == 3:
            raise KeyError("consume")
        seen.append(result)

    with pytest.raises(KeyError, match=stage):
        _run(run_pipeline(batches(), prepare, infer, consume))
    # Batches before the failing one may still be in flight when it stops; none after it is consumed.
    assert seen == [0, 1, 2] if stage == "consume" else seen == list(range(len(seen))) and len(seen) <= 3
    assert not _pipeline_threads()


def test_a_slow_teacher_shows_as_teacher_bound():
    async def consume(prepared, result):
        await asyncio.sleep(0.1)  # the teacher backlog is full: consume waits for room

    stats = _run(run_pipeline(iter(range(6)), lambda b: b, lambda b: b, consume))
    assert stats.bound == "teacher"
    assert stats.teacher_wait_s + stats.tail_s > 0.3
    assert stats.busy_fraction < 0.5


def test_slow_preprocessing_shows_as_input_bound():
    def prepare(b):
        time.sleep(0.1)
        return b

    async def consume(prepared, result):
        pass

    stats = _run(run_pipeline(iter(range(6)), prepare, lambda b: b, consume, workers=1))
    assert stats.bound == "input" and stats.input_wait_s > 0.3 and stats.prepare_s > 0.5


def test_a_busy_device_is_target_bound():
    def infer(b):
        time.sleep(0.1)
        return b

    async def consume(prepared, result):
        pass

    stats = _run(run_pipeline(iter(range(6)), lambda b: b, infer, consume))
    assert stats.bound == "target" and stats.busy_fraction > 0.6 and stats.device_busy_s >= 0.6


def test_finish_counts_as_tail():
    async def finish():
        await asyncio.sleep(0.2)

    async def consume(prepared, result):
        pass

    stats = _run(run_pipeline(iter(range(2)), lambda b: b, lambda b: b, consume, finish=finish))
    assert stats.tail_s >= 0.2 and stats.bound == "teacher"


def test_device_init_runs_in_the_device_thread():
    names = []

    def init():
        names.append(("init", threading.current_thread().name))

    def infer(b):
        names.append(("infer", threading.current_thread().name))
        return b

    async def consume(prepared, result):
        pass

    _run(run_pipeline(iter([1]), lambda b: b, infer, consume, device_init=init))
    assert names[0][0] == "init" and names[0][1] == names[1][1] and names[1][1].startswith("probe-device")


def test_summarize_counts_the_devices_the_work_needed():
    teacher_bound = PipelineStats(wall_s=100, device_busy_s=25, teacher_wait_s=70, tail_s=5).as_dict()
    assert teacher_bound["bound"] == "teacher" and teacher_bound["busy_fraction"] == 0.25
    summary = summarize([teacher_bound] * 8)
    # 8 ranks each busy a quarter of the time: 2 busy devices would have done it in the same time.
    assert summary["devices_for_same_time"] == 2 and summary["bound"] == "teacher"
    assert summary["busy_fraction"] == 0.25 and summary["teacher_wait_s"] == 560
    busy = PipelineStats(wall_s=100, device_busy_s=95, input_wait_s=5).as_dict()
    assert busy["bound"] == "target"
    assert summarize([busy, busy])["devices_for_same_time"] == 2
    assert summarize([])["ranks"] == 0
