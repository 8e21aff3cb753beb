"""Rank 0's side of the night's plan: the priors, what is left of today's quota, the plan, the hold.

:func:`plan_the_night` runs once, after the footers are read and before any Gemini request or GPU
work: it reads the last completed night of this deployment (:func:`last_night`), what the
Gemini project has left today (:func:`vlmprobe.teacher.daily.load_day`), computes the plan
(:func:`vlmprobe.budget.plan.plan_night`), logs it as one block and reserves the plan's
requests in the project's ledger (a rerun of the same run date replaces its own hold).

A quota already spent by someone else before the run could plan is the one case that still
fails the step (exit 4, with the time of the reset): there is nothing to plan with.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from vlmprobe.budget.history import default_priors, measured_priors
from vlmprobe.budget.plan import TAIL_LATENCY_S, NightPlan, PlanInputs, Priors, plan_night

log = logging.getLogger("vlmprobe.budget")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
HISTORY_NIGHTS = 30  # earlier run dates looked at, newest first, for a completed night


def run_dates_before(output_uri: str, run_date: str) -> list[str]:
    """Run dates with a folder under ``output_uri`` before ``run_date``, newest first."""
    from pyarrow import fs as pafs

    from vlmprobe.io.fs import resolve

    filesystem, path = resolve(output_uri)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    names = [i.base_name for i in infos if i.type == pafs.FileType.Directory and _DATE.match(i.base_name)]
    return sorted((n for n in names if n < run_date), reverse=True)


def last_night(output_uri: str, run_date: str, target_model: str) -> tuple[str, dict[str, Any]] | None:
    """The figures of the latest completed night before ``run_date`` with the same target, or None."""
    from vlmprobe.contracts import Manifest, night_figures
    from vlmprobe.errors import VlmprobeError
    from vlmprobe.io import RunLayout, exists

    for date in run_dates_before(output_uri, run_date)[:HISTORY_NIGHTS]:
        uri = RunLayout(output_uri, date).manifest
        if not exists(uri):
            continue
        try:
            manifest = Manifest.read(uri)
        except VlmprobeError as e:  # another version, damaged: look further back
            log.warning("night plan: skipping %s as history: %s", uri, e)
            continue
        if manifest.models.target != target_model:
            continue
        return date, night_figures(manifest)
    return None


def priors_for(cfg: Any) -> Priors:
    """The defaults from ``cfg``, replaced by what the last completed night measured."""
    from vlmprobe.teacher.factory import media_resolutions

    from vlmprobe.teacher.retry import tier_timing

    latency = max(cfg.teacher_latency_s, tier_timing(cfg.teacher_service_tier).expected_latency_s
                  if cfg.teacher_service_tier == "flex" else 0.0)
    defaults = default_priors(expected_error_rate=cfg.expected_error_rate, images_per_s=cfg.target_images_per_s,
                              latency_s=latency,
                              template_version=cfg.template_version, image_max_side=cfg.teacher_image_max_side,
                              thinking_budget=cfg.thinking_budget, model=cfg.gemini_model,
                              resolutions=media_resolutions(cfg))
    found = last_night(cfg.output_uri, cfg.run_date, cfg.target_model)
    return defaults if found is None else measured_priors(defaults, found[1], found[0])


def plan_the_night(cfg: Any, rows: int, ranks: int) -> NightPlan:
    """Plan ``rows`` on ``ranks`` for a ProbeConfig (see the module docstring). Raises QuotaExhausted
    when the project's requests of today are already spent."""
    from vlmprobe.errors import QuotaExhausted
    from vlmprobe.teacher.daily import load_day, project_folder, write_hold
    from vlmprobe.teacher.quota import next_pacific_midnight, pacific_day

    priors = priors_for(cfg)
    folder = project_folder(cfg.output_uri, cfg.teacher_project)
    day = pacific_day()
    left = None
    if cfg.teacher_rpd:
        ledger = load_day(folder, day)
        left = ledger.left(cfg.teacher_rpd, run_date=cfg.run_date)
        if left <= 0:
            resets = next_pacific_midnight()
            raise QuotaExhausted(
                f"the Gemini project {cfg.teacher_project!r} has no requests left today: {ledger.total} sent and "
                f"{cfg.teacher_rpd - ledger.total - left} held by other runs, of teacher_rpd={cfg.teacher_rpd}; "
                f"it resets at {resets.isoformat()} (rerun then)", resets_at=resets)
    from vlmprobe.teacher.retry import tier_timing

    tier = cfg.teacher_service_tier
    inputs = PlanInputs(rows=rows, ranks=ranks, gemini_model=cfg.gemini_model, requests_left_today=left,
                        teacher_rpm=cfg.teacher_rpm, teacher_tpm=cfg.teacher_tpm, max_cost_usd=cfg.max_cost_usd,
                        probe_wall_factor=cfg.probe_wall_factor, probe_min_tail_s=cfg.probe_min_tail_s,
                        probe_tier=tier, qa_tier=tier, qa_mode=cfg.qa_mode,
                        batch_enqueued_tokens=cfg.teacher_batch_enqueued_tokens,
                        tail_latency_s=max(TAIL_LATENCY_S, 2 * tier_timing(tier).expected_latency_s),
                        concurrency=cfg.concurrency)
    plan = plan_night(inputs, priors).model_copy(update={"day": day})
    if cfg.teacher_rpd:
        write_hold(folder, day, cfg.run_date, plan.probe_requests, plan.qa_requests)
    log.info("%s", plan.summary())
    return plan
