"""The probe's ranks and their only two collectives, both on gloo (the CPU).

The probe has no tensor collectives: ranks exchange two small Python objects, so the process
group is gloo even on GPUs (NCCL's watchdog and its CUDA streams would buy nothing here).

1. **Start-up** (:meth:`Ranks.from_rank0`): rank 0 lists and samples the input, plans the work
   and broadcasts the plan; every rank uses that plan, so files landing mid-start cannot give
   ranks different lists. A failure on rank 0 (no input, …) is broadcast too and every rank
   raises it, so each rank ends with the same one-line error. This runs on the default group,
   whose timeout is ``pg_timeout_s``: a rank that never starts fails the job after it.
2. **Finish** (:meth:`Ranks.gather_when_done`): each rank sends its stats to rank 0 once its
   rows are done. Ranks finish far apart (a slow teacher, more failures on one share), so this
   runs on a gloo group of its own whose timeout is ``finish_timeout_s`` (default 24 h, at or
   above the task's execution timeout): a rank that finished early waits for the slowest without
   hitting any watchdog. A rank that crashes meanwhile still ends the job within seconds: torchrun
   sees its exit and stops the others (the waiting ones included).

Without torchrun (no ``RANK``/``MASTER_ADDR``) there is one rank and both are local calls.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vlmprobe.errors import InputError, QuotaExhausted, TeacherUnusable, VlmprobeError, exit_code_for

log = logging.getLogger("vlmprobe.probe")

# A failure on rank 0 before the plan went out, raised on the other ranks with the same exit code.
_RAISE_AS: dict[int, type[VlmprobeError]] = {2: InputError, 3: TeacherUnusable, 4: QuotaExhausted}


class RankZeroFailed(VlmprobeError):
    """Rank 0 failed before it could share the work plan (its own error is in its log)."""


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    _finish_group: Any = None

    @classmethod
    @contextmanager
    def start(cls, pg_timeout_s: float, finish_timeout_s: float) -> Iterator[Ranks]:
        """This process's rank; under torchrun, the gloo process group and the finish group."""
        distributed = "RANK" in os.environ and "MASTER_ADDR" in os.environ
        ranks = cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)), distributed)
        if not distributed:
            yield ranks
            return
        import torch
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(ranks.local_rank)  # the rank's GPU, for the target
        dist.init_process_group("gloo", timeout=dt.timedelta(seconds=pg_timeout_s))
        try:
            ranks._finish_group = dist.new_group(backend="gloo", timeout=dt.timedelta(seconds=finish_timeout_s))
            log.info("process group: backend=gloo world_size=%d timeout=%ds (start-up), %ds (waiting for the "
                     "slowest rank)", ranks.world_size, pg_timeout_s, finish_timeout_s)
            yield ranks
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    def from_rank0(self, make: Callable[[], Any]) -> Any:
        """``make()`` run on rank 0 only; every rank gets its result, or raises its failure."""
        if not self.distributed:
            return make()
        import torch.distributed as dist

        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.rank == 0:
            try:
                box[0] = {"ok": make()}
            except Exception as e:  # shared, then raised on every rank
                failure = e
                code, expected = exit_code_for(e)
                text = str(e) if expected else f"{type(e).__name__}: {e}"
                box[0] = {"error": text, "exit_code": code}
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        if "error" in box[0]:
            raise _RAISE_AS.get(box[0]["exit_code"], RankZeroFailed)(box[0]["error"])
        return box[0]["ok"]

    def gather_when_done(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (others get None), once every rank is done; see the module docstring."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self._finish_group)
        return out
