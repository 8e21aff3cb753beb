"""The report's plots: matplotlib figures rendered to SVG text, to be inlined in the HTML.

Text is drawn as paths (``svg.fonttype: path``), so a plot needs no font on the reader's machine
and the page loads nothing. Figures are made with :class:`matplotlib.figure.Figure` directly (no
pyplot: no global state, safe in a worker that renders several reports), sized by how many bars
they hold, with labels shortened so they never overlap.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

WIDTH_IN = 7.6
BAR_IN = 0.28  # height per bar
MAX_LABEL = 44
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
STYLE = {
    "svg.fonttype": "path",
    "svg.hashsalt": "vlmprobe",  # stable ids: the same figure gives the same bytes
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.axisbelow": True,
}


def short(label: str, limit: int = MAX_LABEL) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _figure(height_in: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_IN, max(1.6, height_in)), layout="constrained")


def _svg(fig: Any, name: str) -> str:
    """The figure as an ``<svg>`` element; its ids are prefixed with ``name`` so that several plots can share a page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # clip paths and glyphs get ids that two figures on one page could share with other meanings
    text = text.replace('id="', f'id="{name}-').replace('href="#', f'href="#{name}-').replace("url(#", f"url(#{name}-")
    return text.replace("<svg ", f'<svg role="img" aria-label="{name}" class="plot" ', 1)


def _styled(make: Any) -> Any:
    import matplotlib

    with matplotlib.rc_context(STYLE):
        return make()


def hbars(name: str, labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str,
          notes: Sequence[str] | None = None, log: bool = False, color: str = PALETTE[0]) -> str:
    """Horizontal bars, the first label on top; ``notes`` printed at each bar's end."""
    def make() -> Any:
        fig = _figure(0.9 + BAR_IN * len(labels))
        ax = fig.subplots()
        ys = range(len(labels))
        ax.barh(list(ys), list(values), color=color, height=0.7)
        ax.set_yticks(list(ys), [short(lb) for lb in labels])
        ax.invert_yaxis()
        ax.set_title(title, loc="left")
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        if log:
            ax.set_xscale("log")
        top = max((v for v in values if v), default=1)
        if notes:
            for y, v, note in zip(ys, values, notes):
                ax.annotate(note, (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
            # room for the notes at the bars' ends
            if log:
                ax.set_xlim(right=top * 12)
            else:
                ax.set_xlim(0, top * 1.25)
        return fig
    return _svg(_styled(make), name)


def stacked_hbars(name: str, labels: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
                  xlabel: str) -> str:
    """Horizontal bars stacked by series (a legend names them), the first label on top."""
    def make() -> Any:
        fig = _figure(1.2 + BAR_IN * len(labels))
        ax = fig.subplots()
        ys = list(range(len(labels)))
        left = [0.0] * len(labels)
        for i, (part, values) in enumerate(series.items()):
            ax.barh(ys, list(values), left=left, color=PALETTE[i % len(PALETTE)], height=0.7, label=part)
            left = [a + b for a, b in zip(left, values)]
        ax.set_yticks(ys, [short(lb) for lb in labels])
        ax.invert_yaxis()
        ax.set_title(title, loc="left")
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=min(4, len(series)))
        ax.set_xlim(0, max(left, default=1) * 1.05 or 1)
        return fig
    return _svg(_styled(make), name)


def grouped_bars(name: str, groups: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
                 ylabel: str, log: bool = False) -> str:
    """Vertical bars, one group per label, one bar per series in each group, each bar labelled with its value."""
    def make() -> Any:
        fig = _figure(2.8)
        ax = fig.subplots()
        n = max(1, len(series))
        width = 0.8 / n
        for i, (part, values) in enumerate(series.items()):
            xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
            bars = ax.bar(xs, list(values), width=width * 0.95, color=PALETTE[i % len(PALETTE)], label=part)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=1)
        ax.set_xticks(list(range(len(groups))), list(groups))
        ax.set_title(title, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if log:
            ax.set_yscale("symlog", linthresh=1)
        ax.margins(y=0.15)
        fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=min(4, n))
        return fig
    return _svg(_styled(make), name)


def shares(name: str, parts: Mapping[str, float], *, title: str, xlabel: str) -> str:
    """One horizontal bar split into parts (e.g. where the probe's time went), each part's share written on it."""
    def make() -> Any:
        fig = _figure(1.7)
        ax = fig.subplots()
        total = sum(parts.values()) or 1.0
        left = 0.0
        for i, (part, value) in enumerate(parts.items()):
            ax.barh([0], [value], left=left, color=PALETTE[i % len(PALETTE)], height=0.6,
                    label=f"{part} ({value / total:.0%})")
            left += value
        ax.set_yticks([])
        ax.set_xlim(0, total)
        ax.set_title(title, loc="left")
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside lower center", ncols=min(3, len(parts)), fontsize=8, frameon=False)
        return fig
    return _svg(_styled(make), name)


def compare_rates(name: str, keys: Sequence[str], before: Sequence[float], after: Sequence[float],
                  significant: Sequence[bool], *, labels: tuple[str, str], title: str) -> str:
    """For each key, its rate on two nights joined by a line; keys whose change is noise are drawn grey."""
    def make() -> Any:
        fig = _figure(1.3 + BAR_IN * len(keys))
        ax = fig.subplots()
        ys = list(range(len(keys)))
        for y, a, b, sig in zip(ys, before, after, significant):
            ax.plot([a, b], [y, y], color="#333333" if sig else "#BBBBBB", lw=1.5, zorder=1)
        ax.scatter(before, ys, color=PALETTE[0], label=labels[0], zorder=2, s=22)
        ax.scatter(after, ys, color=PALETTE[1], label=labels[1], zorder=3, s=22)
        ax.set_yticks(ys, [short(k) + (" *" if s else "") for k, s in zip(keys, significant)])
        ax.invert_yaxis()
        ax.set_title(title, loc="left")
        ax.set_xlabel("failures per 1,000 rows probed (* significant, grey line: noise)")
        ax.set_xlim(left=0)
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=2)
        return fig
    return _svg(_styled(make), name)


def trend_lines(name: str, dates: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str,
                ylabel: str) -> str:
    """One line per series over the nights (a night without the series is a gap)."""
    def make() -> Any:
        fig = _figure(3.6)
        ax = fig.subplots()
        xs = list(range(len(dates)))
        for i, (part, values) in enumerate(series.items()):
            ax.plot(xs, [float("nan") if v is None else v for v in values], marker="o", ms=3, lw=1.5,
                    color=PALETTE[i % len(PALETTE)], label=short(part, 24))
        step = max(1, len(dates) // 10)  # at most ~10 date labels: never overlapping
        ax.set_xticks(xs[::step], [d[5:] for d in dates[::step]])
        ax.set_xlabel(f"night (run date, {dates[0][:4]}" + (f"–{dates[-1][:4]}" if dates[-1][:4] != dates[0][:4] else "")
                      + ")")
        ax.set_ylabel(ylabel)
        ax.set_title(title, loc="left")
        ax.set_ylim(bottom=0)
        fig.legend(loc="outside right upper", fontsize=8, frameon=False)
        return fig
    return _svg(_styled(make), name)
