"""Build the process's one teacher client from a step config.

The run-wide quota folder is ``{output_uri}/{run_date}/_teacher``; the process's name there is
stable across attempts: ``qa-shard-NNNNN`` for a QA shard (the config has ``shard_index``),
``probe-rank-NNNNN`` for a probe rank (torchrun's ``RANK``), so a retried pod continues its
own ledger.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

# A fixed concurrency below this at flex is warned about (the automatic one goes up to 512 there).
FLEX_LOW_CONCURRENCY = 64


def teacher_folder(cfg: Any) -> str:
    """The run's ``_teacher`` folder (leases and ledgers) for a step config."""
    from vlmprobe.io import RunLayout, join

    return join(RunLayout(cfg.output_uri, cfg.run_date).root, "_teacher")


def process_name(cfg: Any) -> str:
    """This process's name among the run's teacher users."""
    if getattr(cfg, "shard_index", None) is not None:
        return f"qa-shard-{cfg.shard_index:05d}"
    return f"probe-rank-{int(os.environ.get('RANK', 0)):05d}"


def media_resolutions(cfg: Any) -> dict[str, str]:
    """The media_resolution of each request kind (factor, verify, qa) from a config's TeacherSettings."""
    return {kind: getattr(cfg, f"teacher_media_resolution_{kind}", "unspecified")
            for kind in ("factor", "verify", "qa")}


def make_teacher(cfg: Any, *, process: str | None = None, quota_folder: str | None = None,
                 service_tier: str | None = None, step_cap: int | None = None,
                 max_cost_usd: float | None = None):
    """A :class:`~vlmprobe.teacher.client.Teacher` for a config with the TeacherSettings fields.

    ``process`` and ``quota_folder`` default to :func:`process_name` and :func:`teacher_folder`;
    ``service_tier`` to the config's ``teacher_service_tier`` when it has one, else standard (the
    tier raises a timeout or retry window too short for it: see ``TIER_TIMING``).

    The daily count and the leases live in the Gemini project's shared ledger
    (:func:`vlmprobe.teacher.daily.project_folder` of ``output_uri`` and ``teacher_project``);
    ``step_cap`` is the requests the night's plan reserved for this step (None: no cap) and
    ``max_cost_usd`` this process's spend cap (default: the config's, the run's budget).
    """
    from vlmprobe.teacher.daily import project_folder
    from vlmprobe.teacher.client import Teacher
    from vlmprobe.teacher.quota import ProjectScope, QuotaLimits
    from vlmprobe.teacher.retry import RetryPolicy

    tier = service_tier or getattr(cfg, "teacher_service_tier", None) or "standard"
    if tier == "flex" and 0 < cfg.concurrency < FLEX_LOW_CONCURRENCY:
        # Little's law: at flex's minutes per answer, 16 in flight is about 3 requests a minute
        logger.warning("concurrency=%d at the flex tier keeps at most %d requests in flight; flex answers take "
                       "minutes, so that is a few requests a minute: use concurrency 0 (automatic, sized for flex)",
                       cfg.concurrency, cfg.concurrency)
    limits = QuotaLimits(rpm=cfg.teacher_rpm, tpm=cfg.teacher_tpm, rpd=cfg.teacher_rpd,
                         max_cost_usd=cfg.max_cost_usd if max_cost_usd is None else max_cost_usd)
    project = ProjectScope(project_folder(cfg.output_uri, cfg.teacher_project), cfg.run_date, step_cap)
    retry = RetryPolicy(window_s=cfg.teacher_retry_window_s, max_attempts=cfg.max_attempts or None)
    return Teacher(
        cfg.gemini_model,
        concurrency=cfg.concurrency,
        request_delay=cfg.request_delay,
        retry=retry,
        timeout_s=cfg.request_timeout_s,
        limits=limits,
        quota_folder=quota_folder or teacher_folder(cfg),
        process=process or process_name(cfg),
        thinking_budget=cfg.thinking_budget,
        max_output_tokens={"factor": cfg.max_output_tokens_factor, "verify": cfg.max_output_tokens_verify,
                           "qa": cfg.max_output_tokens_qa},
        image_max_side=cfg.teacher_image_max_side,
        media_resolution=media_resolutions(cfg),
        service_tier=tier,
        project=project,
    )
