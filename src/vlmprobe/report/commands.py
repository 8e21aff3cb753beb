"""The ``vlmprobe report``, ``compare`` and ``trend`` subcommands (see :mod:`vlmprobe.cli`)."""

from __future__ import annotations

import argparse

REPORT_HELP = "Write a run's report.html again (RUN_URI = {output_uri}/{run_date}); prints its path and link."
COMPARE_HELP = ("Compare two completed nights: failure keys that appeared, grew, shrank or vanished, with their "
                "rates and which changes are noise.")
TREND_HELP = "Plot the failure rate per factor category over the last completed nights (an HTML file)."


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_uri", metavar="RUN_URI", help="the run's folder, {output_uri}/{run_date}")


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="the earlier night's folder, {output_uri}/{run_date}")
    p.add_argument("run_b", metavar="RUN_B", help="the later night's folder, {output_uri}/{run_date}")
    p.add_argument("--html", metavar="PATH", default=None, help="also write the comparison as an HTML file (a path "
                                                                 "or a gs:// or s3:// URI)")
    p.add_argument("--top", type=int, default=40, metavar="N", help="rows shown per table (default 40)")


def add_trend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_uri", metavar="OUTPUT_URI", help="the deployment's output_uri, holding one folder per night")
    p.add_argument("--nights", type=int, default=14, metavar="N", help="the last N completed nights (default 14)")
    p.add_argument("--out", default="trend.html", metavar="PATH",
                   help="where to write the page (a path or a gs:// or s3:// URI; default ./trend.html)")


def run_report(args: argparse.Namespace) -> int:
    from vlmprobe.report.link import report_url
    from vlmprobe.report.render import write_report
    from vlmprobe.report.runs import run_layout

    report = write_report(run_layout(args.run_uri))
    print(report.uri)
    print(f"open: {report_url(report.uri)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from vlmprobe.errors import UsageError
    from vlmprobe.report.compare import compare_runs, format_text, write_html

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    result = compare_runs(args.run_a, args.run_b)
    print(format_text(result, args.top))
    if args.html:
        print(f"\nwrote {write_html(result, args.html)}")
    return 0


def run_trend(args: argparse.Namespace) -> int:
    from vlmprobe.report.trend import write_trend

    print(write_trend(args.output_uri, args.nights, args.out))
    return 0


COMMANDS = {
    "report": (REPORT_HELP, add_report_arguments, run_report),
    "compare": (COMPARE_HELP, add_compare_arguments, run_compare),
    "trend": (TREND_HELP, add_trend_arguments, run_trend),
}
