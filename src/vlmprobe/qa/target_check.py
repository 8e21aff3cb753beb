"""The QA step's target check: every generated QA item put to the target, on one device thread.

:func:`check_mode` decides (and refuses settings that cannot work, before anything is written);
:class:`TargetCheck` batches the items of the failures the teacher has answered and runs them on
the device while the event loop goes on with the next failures.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vlmprobe.config import QAConfig
from vlmprobe.errors import UsageError

log = logging.getLogger("vlmprobe.qa")

TARGET_BATCH_ITEMS = 64  # QA items per batch of the target check


def check_mode(cfg: QAConfig) -> bool:
    """Whether this shard puts its items to the target; raises UsageError for settings that cannot work.

    ``on`` without torch/transformers installed (the ``qa`` extra has neither) and
    ``qa_keep=target_failed`` without the check are refused before anything is written.
    """
    from vlmprobe.vlm.check import target_check_enabled

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if cfg.qa_target_check == "on" and missing:
        raise UsageError(f"qa_target_check=on needs {' and '.join(missing)} in the QA image, which has "
                         "only the 'qa' extra: install vlmprobe[probe] there (the GPU worker image) or set "
                         "qa_target_check=off")
    # auto: on with a CUDA GPU, and only where the target can be loaded at all
    enabled = not (cfg.qa_target_check == "auto" and missing) and target_check_enabled(cfg.qa_target_check)
    if cfg.qa_keep == "target_failed" and not enabled:
        why = "is off" if cfg.qa_target_check == "off" else "found no CUDA GPU (qa_target_check=auto)"
        raise UsageError(f"qa_keep=target_failed keeps only the items the target got wrong, but the target "
                         f"check {why}: set qa_target_check=on or qa_keep=all")
    return enabled


class TargetCheck:
    """Puts QA items to the target in batches on one device thread, while the event loop goes on.

    :meth:`submit` queues one failure's items (all about one image, decoded once: the target
    encodes it once); full batches start at once, :meth:`finish` runs the rest and waits.
    ``results[(seq, j)]`` is the :class:`~vlmprobe.vlm.check.CheckedAnswer` of item ``j`` of
    failure ``seq``, or None when the target failed on that item alone.

    A batch that runs out of GPU memory is retried in halves, and ``batch_items`` stays halved for
    the later batches (``oom_halvings`` counts it); out of memory on one item fails the shard.
    Any other failure of a batch: its items are asked one at a time (that batch only).
    """

    def __init__(self, target: Any, batch_items: int = TARGET_BATCH_ITEMS) -> None:
        self.target, self.batch_items = target, batch_items
        bind = getattr(target, "bind_thread", None)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="qa-target", initializer=bind)
        self._pending: list[tuple[tuple[int, int], Any, dict[str, Any]]] = []
        self._running: list[asyncio.Future] = []
        self.results: dict[tuple[int, int], Any] = {}
        self.busy_s = 0.0
        self.batches = 0
        self.oom_halvings = 0
        self._first_batch_items = batch_items

    def submit(self, seq: int, image: Any, items: list[dict[str, Any]]) -> None:
        for j, item in enumerate(items):
            self._pending.append(((seq, j), image, item))
        # batch_items once per batch: the device thread may halve it between two reads
        while len(self._pending) >= (n := self.batch_items):
            self._start(self._pending[:n])
            del self._pending[:n]

    def _start(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        self._running.append(loop.run_in_executor(self._executor, self._check, batch))

    def _ask(self, part: list) -> list:
        from vlmprobe.vlm.check import check_answers

        return check_answers(self.target, [im for _, im, _ in part], [it["question"] for _, _, it in part],
                             [it["answer"] for _, _, it in part], [it["choices"] or None for _, _, it in part],
                             batch_size=len(part))

    def _check(self, batch: list) -> None:
        """Device thread: one batch, at most ``batch_items`` items per call (halved when memory runs out);
        when a call fails otherwise, its items alone (one bad item is one unknown answer)."""
        from vlmprobe.vlm.memory import is_out_of_memory

        started = time.perf_counter()
        try:
            got: list = []
            start = 0
            while start < len(batch):
                part = batch[start:start + self.batch_items]
                out_of_memory = False
                try:
                    got.extend(self._ask(part))
                except Exception as e:
                    out_of_memory = is_out_of_memory(e)
                    if not out_of_memory:
                        log.error("the target failed on a batch of %d QA items (%s: %s); asking them one at a "
                                  "time", len(part), type(e).__name__, e, exc_info=e)
                        got.extend(self._one_at_a_time(part))
                if out_of_memory:  # out of the except block: the failed call's tensors are free to go
                    self._halve(len(part))
                    continue
                start += len(part)
            for (key, _, _), answer in zip(batch, got):
                self.results[key] = answer
        finally:
            self.busy_s += time.perf_counter() - started
            self.batches += 1

    def _one_at_a_time(self, part: list) -> list:
        from vlmprobe.vlm.memory import is_out_of_memory

        got = []
        for one in part:
            out_of_memory = False
            try:
                got.extend(self._ask([one]))
            except Exception as e:
                out_of_memory = is_out_of_memory(e)
                if not out_of_memory:
                    log.error("the target failed on QA item %s: %s: %s", one[0], type(e).__name__, e)
                    got.append(None)
            if out_of_memory:
                self._halve(1)  # raises: not even one item fits
        return got

    def _halve(self, failed_items: int) -> None:
        """The target ran out of GPU memory on ``failed_items`` items: free the cache, halve ``batch_items``;
        at one item, raise (exit 1)."""
        from vlmprobe.vlm.memory import free_device_memory, out_of_memory_at_one_row

        free_device_memory()
        if failed_items <= 1:
            raise out_of_memory_at_one_row("qa target check", self.oom_halvings, self._first_batch_items)
        self.batch_items = max(1, min(self.batch_items, failed_items) // 2)
        self.oom_halvings += 1
        log.warning("the target ran out of GPU memory on %d QA items: %d items per batch from now on (halving %d)",
                    failed_items, self.batch_items, self.oom_halvings)

    async def abandon(self) -> None:
        """The step stops: queue nothing more, let the batch on the device end (it cannot be interrupted)."""
        self._pending = []
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running = []

    async def finish(self) -> None:
        if self._pending:
            self._start(self._pending)
            self._pending = []
        try:
            await asyncio.gather(*self._running)
        finally:
            self._running = []

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


async def decoded_rgb(image: Any) -> Any:
    """The RGB image of a resumed failure, for the target check (None when it cannot be read now)."""
    if image is None or isinstance(image, Exception):
        return None
    from vlmprobe.images import decode

    try:
        rgb, _, _ = await asyncio.to_thread(decode, image)
    except ValueError:
        return None
    return rgb
