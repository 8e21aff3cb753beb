"""Step 4: check that every expected output exists and adds up, judge the run, write ``manifest.json``.

Reads ``probe/_SUCCESS.json``, ``sample/shards.json`` and each QA shard's stats through their
models (:mod:`vlmprobe.contracts`: a file of a ``schema_version`` this code does not read stops
the step with one line, exit 2), the run's teacher ledgers (``_teacher/ledgers/``), counts the
lines of every output file, and:

- refuses to publish (``RuntimeError``, retried) when a shard is missing or a count does not
  add up — no manifest is written, there is nothing consistent to describe;
- **fails the run** (:class:`RunFailed`, exit 2, not retried) when the teacher failed too often
  — its error rows (``teacher_*``) above ``max_error_rate`` of a step's records (probe: of its
  rows; qa: of its failures). A limit the night's plan foresaw — wrong answers left unexplained,
  QA failures left unasked (``limited_*`` rows) because of the daily quota, a reservation or
  ``max_cost_usd`` — never fails a run: the manifest's ``night`` says what limited it
  (``limited_by``) with the plan next to what happened. The outputs stay for inspection and the
  manifest is written as ``manifest.failed.json`` (with ``failed``: the reasons), never as
  ``manifest.json``: a consumer that waits for ``manifest.json`` never sees a failed run;
- otherwise writes ``manifest.json`` (:class:`vlmprobe.contracts.Manifest`, with its
  ``schema_version``): per step the counts, the input accounting, what bound the probe, the
  teacher's figures (requests, retries, 429s, prompt/output/thinking/cached tokens, estimated
  cost) and the QA items the target failed; run totals; the QA Parquet files (their footers'
  rows must equal the items) and the run's provenance (:mod:`vlmprobe.provenance`); then the
  dataset card ``README.md`` (:mod:`vlmprobe.publish.dataset`).

Teacher figures per step are the sums of the ``teacher`` stats of the probe's ranks and the QA
shards, i.e. of the attempts that produced the outputs; ``teacher.all_attempts`` adds up the
ledgers, which every attempt of every process updates (killed ones included, up to their last
heartbeat): the estimated bill of the run date. Safe to rerun: it first removes the manifest
(and a failed one) and writes it anew.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from vlmprobe.config import PublishConfig
from vlmprobe.contracts import (AttemptFigures, BoundBy, BudgetReachedRows, Checks, Manifest, ManifestProbe, ManifestQA,
                                ManifestNight, ManifestSample, ManifestShard, ManifestTeacher, ModelNames, Outputs,
                                PipelineSummary, Prices, ProbeSuccess, QANight, QAShardStats, RunTeacherFigures,
                                ShardPlan, StepCheck,
                                TargetCheckSummary, TeacherFigures, Timings, TokenCounts)
from vlmprobe.errors import VlmprobeError
from vlmprobe.io import RunLayout, exists, iter_jsonl, join, read_json, remove_tree
from vlmprobe.io.fs import basename, list_dir
from vlmprobe.provenance import run_provenance
from vlmprobe.publish.costs import recorded_cost_usd, teacher_modes
from vlmprobe.publish.dataset import check_parquet, write_card
from vlmprobe.report.render import report_for_publish
from vlmprobe.teacher.pricing import PRICES_AS_OF, PRICES_SOURCE

log = logging.getLogger("vlmprobe.publish")

TOKENS = ("prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens")
# Summed over a step's processes; the rest of a process's teacher stats (its quota share, its
# concurrency limit) says nothing about the step.
TEACHER_SUMS = ("requests", "retries", "rate_limited", "succeeded", "failed", *TOKENS)
BUDGET_REASON = "teacher_budget_reached"


class RunFailed(VlmprobeError):
    """The run's outputs are complete but not good enough to publish: too many teacher errors, or
    the budget was reached. Deterministic (exit 2): rerunning publish changes nothing."""

    exit_code = 2


def _count_lines(uri: str) -> int:
    return sum(1 for _ in iter_jsonl(uri)) if exists(uri) else 0


def teacher_figures(stats: Iterable[Mapping[str, Any] | None], model: str) -> TeacherFigures:
    """A step's teacher figures from its processes' ``teacher`` stats (probe ranks, QA shards).

    The cost is what the processes recorded per tier or mode (:mod:`vlmprobe.publish.costs`: each
    answer at the price of the tier that served it, batch at batch prices; the one price table,
    :mod:`vlmprobe.teacher.pricing`: cached prompt tokens at the cached rate, thinking as output).
    """
    stats = list(stats)
    total: Counter[str] = Counter()
    gave_up: Counter[str] = Counter()
    processes = 0
    paused = 0.0
    latency = answered = 0.0  # answers' latency, weighted by each process's answers
    for s in stats:
        if not s:
            continue
        processes += 1
        total.update({k: int(s.get(k) or 0) for k in TEACHER_SUMS})
        gave_up.update(s.get("gave_up") or {})
        paused += float(s.get("paused_s") or 0.0)
        if s.get("latency_s") is not None and s.get("succeeded"):
            latency += float(s["latency_s"]) * int(s["succeeded"])
            answered += int(s["succeeded"])
    return TeacherFigures(
        **{k: total[k] for k in TEACHER_SUMS},
        estimated_cost_usd=recorded_cost_usd(stats, model),
        gave_up=dict(gave_up), paused_s=round(paused, 3), processes=processes,
        latency_s=round(latency / answered, 3) if answered else None)


def _sum_figures(model: str, *steps: TeacherFigures) -> RunTeacherFigures:
    total = {k: sum(getattr(s, k) for s in steps) for k in TEACHER_SUMS}
    known = all(s.estimated_cost_usd is not None for s in steps)  # the steps' recorded costs, summed
    return RunTeacherFigures(**total, estimated_cost_usd=round(sum(s.estimated_cost_usd or 0.0 for s in steps), 6)
                             if known else None)


def _ledgers(layout: RunLayout) -> dict[str, AttemptFigures]:
    """Every attempt's requests, tokens and estimated cost, per step, from the run's teacher ledgers."""
    steps: dict[str, Counter[str]] = {}
    cost: Counter[str] = Counter()
    for uri in list_dir(join(layout.teacher_dir, "ledgers")):
        name = basename(uri)
        if not name.endswith(".json") or name.startswith((".", "_")):
            continue
        step = "qa" if name.startswith("qa-") else "probe" if name.startswith("probe-") else "other"
        try:
            ledger = read_json(uri)
        except (ValueError, OSError) as e:
            log.warning("skipping the unreadable teacher ledger %s: %s", uri, e)
            continue
        c = steps.setdefault(step, Counter())
        c["requests"] += sum(int(v) for v in (ledger.get("requests_by_day") or {}).values())
        c.update({k: int(v) for k, v in (ledger.get("usage") or {}).items() if k in TOKENS})
        cost[step] += float(ledger.get("cost_usd") or 0.0)
    out: dict[str, AttemptFigures] = {}
    for step, c in sorted(steps.items()):
        out[step] = AttemptFigures(requests=c["requests"], **{k: c[k] for k in TOKENS},
                                   estimated_cost_usd=round(cost[step], 6))
    out["run"] = AttemptFigures(requests=sum(s.requests for s in out.values()),
                                **{k: sum(getattr(s, k) for s in out.values()) for k in TOKENS},
                                estimated_cost_usd=round(sum(cost.values()), 6))
    return out


def bound_by(summary: PipelineSummary) -> BoundBy:
    """What bound the probe: its pipeline summary (device busy fraction, the waits, the bound) and,
    when the teacher bound it, how many GPUs would have finished in the same time.

    ``teacher_wait_s`` is the time the device waited for the teacher to take more failures;
    ``tail_s`` the time after the last batch, spent finishing the teacher's backlog. A short run
    is teacher-bound through its tail alone."""
    return BoundBy(bound=summary.bound, busy_fraction=summary.busy_fraction, teacher_wait_s=summary.teacher_wait_s,
                   tail_s=summary.tail_s, input_wait_s=summary.input_wait_s, device_busy_s=summary.device_busy_s,
                   wall_s=summary.wall_s, ranks=summary.ranks,
                   gpus_for_same_time=summary.devices_for_same_time if summary.bound == "teacher" else None)


def teacher_error_rows(reasons: Mapping[str, int]) -> int:
    return sum(int(n) for r, n in reasons.items() if r.startswith("teacher_"))


def judge(probe: ManifestProbe, qa: ManifestQA, max_error_rate: float) -> tuple[Checks, list[str]]:
    """(the checks' figures, why the run fails — empty when it does not)."""
    reasons: list[str] = []
    checks: dict[str, StepCheck] = {}
    for step, part, records, what in (("probe", probe, probe.counts.rows, "rows"),
                                      ("qa", qa, qa.counts.get("failures", 0), "failures")):
        errors = teacher_error_rows(part.error_reasons)
        rate = errors / records if records else 0.0
        checks[step] = StepCheck(teacher_error_rows=errors, records=records, teacher_error_rate=round(rate, 4))
        if rate > max_error_rate:
            reasons.append(f"{step}: {errors} of {records} {what} ({rate:.1%}) ended as teacher error rows, more "
                           f"than max_error_rate {max_error_rate:.1%} (reasons: "
                           f"{_teacher_reasons(part.error_reasons)})")
    # Records a limit left unexplained or unasked (the budget, the day's quota, a reservation) are
    # what the night's plan foresaw: reported in the manifest's night, never a failure.
    budget = BudgetReachedRows(probe=int(probe.error_reasons.get(BUDGET_REASON, 0)),
                               qa=int(qa.error_reasons.get(BUDGET_REASON, 0)))
    return Checks(max_error_rate=max_error_rate, probe=checks["probe"], qa=checks["qa"],
                  budget_reached_rows=budget), reasons


def _teacher_reasons(reasons: Mapping[str, int]) -> str:
    top = sorted(((n, r) for r, n in reasons.items() if r.startswith("teacher_")), reverse=True)
    return ", ".join(f"{r} {n}" for n, r in top) or "none"


def publish(cfg: PublishConfig, worker_images: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Run step 4 (see the module docstring); returns the manifest's URI and the QA items, for XCom.

    ``worker_images``: the images the step pods ran (their tasks' XComs), for the provenance.
    """
    layout = RunLayout(cfg.output_uri, cfg.run_date)
    for uri, step in ((layout.probe_success, "probe"), (layout.shard_plan, "sample_keys")):
        if not exists(uri):
            raise FileNotFoundError(f"{uri} is missing: {step} has not finished for {cfg.run_date}")
    layout.invalidate("publish")  # the earlier verdict (manifest.json or manifest.failed.json) goes first
    probe = ProbeSuccess.read(layout.probe_success)
    plan = ShardPlan.read(layout.shard_plan)

    problems: list[str] = []
    pc = probe.counts
    if pc.rows != pc.passed + pc.verified + pc.rejected + pc.unexplained + pc.errors:
        problems.append(f"probe counts do not add up: {pc.model_dump()}")
    if pc.teacher_errors and pc.wrong != pc.explained + pc.unexplained + pc.teacher_errors:
        problems.append(f"probe's wrong answers do not add up: {pc.model_dump()}")
    sc = plan.counts  # sample_keys counted the failures in the probe's files: not read again here
    if sc.input_failures != pc.verified:
        problems.append(f"sample_keys read {sc.input_failures} failures, probe verified {pc.verified}")

    qa_counts: Counter[str] = Counter()
    qa_tokens: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    qa_teacher: list[dict[str, Any]] = []
    checked_shards = 0
    shards: list[ManifestShard] = []
    shard_stats: list[QAShardStats] = []
    for shard in plan.shards:
        i = shard.shard_index
        stats_uri = layout.qa_stats(i)
        if not exists(stats_uri) or not exists(layout.qa_shard(i)):
            problems.append(f"qa shard {i} has no complete output ({layout.qa_shard(i)})")
            continue
        stats = QAShardStats.read(stats_uri)
        shard_stats.append(stats)
        items = _count_lines(layout.qa_shard(i))
        if items != stats.counts.items or stats.counts.failures != shard.count:
            problems.append(f"qa shard {i}: {items} items on disk, stats {stats.counts.model_dump()}, "
                            f"plan {shard.model_dump()}")
        qa_counts.update(stats.counts.model_dump())
        qa_tokens.update(stats.tokens.model_dump())
        reasons.update(stats.error_reasons)
        qa_teacher.append(stats.teacher)
        checked_shards += stats.target_check.enabled
        shards.append(ManifestShard(shard_index=i, uri=layout.qa_shard(i), **stats.counts.model_dump(),
                                    elapsed_s=stats.elapsed_s))
    if not problems and qa_counts["failures"] != sc.sampled:
        problems.append(f"qa saw {qa_counts['failures']} failures, sample_keys kept {sc.sampled}")
    dataset, parquet_uris, dataset_problems = check_parquet(shard_stats)  # the files' footers
    problems += dataset_problems
    if problems:
        raise RuntimeError("refusing to publish " + cfg.run_date + ":\n- " + "\n- ".join(problems))

    model = probe.teacher_model
    probe_teacher = teacher_figures((r.teacher for r in probe.ranks), model)
    qa_teacher_figures = teacher_figures(qa_teacher, model)
    run_teacher = _sum_figures(model, probe_teacher, qa_teacher_figures)
    target_check = None
    if checked_shards:
        checked, failed = qa_counts["items_checked"], qa_counts["items_target_failed"]
        target_check = TargetCheckSummary(shards=checked_shards, items_checked=checked, items_target_failed=failed,
                                          target_failed_rate=round(failed / checked, 4) if checked else 0.0,
                                          items_dropped_target_passed=qa_counts["items_dropped_target_passed"])
    probe_part = ManifestProbe(counts=pc, error_reasons=probe.error_reasons, input=probe.input,
                               bound_by=bound_by(probe.pipeline), teacher=probe_teacher,
                               world_size=probe.world_size, input_files=len(probe.input_files),
                               elapsed_s=probe.elapsed_s, tokens=probe.tokens)
    probe_part.oom_halvings = probe.oom_halvings  # the ranks' OOM halvings, summed in _SUCCESS.json
    qa_part = ManifestQA(counts=dict(qa_counts), error_reasons=dict(reasons), tokens=dict(qa_tokens),
                         teacher=qa_teacher_figures, target_check=target_check, shards=shards)
    checks, failed = judge(probe_part, qa_part, cfg.max_error_rate)
    night = night_summary(probe, qa_counts, reasons, qa_teacher_figures)
    manifest = Manifest(
        run_date=cfg.run_date,
        published_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        models=ModelNames(target=probe.target_model, teacher=model),
        probe=probe_part,
        sample=ManifestSample(counts=sc, format=plan.format, embed_images=plan.embed_images, uri=plan.failures_uri,
                              keys_per_category=plan.keys_per_category,
                              keys_below_min_per_key=plan.keys_below_min_per_key),
        qa=qa_part,
        teacher=ManifestTeacher(model=model, probe=probe_teacher, qa=qa_teacher_figures, run=run_teacher,
                                all_attempts=_ledgers(layout), prices=Prices(as_of=PRICES_AS_OF, source=PRICES_SOURCE)),
        tokens=TokenCounts(**{k: getattr(run_teacher, k) for k in TOKENS}),
        estimated_cost_usd=run_teacher.estimated_cost_usd,
        timings_s=Timings(probe=probe.elapsed_s,
                          qa_slowest_shard=max((s.elapsed_s for s in shards), default=0.0),
                          qa_all_shards=round(sum(s.elapsed_s for s in shards), 3)),
        outputs=Outputs(qa=[s.uri for s in shards], failures=plan.failures_uri, errors=layout.errors_dir,
                        qa_parquet=parquet_uris, dataset_card=None if failed else layout.dataset_card),
        checks=checks,
        failed=failed or None,
        dataset=dataset,
        provenance=run_provenance(probe, cfg.run_conf(), worker_images),
        night=night,
        teacher_modes=teacher_modes([r.teacher for r in probe.ranks], qa_teacher, model),
    )
    manifest.report = report_for_publish(layout, manifest)  # never fails the run: a WARNING and report: null
    if failed:
        manifest.write(layout.manifest_failed)
        raise RunFailed(f"run {cfg.run_date} failed: " + "; ".join(failed) +
                        f"; the outputs stay for inspection, the figures are in {layout.manifest_failed}")
    manifest.write(layout.manifest)
    write_card(layout, manifest, plan)  # README.md: the dataset card
    if night is not None and night.plan.day and cfg.teacher_rpd:  # QA's unused reservation goes back
        from vlmprobe.teacher.daily import project_folder, release_hold

        release_hold(project_folder(cfg.output_uri, cfg.teacher_project), night.plan.day, cfg.run_date, "qa")
    # Every shard finished (its journal went with it); journals left by shards of an earlier plan go now.
    remove_tree(layout.qa_journal)
    log.info("published %s: %d QA items from %d failures", layout.manifest, qa_counts["items"], sc.sampled)
    if night is not None:
        log.info("night limited by %s: %d of %d wrong answers explained; QA %d of %s reserved requests, %d "
                 "failure(s) left by a limit", night.limited_by, night.probe.explained, pc.wrong, night.qa.requests,
                 night.qa.reserved_requests if night.qa.reserved_requests is not None else "no", night.qa.limited)
    for step, figures in (("probe", probe_teacher), ("qa", qa_teacher_figures)):
        log.info("teacher %s", teacher_line(step, figures))
    return {"manifest_uri": layout.manifest, "qa_items": qa_counts["items"], "qa_uris": manifest.outputs.qa,
            "dataset_card": layout.dataset_card, "report_uri": manifest.report.uri if manifest.report else None}


def night_summary(probe: ProbeSuccess, qa_counts: Mapping[str, int], qa_reasons: Mapping[str, int],
                  qa_teacher: TeacherFigures) -> ManifestNight | None:
    """The night's plan next to what the probe and QA did; None for a probe without a plan."""
    if probe.night_plan is None or probe.night is None:
        return None
    qa_limited_by = "none"
    if qa_reasons.get("limited_daily_quota"):
        qa_limited_by = "daily_quota"
    elif qa_reasons.get("limited_budget"):
        qa_limited_by = "budget"
    qa = QANight(reserved_requests=probe.night_plan.qa_requests, requests=qa_teacher.requests,
                 limited=int(qa_counts.get("limited", 0)), limited_by=qa_limited_by)
    limited_by = probe.night.limited_by if probe.night.limited_by != "none" else qa_limited_by
    return ManifestNight(plan=probe.night_plan, probe=probe.night, qa=qa, limited_by=limited_by)


def teacher_line(step: str, t: TeacherFigures) -> str:
    """One line of a step's teacher figures, for logs and the demo."""
    cost = t.estimated_cost_usd
    return (f"{step}: {t.requests} requests, {t.retries} retries, {t.rate_limited} 429s; "
            f"tokens prompt {t.prompt_tokens} (cached {t.cached_tokens}), output {t.output_tokens} "
            f"(thinking {t.thinking_tokens}); est. " + (f"${cost:.4f}" if cost is not None else "cost unknown"))
