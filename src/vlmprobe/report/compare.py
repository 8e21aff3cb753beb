"""``vlmprobe compare RUN_A RUN_B``: the failure keys that appeared, grew, shrank or vanished from
night A to night B, with their rates and which changes are noise (:mod:`vlmprobe.report.stats`).

Reads each night's ``manifest.json`` and ``sample/shards.json`` only. Prints a table; with
``--html PATH`` also writes it as one self-contained HTML page (a plot of the largest changes).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmprobe.io import atomic_write
from vlmprobe.report.runs import NightCounts, run_layout
from vlmprobe.report.stats import MIN_EXPECTED, SIGNIFICANT_Q, KeyChange, compare_counts

KINDS = ("appeared", "grew", "shrank", "vanished")
METHOD = (f"significant: q < {SIGNIFICANT_Q} (Benjamini-Hochberg over the rows compared) of a two-sided "
          "two-proportion test — the z-test with continuity correction, Fisher's exact test (F) when an expected "
          f"count is below {MIN_EXPECTED}; anything else is noise. Rates: verified failures per 1,000 rows probed.")


@dataclass(frozen=True)
class NightsCompared:
    a: NightCounts
    b: NightCounts
    keys: list[KeyChange]
    categories: list[KeyChange]

    def changed(self, what: str = "keys") -> list[KeyChange]:
        return [c for c in getattr(self, what) if c.change != "same"]


def compare_nights(a: NightCounts, b: NightCounts) -> NightsCompared:
    return NightsCompared(a, b, compare_counts(a.per_key, a.rows, b.per_key, b.rows),
                          compare_counts(a.per_category, a.rows, b.per_category, b.rows))


def compare_runs(run_a: str, run_b: str) -> NightsCompared:
    """Compare two completed nights given as run folders ``{output_uri}/{run_date}``."""
    return compare_nights(NightCounts.read(run_layout(run_a)), NightCounts.read(run_layout(run_b)))


def _summary(changes: list[KeyChange]) -> str:
    parts = []
    for kind in KINDS:
        of_kind = [c for c in changes if c.change == kind]
        sig = sum(c.significant for c in of_kind)
        parts.append(f"{kind} {len(of_kind)} ({sig} significant)")
    return ", ".join(parts)


def _table(changes: list[KeyChange], label: str, top: int) -> list[str]:
    width = max([len(label), *(len(c.key) for c in changes[:top])])
    lines = [f"{label:<{width}}  {'change':<8}  {'A':>7} {'/1k':>7}  {'B':>7} {'/1k':>7}  {'z':>6}  {'p':>8}  "
             f"{'q':>8}  verdict"]
    for c in changes[:top]:
        t = c.test
        p = f"{t.p:.2g}" + ("F" if t.test == "fisher" else "")
        z = t.z if abs(t.z) >= 0.005 else 0.0  # never "-0.00"
        lines.append(f"{c.key:<{width}}  {c.change:<8}  {t.x1:>7,} {1000 * t.rate1:>7.2f}  {t.x2:>7,} "
                     f"{1000 * t.rate2:>7.2f}  {z:>+6.2f}  {p:>8}  {c.q:>8.2g}  "
                     + (f"{c.mark} significant" if c.significant else "noise"))
    if len(changes) > top:
        lines.append(f"… and {len(changes) - top} more (the least significant; --top N shows more)")
    return lines


def format_text(result: NightsCompared, top: int = 40) -> str:
    """The comparison as a plain-text table for a terminal."""
    a, b = result.a, result.b
    keys, cats = result.changed("keys"), result.changed("categories")
    lines = [f"A {a.run_date}: {a.failures:,} verified failures in {a.rows:,} rows probed, {len(a.per_key)} keys",
             f"B {b.run_date}: {b.failures:,} verified failures in {b.rows:,} rows probed, {len(b.per_key)} keys",
             "", f"failure keys: {_summary(keys)}"]
    lines += _table(keys, "failure key", top) if keys else ["no failure key changed"]
    lines += ["", f"categories: {_summary(cats)}"]
    lines += _table(cats, "category", top) if cats else ["no category changed"]
    lines += ["", METHOD]
    return "\n".join(lines)


def render_html(result: NightsCompared) -> str:
    """The comparison as one self-contained HTML page."""
    from vlmprobe.report import plots
    from vlmprobe.report.render import changes_view, environment

    shown = result.changed("keys")[:20]
    plot = plots.compare_rates(
        "compare-keys", [k.key for k in shown], [1000 * k.test.rate1 for k in shown],
        [1000 * k.test.rate2 for k in shown], [k.significant for k in shown],
        labels=(result.a.run_date, result.b.run_date),
        title=f"Failure keys from {result.a.run_date} to {result.b.run_date}") if shown else None
    return environment().get_template("compare.html.j2").render(
        a=result.a, b=result.b, keys=changes_view(result.keys), categories=changes_view(result.categories), plot=plot,
        method=METHOD)


def write_html(result: NightsCompared, out: str) -> str:
    from vlmprobe.report.render import HTML

    with atomic_write(out, content_type=HTML) as f:
        f.write(render_html(result))
    return out
