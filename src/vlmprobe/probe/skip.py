"""A probe that already succeeded for the same work is not run again: a retry pays nothing twice.

The resume journal is cleared once ``probe/_SUCCESS.json`` is written, so without this a task
that fails after its pod succeeded (a log read, a reattach) or a clear of the probe and its
downstream tasks would probe and pay for every row again.

Rank 0, before it removes anything (:func:`finished_summary`): the step returns the existing
summary at once — no target loaded, no Gemini request — when ``_SUCCESS.json``

- was written for the same **work plan** (:func:`work_plan_sha256`: the sampled files, their row
  groups, the files found unreadable) and the same **resume fingerprint**
  (:func:`vlmprobe.probe.resume.fingerprint_settings`: target and its revision, teacher, templates,
  token and image limits);
- left no row waiting for a retry (``target_error``, ``teacher_budget_reached``: a rerun is meant
  to probe exactly those, through the journal that was kept for them);
- and its output files are all still there.

``force`` (param) reruns anyway. Not compared: the night's budget and how much of it the probe
may spend, concurrency and quotas (how fast, not what); files rewritten in place under the same
names with the same row groups look the same — use ``force`` after such a change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from vlmprobe.contracts import ProbeSuccess
from vlmprobe.io import RunLayout, exists
from vlmprobe.probe.plan import WorkPlan
from vlmprobe.probe.resume import RETRIED_REASONS, fingerprint_of

log = logging.getLogger("vlmprobe.probe")


def work_plan_sha256(plan: WorkPlan) -> str:
    """The work plan's hash: its files, row groups (file, row group, rows) and unreadable files (by name and
    reason: an error's wording is no part of the work)."""
    work = {"files": plan.files, "units": [u.to_dict() for u in plan.units],
            "lost": [[e.uri, e.reason] for e in plan.lost]}
    return hashlib.sha256(json.dumps(work, sort_keys=True).encode()).hexdigest()


def stamp(success: ProbeSuccess, target_revision: str, plan: WorkPlan, settings: dict[str, Any]) -> None:
    """Fill in what a retry compares (and the target's revision, the ranks' OOM halvings) before it is written."""
    success.target_revision = target_revision or None
    success.oom_halvings = sum(r.oom_halvings for r in success.ranks)
    success.work_plan_sha256 = work_plan_sha256(plan)
    success.fingerprint = fingerprint_of(settings)


def summary(success: ProbeSuccess, layout: RunLayout) -> dict[str, Any]:
    """The step's summary (for XCom), as :func:`vlmprobe.probe.finish.finish_step` returns it."""
    return {"success_uri": layout.probe_success, "counts": success.counts.model_dump(),
            "input": success.input.model_dump()}


def finished_summary(layout: RunLayout, plan: WorkPlan, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a ``_SUCCESS.json`` that already covers this work (see the module docstring), else None."""
    if not exists(layout.probe_success):
        return None
    success = ProbeSuccess.read(layout.probe_success)
    why_not = None
    if success.work_plan_sha256 != work_plan_sha256(plan):
        why_not = "it was written for another work plan (input files or row groups)"
    elif success.fingerprint != fingerprint_of(settings):
        why_not = "it was written with other settings (target, revision, teacher, templates or limits)"
    elif waiting := sum(success.error_reasons.get(r, 0) for r in RETRIED_REASONS):
        why_not = f"{waiting} row(s) wait for a retry ({' or '.join(RETRIED_REASONS)})"
    elif missing := [u for u in (*success.failure_files, *success.error_files, *success.wrong_files) if not exists(u)]:
        why_not = f"{len(missing)} of its output file(s) are gone, e.g. {missing[0]}"
    if why_not is not None:
        log.info("%s exists but the probe runs again: %s", layout.probe_success, why_not)
        return None
    log.warning("probe already succeeded for this work plan and these settings (%s, %d rows): skipped, not a "
                "single Gemini request sent; set force=true to probe again", layout.probe_success,
                success.counts.rows)
    return summary(success, layout)
