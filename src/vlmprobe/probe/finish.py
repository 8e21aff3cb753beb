"""The end of the probe: each rank's output files and stats, then rank 0's verdict and ``_SUCCESS.json``.

:func:`write_rank_outputs` (every rank): the rank's failures and error rows, written from the
resume journal (:meth:`vlmprobe.probe.resume.ProbeJournal.write_outputs`), and its stats for rank 0.
:func:`finish_step` (rank 0, once every rank is done): the step fails when its input or the target
failed too often; otherwise ``probe/_SUCCESS.json`` (:class:`vlmprobe.contracts.ProbeSuccess`) is
written and the journal cleared, unless some rows wait for a retry.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from typing import Any

from vlmprobe.config import ProbeConfig
from vlmprobe.budget.plan import NightPlan
from vlmprobe.contracts import (
    ExplainStats,
    InputAccounting,
    NightOutcome,
    PipelineSummary,
    ProbeCounts,
    ProbeRankStats,
    ProbeSuccess,
    RankPipeline,
)
from vlmprobe.errors import InputError, VlmprobeError
from vlmprobe.io import RunLayout
from vlmprobe.io.parquet import InputCounts, WorkUnit
from vlmprobe.probe.loop import RankProbe
from vlmprobe.probe.pipeline import summarize
from vlmprobe.probe.plan import WorkPlan
from vlmprobe.probe.resume import RETRIED_REASONS, ProbeJournal, fingerprint_settings
from vlmprobe.probe.skip import stamp
from vlmprobe.provenance import probe_provenance

log = logging.getLogger("vlmprobe.probe")

# Counts of _SUCCESS.json (vlmprobe.contracts.ProbeCounts says what each is).
COUNT_KEYS = tuple(ProbeCounts.model_fields)
# Teacher stats summed over ranks in _SUCCESS.json's "teacher".
_TEACHER_SUMS = ("requests", "retries", "rate_limited", "succeeded", "failed", "prompt_tokens", "output_tokens",
                 "thinking_tokens", "cached_tokens", "estimated_cost_usd", "paused_s")


def write_rank_outputs(cfg: ProbeConfig, layout: RunLayout, rank: int, journal: ProbeJournal, probe: RankProbe,
                       units: list[WorkUnit], teacher_stats: dict[str, Any], finished_at: float,
                       t0: float) -> ProbeRankStats:
    """The rank's output files, written from its (closed) journal; its stats, checked against what it read.

    Safe to repeat: the files are replaced. ``finished_at``: when the rank's last row was done
    (epoch seconds); ``t0``: when the rank started (monotonic).
    """
    where = {"rank": rank, "run_date": cfg.run_date}
    tally = journal.write_outputs(layout.probe_rank(rank), layout.probe_errors(rank), probe.read_errors, where,
                                  wrong_uri=layout.probe_wrong(rank))
    if tally.counts["rows"] != probe.input.rows_read:
        raise RuntimeError(f"rank {rank} lost track of rows: read {probe.input.rows_read}, its outputs account "
                           f"for {tally.counts['rows']} ({dict(tally.counts)})")
    counts = ProbeCounts(**{k: tally.counts[k] for k in COUNT_KEYS if k != "probed"},
                         probed=probe.counts["probed"])
    return ProbeRankStats(
        rank=rank,
        work_units=len(units),
        files=sorted({u.uri for u in units}),
        failures_uri=layout.probe_rank(rank),
        errors_uri=layout.probe_errors(rank),
        counts=counts,
        input=InputAccounting(**probe.input.to_dict()),
        error_reasons=dict(tally.error_reasons),
        unexplained_reasons=dict(tally.unexplained_reasons),
        tokens=dict(tally.tokens),
        teacher=teacher_stats,  # this attempt's requests (earlier attempts' are in their ledgers)
        pipeline=RankPipeline(**probe.pipeline_stats.as_dict()),  # device busy time, waits, what bound the rank
        finished_at=round(finished_at, 3),
        elapsed_s=round(time.monotonic() - t0, 3),
        wrong_uri=layout.probe_wrong(rank),
        explain=ExplainStats(**probe.explain_stats()),
        oom_halvings=probe.oom_halvings,
    )


def _teacher_totals(ranks: list[ProbeRankStats]) -> dict[str, Any]:
    total: dict[str, Any] = {k: 0 for k in _TEACHER_SUMS}
    failures: Counter[str] = Counter()
    gave_up: Counter[str] = Counter()
    for r in ranks:
        t = r.teacher or {}
        for k in _TEACHER_SUMS:
            total[k] += t.get(k, 0)
        failures.update(t.get("failures", {}))
        gave_up.update(t.get("gave_up", {}))
    total["estimated_cost_usd"] = round(total["estimated_cost_usd"], 6)
    total["paused_s"] = round(total["paused_s"], 3)
    return {**total, "failures": dict(failures), "gave_up": dict(gave_up)}


def night_outcome(gathered: list[ProbeRankStats], counts: ProbeCounts, plan: NightPlan | None) -> NightOutcome:
    """What the night did against its plan: explained and unexplained wrong answers, the limit met,
    GPU-hours held (each rank's whole time) and busy (its model calls)."""
    unexplained: Counter[str] = Counter()
    strata: Counter[str] = Counter()
    limits = []
    for s in gathered:
        unexplained.update(s.unexplained_reasons)
        if s.explain is not None:
            strata.update(s.explain.wrong_by_stratum)
            if s.explain.limited != "none":
                limits.append(s.explain.limited)
    if limits:  # a limit met while the night ran: the most common among the ranks
        limited_by = max(set(limits), key=lambda name: (limits.count(name), name))
    elif unexplained.get("not_selected") and plan is not None:
        limited_by = plan.limited_by
    else:
        limited_by = "none"
    explains = [s.explain for s in gathered if s.explain is not None]
    return NightOutcome(
        explained=counts.explained, unexplained=counts.unexplained, unexplained_reasons=dict(unexplained),
        teacher_errors=counts.teacher_errors, limited_by=limited_by,
        gpu_hours_held=round(sum(s.elapsed_s for s in gathered) / 3600, 6),
        gpu_hours_busy=round(sum(s.pipeline.device_busy_s for s in gathered) / 3600, 6),
        pass_s=round(max((e.pass_s for e in explains), default=0.0), 3),
        wall_s=round(max((s.pipeline.wall_s for s in gathered), default=0.0), 3),
        scale=min((e.scale for e in explains), default=1.0), lowered=sum(e.lowered for e in explains),
        wrong_by_stratum=dict(strata),
    )


def finish_step(cfg: ProbeConfig, layout: RunLayout, plan: WorkPlan, gathered: list[ProbeRankStats],
                started_at: dt.datetime, t0: float, night: NightPlan | None = None) -> dict[str, Any]:
    """Rank 0, every rank done: check the step's input and target errors, write ``_SUCCESS.json``.

    Then the journal goes, unless rows wait for a retry, and the probe's unused reservation of
    today's requests goes back to the project. Returns the step's summary (for XCom).
    """
    total: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    read = InputCounts()
    for s in gathered:
        total.update(s.counts.model_dump())
        reasons.update(s.error_reasons)
        tokens.update(s.tokens)
        read.merge(InputCounts(**s.input.model_dump()))
    problem = read.problem(cfg.max_error_rate)
    if problem:  # the outputs stay for inspection; no _SUCCESS.json, the journal kept
        raise InputError(problem)
    target_errors = reasons["target_error"]
    if total["rows"] and target_errors / total["rows"] > cfg.max_error_rate:
        raise VlmprobeError(f"the target failed on {target_errors} of {total['rows']} rows, more than max_error_rate "
                            f"{cfg.max_error_rate:.1%}: see the target_error rows; a rerun probes them again")
    success = ProbeSuccess(
        run_date=cfg.run_date,
        world_size=len(gathered),
        input_uri=cfg.input_uri,
        input_files=plan.files,
        failure_files=[s.failures_uri for s in gathered],
        error_files=[s.errors_uri for s in gathered],
        counts=ProbeCounts(**{k: total[k] for k in COUNT_KEYS}),
        input=InputAccounting(**read.to_dict()),
        error_reasons=dict(reasons),
        tokens=dict(tokens),
        teacher=_teacher_totals(gathered),
        pipeline=PipelineSummary(**summarize([s.pipeline.model_dump() for s in gathered])),
        target_model=cfg.target_model,
        teacher_model=cfg.gemini_model,
        template_version=cfg.template_version,
        ranks=gathered,
        started_at=started_at.isoformat(),
        elapsed_s=round(time.monotonic() - t0, 3),
        provenance=probe_provenance(plan.fingerprints, getattr(cfg, "target_revision", None)),
        wrong_files=[s.wrong_uri for s in gathered if s.wrong_uri],
    )
    stamp(success, cfg.target_revision, plan, fingerprint_settings(cfg))  # revision, OOMs, skip keys
    outcome = night_outcome(gathered, success.counts, night)
    success = success.model_copy(update={"night_plan": night, "night": outcome})
    success.write(layout.probe_success)
    _release_hold(cfg, night, "probe")
    retried = sum(reasons[r] for r in RETRIED_REASONS)
    if retried:  # target_error rows: a rerun probes only them, paying nothing twice
        log.warning("resume journal kept: %d row(s) ended as %s error rows; a rerun (e.g. with a larger "
                    "max_cost_usd) probes only those", retried, " or ".join(RETRIED_REASONS))
    else:
        ProbeJournal.clear_dir(layout.probe_journal)  # only now: the outputs are complete for good
    counts, read_input = success.counts.model_dump(), success.input.model_dump()
    log.info("probe done: %s; input %s; bound by %s", counts, read_input, success.pipeline.bound)
    log.info("night: %d wrong answer(s) explained, %d unexplained %s; limited by %s; GPU-hours held %.3f, "
             "busy %.3f; pass %.0f s, loop %.0f s", outcome.explained, outcome.unexplained,
             outcome.unexplained_reasons, outcome.limited_by, outcome.gpu_hours_held, outcome.gpu_hours_busy,
             outcome.pass_s, outcome.wall_s)
    return {"success_uri": layout.probe_success, "counts": counts, "input": read_input}


def _release_hold(cfg: ProbeConfig, night: NightPlan | None, step: str) -> None:
    """The step's unused reservation of its plan's day goes back to the Gemini project."""
    if night is None or night.day is None or not cfg.teacher_rpd:
        return
    from vlmprobe.teacher.daily import project_folder, release_hold

    try:
        release_hold(project_folder(cfg.output_uri, cfg.teacher_project), night.day, cfg.run_date, step)
    except OSError as e:  # the hold then lapses with its day; the outputs are what matter
        log.warning("could not release the %s reservation of %s: %s", step, night.day, e)
