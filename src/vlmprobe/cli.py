"""The ``vlmprobe`` console script: one subcommand per step, plus demo data and the Gemini simulator.

Step options are generated from the step's config model, so the CLI, the config and the DAG's
params share one set of names and bounds. A step's return value is printed as JSON and, when
``VLMPROBE_XCOM_FILE`` is set (the pod's ``/airflow/xcom/return.json``), written there for XCom.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from vlmprobe import config as cfg

XCOM_FILE_ENV = "VLMPROBE_XCOM_FILE"


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


def _config_from_args(model: type[BaseModel], args: argparse.Namespace) -> BaseModel:
    values = {k: v for k in model.model_fields if (v := getattr(args, k, None)) is not None}
    return model.model_validate(values)


def _emit(result: Any) -> None:
    text = json.dumps(result, sort_keys=True, default=str)
    print(text, flush=True)
    xcom_file = os.environ.get(XCOM_FILE_ENV)
    if xcom_file and result is not None:  # under torchrun only rank 0 has a result
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
    "probe": (cfg.ProbeConfig, _probe, "Step 1 (run under torchrun): find, explain and verify the target's failures."),
    "sample-keys": (cfg.SampleConfig, _sample, "Step 2: sample a balanced set of failures per key and plan the QA shards."),
    "qa": (cfg.QAConfig, _qa, "Step 3: generate QA pairs for one shard with Gemini."),
    "publish": (cfg.PublishConfig, _publish, "Step 4: check every output and write the run manifest."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmprobe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (model, _, help_) in STEPS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _add_config_arguments(p, model)

    from vlmprobe.demo import data as demo_data
    from vlmprobe.sim import server as sim_server

    demo = sub.add_parser("demo-data", help="Write synthetic parquet files and a tiny LLaVA for the offline demo.")
    demo_data.add_arguments(demo)
    sim = sub.add_parser("gemini-sim", help="Serve the Gemini simulator on loopback (tests and the offline demo).")
    sim_server.add_arguments(sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vlmprobe.log import setup_logging
    from vlmprobe.shared_volume import share_with_group

    share_with_group()  # steps share one volume: group-writable files (vlmprobe.shared_volume)

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "demo-data":
        from vlmprobe.demo import data as demo_data

        return demo_data.main(args)
    if args.command == "gemini-sim":
        from vlmprobe.sim import server as sim_server

        return sim_server.main(args)
    model, run, _ = STEPS[args.command]
    try:
        config = _config_from_args(model, args)
    except ValidationError as e:
        parser.exit(2, f"vlmprobe {args.command}: invalid options:\n{e}\n")
    _emit(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
