"""Step 1 entrypoint: ``vlmprobe probe --nproc-per-node N`` (or ``torchrun ... vlmprobe probe``).

Rank 0 lists and samples the parquet files, plans the work from their footers (row groups split
across ranks by row count, :mod:`vlmprobe.probe.plan`); when ``probe/_SUCCESS.json`` already
covers that plan with the same settings the step returns its summary and does nothing else
(:mod:`vlmprobe.probe.skip`; ``force`` reruns). Otherwise it removes what a rerun makes stale
(``RunLayout.invalidate("probe")``: earlier probe outputs, sample, QA shards, manifest — never
the resume journal or ``_teacher/``) and broadcasts the plan; every rank uses that one plan
(:mod:`vlmprobe.probe.ranks`). Each rank then reads its row groups a row group at a time, asks
the target VLM the dataset's question about ``failure_batch_size`` images at a time, and for each
wrong answer has the teacher complete a probing-factor template and verify it against the
image (:class:`vlmprobe.probe.loop.RankProbe`). Rows are decoded and preprocessed ahead by
worker threads, the target runs in its own thread, teacher calls run concurrently on the event
loop while the target works on the next batch (:mod:`vlmprobe.probe.pipeline`). One progress
line per interval says rows done of the rank's total, the rate and the ETA.

Every row read ends as exactly one of: passed, verified failure, rejected factor, error row;
every row that could not be read is counted (from the footers) and reported as an error row for
its file and row range (:mod:`vlmprobe.io.parquet`). Each row's outcome goes to the resume
journal as it finishes (:mod:`vlmprobe.probe.resume`): a rerun after a kill skips finished rows
before any target or teacher work, and the rank's output files are written from the journal at
the end.

Outputs (under ``{output_uri}/{run_date}/``, written by :mod:`vlmprobe.probe.finish`):
``probe/rank-NNNNN.jsonl`` (verified failures), ``errors/probe-rank-NNNNN.jsonl`` (rows lost at
reading, bad rows, target and teacher errors, rejected factors, each with its reason), and
``probe/_SUCCESS.json``
(:class:`vlmprobe.contracts.ProbeSuccess`, with its ``schema_version``), written by rank 0 once
every rank is done: counts, input accounting (``input``: rows read, rows lost, files lost), what
bound the step (``pipeline``), teacher totals, and each rank's stats. Then the journal is cleared,
unless some rows ended as error rows a rerun should retry (``target_error``): then it stays, and
a rerun probes only those rows. Before any of it, rank 0 plans the night from its budget
(:mod:`vlmprobe.budget`): which wrong answers get explained, what limits the night.

The step fails (exit 2, outputs kept for inspection, no ``_SUCCESS.json``) when it read no row
or lost more than ``max_error_rate`` of its input rows; with exit 1 (worth a retry: the failed
rows are not recorded as done) when the target failed on more than ``max_error_rate`` of them,
or ran out of GPU memory on a single row (a batch that runs out of memory is halved first:
:meth:`vlmprobe.probe.loop.RankProbe._infer`).
Teacher errors that stop the step (dead key, unknown model, open circuit) end it at once with
their own exit code; a daily quota, a step's reservation, the budget or the teacher window reached
is a limit: it ends the explanations, never the step (exit 4 only when the project had nothing left
today before the night could be planned).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from vlmprobe.budget.plan import NightPlan
from vlmprobe.config import ProbeConfig
from vlmprobe.errors import InputError
from vlmprobe.io import JsonlWriter, RunLayout
from vlmprobe.io.parquet import InputCounts, ReadError, WorkUnit
from vlmprobe.probe.finish import finish_step, write_rank_outputs
from vlmprobe.probe.loop import RankProbe
from vlmprobe.probe.plan import WorkPlan, plan_work, sample_files
from vlmprobe.probe.ranks import Ranks
from vlmprobe.probe.resume import ProbeJournal, fingerprint_settings, keep_or_discard
from vlmprobe.probe.skip import finished_summary

log = logging.getLogger("vlmprobe.probe")


def main(cfg: ProbeConfig) -> dict[str, Any] | None:
    """Run this process's rank of step 1; rank 0 returns the summary (for XCom), others None."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def _main() -> dict[str, Any] | None:
        with Ranks.start(cfg.pg_timeout_s, cfg.finish_timeout_s) as ranks:
            return run_rank(cfg, ranks)

    return _main()


def _sampled_files(cfg: ProbeConfig) -> list[str]:
    try:
        return sample_files(cfg.input_uri, cfg.parquet_sample_size, cfg.seed, cfg.run_date)
    except FileNotFoundError as e:
        raise InputError(f"input_uri {cfg.input_uri} does not exist: check input_uri (and the run date "
                         f"{cfg.run_date} if it names one)") from e
    except ValueError as e:
        raise InputError(f"no parquet files under {cfg.input_uri}: check input_uri (input files end in "
                         ".parquet; names starting with _ or . are skipped)") from e


def _start(cfg: ProbeConfig, layout: RunLayout, settings: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Rank 0, before any rank writes: the work plan, stale outputs removed, the journal checked."""
    files = _sampled_files(cfg)
    plan = plan_work(files)
    if plan.units:
        try:
            plan.for_rank(0, world_size)
        except ValueError as e:  # ranks outnumber the row groups
            raise InputError(str(e)) from e
    if not cfg.force and (done := finished_summary(layout, plan, settings)) is not None:
        return {"plan": plan.to_dict(), "prior": [], "skipped": done}  # nothing removed, nothing paid

    from vlmprobe.budget.night import plan_the_night

    night = plan_the_night(cfg, plan.total_rows, world_size)  # before any Gemini request or GPU work
    removed = layout.invalidate("probe")
    if removed:
        log.info("rerun: removed %d stale output(s) of this run date (probe, sample, qa, manifest)", len(removed))
    prior = keep_or_discard(layout.probe_journal, settings)
    log.info("work plan: %d file(s) sampled, %d row group(s), %d rows; %d file(s) unreadable",
             len(plan.files), len(plan.units), plan.total_rows, len(plan.lost))
    return {"plan": plan.to_dict(), "prior": prior, "night": night.model_dump(mode="json")}


def _rank_share(cfg: ProbeConfig, layout: RunLayout, plan: WorkPlan, rank: int,
                world_size: int) -> tuple[list[WorkUnit], list[ReadError]]:
    """This rank's row groups and its unreadable files, from the plan every rank shares.

    A plan with no readable row group fails the step (InputError) once the rank has written its
    lost files' error rows.
    """
    lost = plan.lost_for_rank(rank, world_size)
    if not plan.units:  # nothing readable: the lost files' error rows, then the step fails
        counts = InputCounts()
        with JsonlWriter(layout.probe_errors(rank)) as errors:
            for err in lost:
                errors.write(err.record("probe", rank=rank, run_date=cfg.run_date))
        for err in plan.lost:
            counts.add_error(err)
        raise InputError(counts.problem(cfg.max_error_rate))
    try:
        mine = plan.for_rank(rank, world_size)
    except ValueError as e:
        raise InputError(str(e)) from e
    log.info("rank %d/%d probes %d rows (%d row group(s) of %d file(s)) of %d", rank, world_size,
             sum(u.num_rows for u in mine), len(mine), len({u.uri for u in mine}), plan.total_rows)
    return mine, lost


def run_rank(cfg: ProbeConfig, ranks: Ranks) -> dict[str, Any] | None:
    """One rank of step 1 (see the module docstring); rank 0 returns the summary, others None.

    Setup (rank 0's plan, shared; this rank's share), the loop (:class:`~vlmprobe.probe.loop.RankProbe`),
    the rank's outputs, then rank 0's finish (:mod:`vlmprobe.probe.finish`).
    """
    from vlmprobe.vlm import load_target
    from vlmprobe.vlm.memory import advise_batch_size

    started_at = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    rank, world_size = ranks.rank, ranks.world_size
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    settings = fingerprint_settings(cfg)
    shared = ranks.from_rank0(lambda: _start(cfg, layout, settings, world_size))
    if "skipped" in shared:  # _SUCCESS.json already covers this work (vlmprobe.probe.skip)
        return shared["skipped"] if rank == 0 else None
    plan = WorkPlan.from_dict(shared["plan"])
    night = NightPlan.model_validate(shared["night"])
    mine, lost = _rank_share(cfg, layout, plan, rank, world_size)

    # A hub id's pinned revision: the first rank to get there stages it on the data volume, the
    # others wait for it (vlmprobe.vlm.staging); every rank then loads that copy offline.
    target = load_target(cfg.target_model, revision=cfg.target_revision or None, max_new_tokens=cfg.max_new_tokens)
    if rank == 0:
        advise_batch_size(target, cfg.failure_batch_size)
    with ProbeJournal(layout.probe_journal, rank, settings, mine, shared["prior"]) as journal:
        probe = RankProbe(cfg, rank, target, journal, journal.done_rows(), night=night)
        teacher_stats = asyncio.run(probe.run(mine, lost))
    finished_at = time.time()

    rank_stats = write_rank_outputs(cfg, layout, rank, journal, probe, mine, teacher_stats, finished_at, t0)
    log.info("rank %d done: %s%s", rank, rank_stats.counts.model_dump(),
             "; waiting for the other ranks" if world_size > 1 else "")
    gathered = ranks.gather_when_done(rank_stats)
    if rank != 0:
        return None
    return finish_step(cfg, layout, plan, gathered, started_at, t0, night)
