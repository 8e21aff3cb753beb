"""``vlmprobe trend OUTPUT_URI --nights 14``: the failure rate per factor category over the last
completed nights of a deployment, as one HTML page with an inline SVG plot and the table under it.

Reads each night's ``manifest.json`` and ``sample/shards.json`` only. A night whose files cannot
be read is left out with a WARNING (and named on the page).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vlmprobe.errors import UsageError
from vlmprobe.io import RunLayout, atomic_write
from vlmprobe.report.runs import NightCounts, completed_run_dates

log = logging.getLogger("vlmprobe.report")
MAX_CATEGORIES = 8  # lines on the plot; the table has them all


@dataclass
class Trend:
    output_uri: str
    nights: list[NightCounts]
    skipped: list[str] = field(default_factory=list)  # "run date: why"

    @property
    def categories(self) -> list[str]:
        total: dict[str, int] = {}
        for n in self.nights:
            for c, k in n.per_category.items():
                total[c] = total.get(c, 0) + k
        return sorted(total, key=lambda c: (-total[c], c))

    def rate(self, night: NightCounts, category: str) -> float:
        """Verified failures of ``category`` per 1,000 rows probed that night."""
        return 1000 * night.per_category.get(category, 0) / night.rows if night.rows else 0.0


def collect_trend(output_uri: str, nights: int = 14) -> Trend:
    """The last ``nights`` completed nights under ``output_uri`` (oldest first)."""
    if nights < 1:
        raise UsageError(f"--nights must be at least 1, got {nights}")
    dates = completed_run_dates(output_uri)
    if not dates:
        raise UsageError(f"{output_uri} holds no completed night (a run-date folder with manifest.json)")
    trend = Trend(output_uri, [])
    for d in dates[-nights:]:
        try:
            trend.nights.append(NightCounts.read(RunLayout(output_uri, d)))
        except Exception as e:  # one unreadable night does not hide the others
            log.warning("trend: night %s left out: %s: %s", d, type(e).__name__, e)
            trend.skipped.append(f"{d}: {type(e).__name__}: {e}")
    if not trend.nights:
        raise UsageError(f"none of the last {nights} nights under {output_uri} could be read: {trend.skipped}")
    return trend


def render_trend(trend: Trend) -> str:
    from vlmprobe.report import plots
    from vlmprobe.report.render import environment

    dates = [n.run_date for n in trend.nights]
    shown = trend.categories[:MAX_CATEGORIES]
    plot = plots.trend_lines("trend", dates, {c: [trend.rate(n, c) for n in trend.nights] for c in shown},
                             title="Failure rate per factor category, night by night",
                             ylabel="verified failures per 1,000 rows") if shown else None
    rows = [(c, [trend.rate(n, c) for n in trend.nights]) for c in trend.categories]
    return environment().get_template("trend.html.j2").render(trend=trend, dates=dates, plot=plot, rows=rows,
                                                              shown=len(shown))


def write_trend(output_uri: str, nights: int, out: str) -> str:
    """Write the trend page to ``out`` (a path or URI); returns it."""
    from vlmprobe.report.render import HTML

    html = render_trend(collect_trend(output_uri, nights))
    with atomic_write(out, content_type=HTML) as f:
        f.write(html)
    return out
