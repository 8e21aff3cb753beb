"""The ``vlmprobe`` console script: one subcommand per step, plus demo data and the Gemini simulator.

Subcommands: ``probe``, ``sample-keys``, ``qa``, ``publish`` (the steps); ``report RUN_URI`` (a
run's report.html again), ``compare RUN_A RUN_B`` (two nights' failure keys, with significance),
``trend OUTPUT_URI --nights N`` (failure rate per category over nights) — :mod:`vlmprobe.report`;
``demo-data``, ``gemini-sim``.

Step options are generated from the step's config model, so the CLI, the config and the DAG's
params share one set of names and bounds. A step's return value is printed as JSON and, when
``VLMPROBE_XCOM_FILE`` is set (the pod's ``/airflow/xcom/return.json``), written there for XCom.

Failures end in ONE log line at ERROR, ``vlmprobe <step>: error: …``, and an exit code the pod
operator acts on (see :mod:`vlmprobe.errors`): 2 bad usage or input, 3 teacher unusable, 4
teacher quota spent (none of them retried), 1 anything else (retried). ``--debug`` or
``VLMPROBE_DEBUG=1`` adds the traceback.

``vlmprobe probe --nproc-per-node N`` starts the N torchrun ranks itself (``torch.distributed.run``
in-process, standalone) and exits with the code of the first rank that failed: torchrun alone
exits 1 whatever its ranks returned, which would make a deterministic failure look retryable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from vlmprobe import config as cfg
from vlmprobe.errors import UsageError, exit_code_for
from vlmprobe.params import NO_PRESET, PRESETS

XCOM_FILE_ENV = "VLMPROBE_XCOM_FILE"
DEBUG_ENV = "VLMPROBE_DEBUG"
# Set by torchrun for each rank: where a failing rank leaves its one line for the launcher.
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
MAX_MESSAGE_CHARS = 2000

log = logging.getLogger("vlmprobe")


def _parse_bool(text: str) -> bool:
    # Pod arguments are rendered templates, so booleans arrive as "True"/"False".
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_config_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        required = field.is_required()
        help_ = field.description or ""
        if ann is bool:
            parser.add_argument(flag, type=_parse_bool, default=None, metavar="{true,false}", help=help_)
            continue
        if typing.get_origin(ann) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(ann), default=None, required=required, help=help_)
            continue
        kind = ann if ann in (int, float) else str
        parser.add_argument(flag, type=kind, default=None, required=required, help=help_)


def _options_problem(e: ValidationError) -> str:
    """A pydantic error as one line naming each bad option by its flag."""
    parts = []
    for err in e.errors():
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else "options"
        parts.append(f"{flag}: {err['msg']}")
    return "invalid options: " + "; ".join(parts)


def _config_from_args(model: type[BaseModel], args: argparse.Namespace) -> BaseModel:
    values = {k: v for k in model.model_fields if (v := getattr(args, k, None)) is not None}
    preset = PRESETS.get(getattr(args, "preset", None) or "", {})  # an explicit flag wins over the preset
    values = {**{k: v for k, v in preset.items() if k in model.model_fields}, **values}
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise UsageError(_options_problem(e)) from e


def _emit(result: Any) -> None:
    if result is None:  # under torchrun only rank 0 has a result: the others print nothing
        return
    text = json.dumps(result, sort_keys=True, default=str)
    print(text, flush=True)
    xcom_file = os.environ.get(XCOM_FILE_ENV)
    if xcom_file:
        os.makedirs(os.path.dirname(xcom_file) or ".", exist_ok=True)
        with open(xcom_file, "w") as f:
            f.write(text)


def _probe(c: cfg.ProbeConfig) -> Any:
    from vlmprobe.probe.run import main

    return main(c)


def _sample(c: cfg.SampleConfig) -> Any:
    from vlmprobe.sample.run import sample_keys

    return sample_keys(c)


def _qa(c: cfg.QAConfig) -> Any:
    from vlmprobe.qa.run import run_shard

    return run_shard(c)


def _publish(c: cfg.PublishConfig) -> Any:
    from vlmprobe.publish.run import publish

    return publish(c)


STEPS: dict[str, tuple[type[BaseModel], Callable[[Any], Any], str]] = {
    "probe": (cfg.ProbeConfig, _probe, "Step 1: find, explain and verify the target's failures "
                                       "(run under torchrun, or give --nproc-per-node to start the ranks)."),
    "sample-keys": (cfg.SampleConfig, _sample, "Step 2: sample a balanced set of failures per key and plan the QA shards."),
    "qa": (cfg.QAConfig, _qa, "Step 3: generate QA pairs for one shard with Gemini."),
    "publish": (cfg.PublishConfig, _publish, "Step 4: check every output and write the run manifest."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmprobe", description=__doc__.splitlines()[0])
    debug_help = f"show the traceback of a failure (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", default=False, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        # also accepted after the subcommand; SUPPRESS keeps a flag given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        return p

    for name, (model, _, help_) in STEPS.items():
        p = add(name, help=help_, description=help_)
        _add_config_arguments(p, model)
        p.add_argument("--preset", choices=[NO_PRESET, *PRESETS], default=None,
                       help="the seed's recommended values for the flags not given (README: Presets)")
        if name == "probe":
            p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc_per_node", type=int, default=None,
                           metavar="N", help="start N ranks (torch.distributed.run, standalone) and exit with the "
                                             "first failing rank's code; omit when already under torchrun")

    from vlmprobe.demo import data as demo_data
    from vlmprobe.sim import cli as sim_cli

    from vlmprobe.report.commands import COMMANDS as REPORT_COMMANDS

    for name, (help_, add_arguments, _) in REPORT_COMMANDS.items():
        add_arguments(add(name, help=help_, description=help_))
    demo_data.add_arguments(add("demo-data", help="Write synthetic parquet files and a tiny LLaVA for the offline demo."))
    sim_cli.add_arguments(add("gemini-sim", help="Serve the Gemini simulator on loopback (tests and the offline demo)."))
    return parser


# -- failures ------------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def failure_line(step: str, e: BaseException, debug: bool = False) -> str:
    """``vlmprobe <step>: error: …`` for an exception, on one line."""
    _, expected = exit_code_for(e)
    if expected:
        return f"vlmprobe {step}: error: {_one_line(str(e))}"
    hint = "" if debug else " (run with --debug for the traceback)"
    return f"vlmprobe {step}: error: {type(e).__name__}: {_one_line(str(e))}{hint}"


def _leave_for_launcher(line: str) -> None:
    """Under torchrun, put the rank's line where the launcher reads a failed rank's message."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "w") as f:
            json.dump({"message": line, "timestamp": int(time.time())}, f)
    except OSError:
        pass  # the line is in the log anyway


# -- the probe launcher --------------------------------------------------------------------------

def _rank_argv(argv: list[str]) -> list[str]:
    """The probe's argv for its ranks: ``--nproc-per-node`` (either spelling, either form) removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--nproc-per-node", "--nproc_per_node"):
            skip = True
            continue
        if arg.startswith(("--nproc-per-node=", "--nproc_per_node=")):
            continue
        out.append(arg)
    return out


def _root_failure(e: Any) -> tuple[int, Any]:
    """The rank whose failure ended the job, and its failure.

    The first rank that exited with a code of its own; torchrun's "first failure" alone is not
    enough: when two ranks fail at once (a dead teacher), the one still shutting down when the
    other exits is terminated by torchrun (a negative code) although its error file is older.
    Ranks killed by a signal count only when no rank exited on its own.
    """
    own = {r: f for r, f in e.failures.items() if f.exitcode > 0}
    failures = own or e.failures
    rank = min(failures, key=lambda r: (failures[r].timestamp, r))
    return rank, failures[rank]


def launch_ranks(nproc: int, rank_argv: list[str], debug: bool = False) -> int:
    """Run ``python -m vlmprobe.cli <rank_argv>`` as ``nproc`` torchrun ranks; their exit code.

    0 when every rank succeeded, else the code of the first rank that failed (1 for a rank killed
    by a signal), with one line naming it and its own error line.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, minus its banner
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if not debug:
        # the ranks' own lines say what went wrong; torchrun's report would repeat it in 30 lines
        for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "vlmprobe.cli", *rank_argv])
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = _root_failure(e)
        code = failure.exitcode if failure.exitcode > 0 else 1
        message = failure.message if isinstance(failure.message, str) else json.dumps(failure.message)
        others = sorted(r for r in e.failures if r != rank)
        log.error("vlmprobe probe: error: rank %d of %d failed first (exit code %d)%s: %s", rank, nproc,
                  failure.exitcode, f"; ranks {others} failed too" if others else "",
                  _one_line(message.removeprefix("vlmprobe probe: error: ")))
        return code
    return 0


# -- main ----------------------------------------------------------------------------------------

def _run(args: argparse.Namespace, argv: list[str], debug: bool) -> int:
    if args.command == "demo-data":
        from vlmprobe.demo import data as demo_data

        return demo_data.main(args)
    if args.command == "gemini-sim":
        from vlmprobe.sim import cli as sim_cli

        return sim_cli.main(args)
    if args.command in ("report", "compare", "trend"):
        from vlmprobe.report.commands import COMMANDS as REPORT_COMMANDS

        return REPORT_COMMANDS[args.command][2](args)
    model, run, _ = STEPS[args.command]
    config = _config_from_args(model, args)  # validated before any rank starts
    nproc = getattr(args, "nproc_per_node", None)
    if nproc is None and args.command == "probe" and "LOCAL_RANK" not in os.environ:
        nproc = PRESETS.get(args.preset or "", {}).get("nproc_per_node")  # the preset's ranks, unless under torchrun
    if nproc is not None:
        if nproc < 1:
            raise UsageError(f"--nproc-per-node must be at least 1, got {nproc}")
        if "LOCAL_RANK" in os.environ:
            raise UsageError("--nproc-per-node starts the ranks itself: do not also run under torchrun")
        return launch_ranks(nproc, _rank_argv(argv), debug)
    _emit(run(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    from vlmprobe.log import setup_logging
    from vlmprobe.shared_volume import share_with_group

    share_with_group()  # steps share one volume: group-writable files (vlmprobe.shared_volume)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # bad flags: argparse's usage line and one error line, exit 2
    setup_logging()
    debug = bool(args.debug) or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    try:
        return _run(args, argv, debug)
    except KeyboardInterrupt:
        log.error("vlmprobe %s: interrupted", args.command)
        return 130
    except Exception as e:
        code, _ = exit_code_for(e)
        line = failure_line(args.command, e, debug)
        log.error("%s", line, exc_info=e if debug else None)
        _leave_for_launcher(line)
        return code


if __name__ == "__main__":
    sys.exit(main())
