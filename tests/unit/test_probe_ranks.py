"""The probe's ranks: the launcher names the rank whose failure ended the job; one process needs no group."""

from __future__ import annotations

from types import SimpleNamespace

from vlmprobe.cli import _root_failure
from vlmprobe.probe.ranks import Ranks


def _failures(**by_rank):
    return SimpleNamespace(failures={int(r[1:]): SimpleNamespace(exitcode=code, timestamp=ts)
                                     for r, (code, ts) in by_rank.items()})


def test_a_rank_terminated_while_exiting_is_not_the_cause():
    # both ranks met a dead teacher; rank 1 wrote its error first but was terminated (-15) while
    # shutting down, after rank 0 exited 3: the job's code is 3
    rank, failure = _root_failure(_failures(r0=(3, 101), r1=(-15, 100)))
    assert (rank, failure.exitcode) == (0, 3)
    # a rank killed by a signal is the cause when no rank exited on its own
    rank, failure = _root_failure(_failures(r0=(-9, 100), r1=(-15, 100)))
    assert (rank, failure.exitcode) == (0, -9)
    rank, _ = _root_failure(_failures(r0=(2, 105), r1=(1, 103)))
    assert rank == 1


def test_one_process_is_rank_zero_of_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with Ranks.start(pg_timeout_s=5, finish_timeout_s=5) as ranks:
        assert (ranks.rank, ranks.world_size, ranks.distributed) == (0, 1, False)
        assert ranks.from_rank0(lambda: {"plan": 1}) == {"plan": 1}
        assert ranks.gather_when_done({"rank": 0}) == [{"rank": 0}]
