"""The run report: ``report.html`` next to the manifest, one self-contained file.

:func:`write_report` renders it for a run folder (the CLI's ``vlmprobe report RUN_URI``);
:func:`report_for_publish` is publish's call, which never fails the run: a report that cannot be
rendered is a WARNING in the task log and ``report: null`` in the manifest. The page holds its
plots as inline SVG and its thumbnails as ``data:`` URIs, needs no script, and forbids itself
every request (a Content-Security-Policy allowing only inline styles and ``data:`` images), so it
opens the same from a laptop, a bucket's URL or an e-mail attachment.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from functools import lru_cache
from typing import Any

from vlmprobe.contracts import Manifest, RunReport
from vlmprobe.io import RunLayout, exists
from vlmprobe.io.fs import write_bytes
from vlmprobe.report import plots
from vlmprobe.report.data import TOP_KEYS, RunData, collect, optional
from vlmprobe.report.stats import KeyChange

log = logging.getLogger("vlmprobe.report")

HTML = "text/html; charset=utf-8"
PLOT_KEYS = 20  # bars in the per-key plots
CHANGES_SHOWN = 40  # rows of the comparison table
MAX_NOTES = 20
NOT_RECORDED = "not recorded"


@lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment of the report templates (package data), HTML-escaping everything not marked safe."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vlmprobe.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=fmt_num, pct=fmt_pct, usd=fmt_usd, secs=fmt_secs, shown=fmt_shown)
    return env


def fmt_num(value: Any) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return NOT_RECORDED if value is None else f"{value:.{digits}%}"


def fmt_usd(value: float | None) -> str:
    return "unknown (no price for the model)" if value is None else f"${value:,.4f}"


def fmt_secs(value: float | None) -> str:
    if value is None:
        return NOT_RECORDED
    if value < 120:
        return f"{value:,.1f} s"
    return f"{value / 60:,.1f} min" if value < 7200 else f"{value / 3600:,.2f} h"


def fmt_shown(value: Any) -> str:
    """A figure of any shape, for figures a newer manifest adds (a dict: ``k: v`` pairs)."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt_shown(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_shown(v) for v in value) or "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return fmt_num(value)
    return str(value)


def per_thousand(count: int, rows: int) -> float:
    return 1000 * count / rows if rows else 0.0


# -- sections --------------------------------------------------------------------------------------

def _glance(d: RunData) -> dict[str, Any]:
    m, f = d.manifest, d.figures
    pc = m.probe.counts
    explained = optional(f, "probe.counts.explained", "probe.explained", "explained")
    unexplained = optional(f, "probe.counts.unexplained", "probe.unexplained", "unexplained")
    stages = [("rows probed", pc.rows), ("wrong answers", pc.wrong), ("explained", explained),
              ("verified failures", pc.verified), ("sampled for QA", m.sample.counts.sampled),
              ("QA items", m.qa.counts.get("items", 0))]
    shown = [(label, value) for label, value in stages if value is not None]
    values = [float(v) for _, v in shown]
    funnel = plots.hbars("funnel", [lb for lb, _ in shown], values, title="The night, stage by stage",
                         xlabel="records (log scale)" if _wide(values) else "records",
                         notes=[fmt_num(v) for v in values], log=_wide(values))
    plan = optional(f, "plan", "probe.plan")
    plan_rows = []
    if isinstance(plan, dict):
        happened = {**f.get("probe", {}).get("counts", {}), "explained": explained, "unexplained": unexplained}
        for k, v in plan.items():
            actual = happened.get(k)
            if k in ("explain_budget", "explain") and explained is not None:
                actual = explained
            plan_rows.append((k, fmt_shown(v), fmt_shown(actual) if actual is not None else "—"))
    return {
        "stats": [("rows probed", pc.rows), ("passed", pc.passed), ("wrong", pc.wrong), ("explained", explained),
                  ("unexplained", unexplained), ("verified", pc.verified), ("rejected by the verifier", pc.rejected),
                  ("error rows", pc.errors), ("sampled", m.sample.counts.sampled),
                  ("QA items", m.qa.counts.get("items", 0))],
        "limited_by": optional(f, "limited_by", "probe.limited_by"),
        "plan": plan_rows if plan is not None else None,
        "plan_raw": plan if plan is not None and not isinstance(plan, dict) else None,
        "funnel": funnel,
        "error_reasons": sorted(m.probe.error_reasons.items(), key=lambda kv: -kv[1]),
        "input": m.probe.input,
    }


def _wide(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > 50


def _failures(d: RunData) -> dict[str, Any]:
    rows = d.rows
    cats = sorted(d.per_category, key=lambda c: (-d.per_category[c], c))
    keys_in: Counter[str] = Counter(k.split(":", 1)[0] for k in d.per_key)
    kept_in: Counter[str] = Counter()
    for k, n in d.kept_per_key.items():
        kept_in[k.split(":", 1)[0]] += n
    category_rows = [(c, keys_in[c], d.per_category[c], per_thousand(d.per_category[c], rows), kept_in[c]) for c in cats]
    by_category = plots.hbars("by-category", cats, [r[3] for r in category_rows],
                              title="Failure rate by factor category", xlabel="verified failures per 1,000 rows probed",
                              notes=[f"{r[2]:,}" for r in category_rows]) if cats else None

    sources = None
    if d.rows_by_source is not None:
        names = sorted(set(d.rows_by_source) | set(d.failures_by_source),
                       key=lambda s: (-per_thousand(d.failures_by_source[s], d.rows_by_source.get(s, 0)), s))
        source_rows = [(s, d.failures_by_source[s], d.rows_by_source.get(s, 0),
                        per_thousand(d.failures_by_source[s], d.rows_by_source.get(s, 0))) for s in names]
        sources = {"rows": source_rows, "plot": plots.hbars(
            "by-source", [r[0] for r in source_rows[:PLOT_KEYS]], [r[3] for r in source_rows[:PLOT_KEYS]],
            title="Failure rate by input source", xlabel="verified failures per 1,000 rows of the source",
            notes=[f"{r[1]:,} / {r[2]:,}" for r in source_rows[:PLOT_KEYS]], color=plots.PALETTE[2])}
    top = sorted(d.per_key, key=lambda k: (-d.per_key[k], k))[:PLOT_KEYS]
    top_plot = plots.hbars("top-keys", top, [per_thousand(d.per_key[k], rows) for k in top],
                           title=f"The {len(top)} most frequent failure keys",
                           xlabel="verified failures per 1,000 rows probed",
                           notes=[f"{d.per_key[k]:,}" for k in top], color=plots.PALETTE[3]) if top else None
    cards = [{"key": k, "failures": d.per_key[k], "rate": per_thousand(d.per_key[k], rows),
              "kept": d.kept_per_key.get(k, 0), "examples": d.examples.get(k, [])} for k in d.top_keys]
    return {"categories": category_rows, "by_category": by_category, "sources": sources,
            "sources_seen": sorted(d.failures_by_source.items(), key=lambda kv: -kv[1]), "top_plot": top_plot,
            "cards": cards, "key_count": len(d.per_key), "top_n": TOP_KEYS}


def _qa(d: RunData) -> dict[str, Any]:
    m = d.manifest
    per_key: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
    for (k, t), n in d.qa_by_key_type.items():
        per_key[k] += n
        per_type[t] += n
    types = sorted(per_type, key=lambda t: (-per_type[t], t))
    keys = sorted(per_key, key=lambda k: (-per_key[k], k))
    shown = keys[:PLOT_KEYS]
    plot = plots.stacked_hbars("qa-items", shown, {t: [d.qa_by_key_type[(k, t)] for k in shown] for t in types},
                               title="QA items per failure key, by answer type", xlabel="QA items") if shown else None
    check = m.qa.target_check
    target = None
    if check is not None:
        target = {"checked": check.items_checked, "failed": check.items_target_failed,
                  "accuracy": 1 - check.target_failed_rate if check.items_checked else None,
                  "dropped": check.items_dropped_target_passed, "shards": check.shards, "plot": None}
        checked_keys = sorted(d.qa_target_by_key, key=lambda k: (-d.qa_target_by_key[k][0], k))[:PLOT_KEYS]
        if checked_keys:
            acc = [1 - d.qa_target_by_key[k][1] / d.qa_target_by_key[k][0] for k in checked_keys]
            target["plot"] = plots.hbars(
                "target-accuracy", checked_keys, [100 * a for a in acc],
                title="The target's accuracy on its own QA items, per key", xlabel="% of the key's QA items answered right",
                notes=[f"{d.qa_target_by_key[k][0] - d.qa_target_by_key[k][1]} / {d.qa_target_by_key[k][0]}"
                       for k in checked_keys], color=plots.PALETTE[4])
    return {"plot": plot, "types": [(t, per_type[t]) for t in types],
            "rows": [(k, per_key[k], [d.qa_by_key_type[(k, t)] for t in types]) for k in keys],
            "type_names": types, "target": target, "item_count": m.qa.counts.get("items", 0),
            "errors": sorted(m.qa.error_reasons.items(), key=lambda kv: -kv[1])}


TEACHER_ROWS = (("requests", "requests"), ("succeeded", "succeeded"), ("failed", "gave up"),
                ("rate_limited", "429s"), ("retries", "retries"), ("prompt_tokens", "prompt tokens"),
                ("cached_tokens", "of which cached"), ("output_tokens", "output tokens"),
                ("thinking_tokens", "of which thinking"))


def _teacher(d: RunData) -> dict[str, Any]:
    t = d.manifest.teacher
    f = d.figures.get("teacher", {})
    steps = {"probe": t.probe.model_dump(), "qa": t.qa.model_dump(), "run": t.run.model_dump()}
    table = [(label, [steps[s].get(k) for s in steps]) for k, label in TEACHER_ROWS]
    table.append(("estimated cost", [fmt_usd(steps[s].get("estimated_cost_usd")) for s in steps]))
    tiers = [(s, _tier(f.get(s, {}))) for s in ("probe", "qa")]
    requests = plots.grouped_bars("teacher-requests", ["probe", "qa"],
                                  {"requests": [t.probe.requests, t.qa.requests],
                                   "429s": [t.probe.rate_limited, t.qa.rate_limited],
                                   "retries": [t.probe.retries, t.qa.retries],
                                   "gave up": [t.probe.failed, t.qa.failed]},
                                  title="Teacher requests per step", ylabel="requests (symlog)", log=True)
    tokens = plots.stacked_hbars(
        "teacher-tokens", ["probe", "qa"],
        {"prompt (not cached)": [t.probe.prompt_tokens - t.probe.cached_tokens, t.qa.prompt_tokens - t.qa.cached_tokens],
         "prompt (cached)": [t.probe.cached_tokens, t.qa.cached_tokens],
         "output (not thinking)": [t.probe.output_tokens - t.probe.thinking_tokens,
                                   t.qa.output_tokens - t.qa.thinking_tokens],
         "thinking": [t.probe.thinking_tokens, t.qa.thinking_tokens]},
        title="Teacher tokens per step", xlabel="tokens")
    return {"model": t.model, "steps": list(steps), "table": table, "tiers": tiers, "requests": requests,
            "tokens": tokens, "attempts": [(s, a) for s, a in t.all_attempts.items()], "prices": t.prices,
            "gave_up": {s: steps[s].get("gave_up") or {} for s in ("probe", "qa")},
            "cost": d.manifest.estimated_cost_usd}


def _tier(step: dict[str, Any]) -> str | None:
    """The mode or tier a step asked for and the tiers that served its answers, where the manifest has them."""
    asked = optional(step, "mode", "service_tier", "tier")
    served = optional(step, "served_tiers", "tiers")
    if asked is None and served is None:
        return None
    text = fmt_shown(asked) if asked is not None else "asked: not recorded"
    if isinstance(served, dict) and served:
        text += " (served: " + ", ".join(f"{k} {fmt_shown(v)}" for k, v in served.items()) + ")"
    elif served:
        text += f" (served: {fmt_shown(served)})"
    return text


def _time(d: RunData) -> dict[str, Any]:
    m, f = d.manifest, d.figures
    b = m.probe.bound_by
    rows, elapsed = m.probe.counts.rows, m.probe.elapsed_s
    rank_seconds = b.wall_s * b.ranks
    accounted = b.device_busy_s + b.input_wait_s + b.teacher_wait_s + b.tail_s
    parts = {"target busy": b.device_busy_s, "waiting for input": b.input_wait_s,
             "waiting for the teacher": b.teacher_wait_s, "teacher tail": b.tail_s,
             "other": max(0.0, rank_seconds - accounted)}
    composition = plots.shares("probe-time", parts, title="Where the probe's GPU time went",
                               xlabel=f"rank-seconds ({b.ranks} rank(s) × {b.wall_s:,.1f} s wall)") \
        if rank_seconds > 0 else None
    shards = m.qa.shards
    shard_plot = plots.hbars("qa-shards", [f"shard {s.shard_index}" for s in shards], [s.elapsed_s for s in shards],
                             title="QA time per shard", xlabel="seconds", notes=[f"{s.items:,} items" for s in shards],
                             color=plots.PALETTE[5]) if shards else None
    images_per_s = rows / elapsed if elapsed else None
    return {
        "timings": [("probe", m.timings_s.probe), ("QA, slowest shard", m.timings_s.qa_slowest_shard),
                    ("QA, all shards added up", m.timings_s.qa_all_shards)],
        "images_per_s": images_per_s,
        "images_per_s_per_gpu": images_per_s / m.probe.world_size if images_per_s and m.probe.world_size else None,
        "world_size": m.probe.world_size,
        "gpu_hours_held": optional(f, "probe.gpu_hours_held", "probe.bound_by.gpu_hours_held", "probe.gpu_hours.held",
                                   "gpu_hours.held", "gpu_hours_held"),
        "gpu_hours_busy": optional(f, "probe.gpu_hours_busy", "probe.bound_by.gpu_hours_busy", "probe.gpu_hours.busy",
                                   "gpu_hours.busy", "gpu_hours_busy"),
        "bound_by": b, "composition": composition, "shard_plot": shard_plot,
    }


def changes_view(changes: list[KeyChange]) -> dict[str, Any]:
    """The changed rows of a comparison for the templates: the first rows, and how many were significant or noise."""
    moved = [c for c in changes if c.change != "same"]
    summary = {kind: (sum(1 for c in moved if c.change == kind and c.significant),
                      sum(1 for c in moved if c.change == kind and not c.significant))
               for kind in ("appeared", "grew", "shrank", "vanished")}
    return {"rows": moved[:CHANGES_SHOWN], "more": max(0, len(moved) - CHANGES_SHOWN), "summary": summary,
            "significant": sum(1 for c in moved if c.significant)}


def _comparison(d: RunData) -> dict[str, Any] | None:
    c = d.comparison
    if c is None:
        return None
    keys = changes_view(c.keys)
    shown = [k for k in c.keys if k.change != "same"][:15]
    plot = plots.compare_rates(
        "compare-keys", [k.key for k in shown], [1000 * k.test.rate1 for k in shown],
        [1000 * k.test.rate2 for k in shown], [k.significant for k in shown],
        labels=(c.previous.run_date, c.current.run_date),
        title=f"Failure keys that changed most since {c.previous.run_date}") if shown else None
    return {"previous": c.previous, "current": c.current, "key_changes": keys, "category_changes": changes_view(c.categories),
            "plot": plot}


def build_context(d: RunData) -> dict[str, Any]:
    m = d.manifest
    return {
        "m": m, "run_date": m.run_date, "root": d.layout.root, "failed": m.failed,
        "glance": _glance(d), "failures": _failures(d), "qa": _qa(d), "teacher": _teacher(d), "time": _time(d),
        "compare": _comparison(d), "notes": d.notes[:MAX_NOTES], "more_notes": max(0, len(d.notes) - MAX_NOTES),
        "per_thousand": per_thousand,
    }


# -- entry points ----------------------------------------------------------------------------------

def render_report(layout: RunLayout, manifest: Manifest | None = None) -> tuple[str, RunData]:
    """The report's HTML for the run at ``layout`` (its manifest read when not given), and its figures."""
    if manifest is None:
        manifest = _read_manifest(layout)
    data = collect(layout, manifest)
    html = environment().get_template("report.html.j2").render(**build_context(data))
    return html, data


def _read_manifest(layout: RunLayout) -> Manifest:
    from vlmprobe.errors import UsageError

    for uri in (layout.manifest, layout.manifest_failed):
        if exists(uri):
            return Manifest.read(uri)
    raise UsageError(f"{layout.root} has neither manifest.json nor manifest.failed.json: publish has not run for "
                     f"{layout.run_date}")


def write_report(layout: RunLayout, manifest: Manifest | None = None) -> RunReport:
    """Render the report and write it to ``layout.report`` (replacing it); what the manifest records of it."""
    started = time.monotonic()
    html, data = render_report(layout, manifest)
    write_bytes(layout.report, html.encode("utf-8"), content_type=HTML)
    report = RunReport(uri=layout.report, size_bytes=len(html.encode("utf-8")),
                       compared_with=data.comparison.previous.run_date if data.comparison else None,
                       thumbnails=sum(1 for exs in data.examples.values() for ex in exs if ex.thumbnail),
                       notes=data.notes[:MAX_NOTES])
    log.info("report %s: %d bytes in %.1f s%s", layout.report, report.size_bytes, time.monotonic() - started,
             f", compared with {report.compared_with}" if report.compared_with else "")
    return report


def report_for_publish(layout: RunLayout, manifest: Manifest) -> RunReport | None:
    """:func:`write_report` for publish: a report that fails is a WARNING and None (``report: null``), never a failed run."""
    try:
        return write_report(layout, manifest)
    except Exception as e:  # the run's outputs are fine without their report
        log.warning("the run report could not be written (%s: %s); the manifest says report: null. "
                    "Make it again with: vlmprobe report %s", type(e).__name__, " ".join(str(e).split())[:500],
                    layout.root, exc_info=log.isEnabledFor(logging.DEBUG))
        return None
