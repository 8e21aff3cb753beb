"""The seed's presets: one resolution for the pods, the light tasks, the preflight and the CLI."""

from __future__ import annotations

import types

import pendulum
import pytest

from podrender import render_pod
from vlmprobe.params import PARAM_SPECS, PRESETS, defaults, resolve_params

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
SEED_4GPU = {"nproc_per_node": 4, "failure_batch_size": 100, "parquet_sample_size": 8, "num_shards": 4,
             "concurrency": 20, "batch_size": 1000, "request_delay": 0.05}


def _main(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def _flags(args):
    return dict(zip(args[1::2], args[2::2]))


def test_a_4gpu_run_renders_a_probe_pod_with_4_gpus_and_the_seeds_values(dag):
    _, pod = render_pod(dag, "probe", RUN, {"preset": "4gpu"})
    main = _main(pod)
    assert main["resources"]["requests"]["nvidia.com/gpu"] == main["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "--nproc_per_node=4" in main["args"]
    flags = _flags(main["args"][1:])
    assert flags["--failure-batch-size"] == "100" and flags["--parquet-sample-size"] == "8"
    assert flags["--concurrency"] == "20" and flags["--request-delay"] == "0.05"
    # the QA pods get the preset's pacing too
    _, qa = render_pod(dag, "qa.generate", RUN, {"preset": "4gpu"}, {"shard_index": "0"})
    qa_flags = _flags(_main(qa)["args"])
    assert qa_flags["--batch-size"] == "1000" and qa_flags["--concurrency"] == "20"
    assert qa_flags["--request-delay"] == "0.05"


def test_a_key_in_the_conf_overrides_the_preset(dag):
    _, pod = render_pod(dag, "probe", RUN, {"preset": "4gpu", "concurrency": 8})
    main = _main(pod)
    flags = _flags(main["args"][1:])
    assert flags["--concurrency"] == "8"  # the conf's
    assert flags["--failure-batch-size"] == "100" and main["resources"]["limits"]["nvidia.com/gpu"] == "4"
    _, qa = render_pod(dag, "qa.generate", RUN, {"preset": "4gpu", "concurrency": 8}, {"shard_index": "0"})
    assert _flags(_main(qa)["args"])["--concurrency"] == "8"


def test_no_preset_renders_the_defaults(dag):
    _, pod = render_pod(dag, "probe", RUN, {})
    flags = _flags(_main(pod)["args"][1:])
    assert flags["--concurrency"] == str(PARAM_SPECS["concurrency"]["default"])
    assert flags["--failure-batch-size"] == str(PARAM_SPECS["failure_batch_size"]["default"])


def test_an_unknown_preset_is_refused_at_trigger_time(dag):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        render_pod(dag, "probe", RUN, {"preset": "3gpu"})


def test_resolution_rule():
    params = {**defaults(), "preset": "4gpu", "concurrency": 8}
    assert resolve_params(params, {"preset": "4gpu", "concurrency": 8}) == {**params, **SEED_4GPU, "concurrency": 8}
    # a default that equals the conf's value is still the conf's: only the conf's keys win
    params = {**defaults(), "preset": "1gpu", "num_shards": 8}
    assert resolve_params(params, {"preset": "1gpu", "num_shards": 8})["num_shards"] == 8
    assert resolve_params(params, {"preset": "1gpu"})["num_shards"] == 1
    assert resolve_params(defaults(), None) == defaults()
    with pytest.raises(ValueError, match="preset 'x'"):
        resolve_params({**defaults(), "preset": "x"})


def test_presets_are_within_the_params_bounds():
    for name, values in PRESETS.items():
        for key, value in values.items():
            spec = PARAM_SPECS[key]
            assert spec.get("minimum", value) <= value <= spec.get("maximum", value), (name, key)
    assert PRESETS["4gpu"] == SEED_4GPU
    assert {k: v for k, v in PRESETS["8gpu"].items() if k not in ("nproc_per_node", "parquet_sample_size",
                                                                   "num_shards")} == {
        k: v for k, v in SEED_4GPU.items() if k not in ("nproc_per_node", "parquet_sample_size", "num_shards")}


def test_the_light_tasks_use_the_preset(tmp_path, demo_parquet):
    from fakes import fake_probe
    from vlmprobe.io import read_json
    from vlmprobe.tasks import sample_keys_task

    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:2": 3})
    run = types.SimpleNamespace(data_interval_start=RUN, logical_date=RUN, run_after=RUN, conf={"preset": "1gpu"})
    params = {**defaults(), "output_uri": str(tmp_path), "preset": "1gpu"}
    assert sample_keys_task(params, run) == ["0"]  # num_shards 1 (the default is 8)
    assert read_json(lay.shard_plan)["num_shards"] == 1
    run.conf = {"preset": "1gpu", "num_shards": 2}
    assert sample_keys_task({**params, "num_shards": 2}, run) == ["0", "1"]


def test_the_preflight_checks_the_resolved_params(monkeypatch):
    from vlmprobe import preflight as pf

    seen = {}
    monkeypatch.setattr(pf, "check_probe", lambda params, conf, run_date: seen.update(params=params, conf=conf))
    run = types.SimpleNamespace(data_interval_start=RUN, logical_date=RUN, run_after=RUN, conf={"preset": "8gpu"})
    pf.preflight({"params": {**defaults(), "preset": "8gpu"}, "dag_run": run})
    assert seen["params"]["failure_batch_size"] == 100 and seen["conf"] == {"preset": "8gpu"}


@pytest.mark.parametrize("argv,want", [
    (["qa", "--preset", "4gpu"], {"concurrency": 20, "batch_size": 1000, "request_delay": 0.05}),
    (["qa", "--preset", "4gpu", "--concurrency", "8"], {"concurrency": 8, "batch_size": 1000}),
    (["sample-keys", "--preset", "1gpu"], {"num_shards": 1}),
    (["probe", "--preset", "8gpu"], {"failure_batch_size": 100, "parquet_sample_size": 16}),
])
def test_the_cli_takes_a_preset_and_explicit_flags_win(argv, want):
    from vlmprobe.cli import STEPS, _config_from_args, build_parser

    shard = ["--shard-index", "0"] if argv[0] == "qa" else []
    args = build_parser().parse_args([*argv, "--run-date", "2026-11-25", *shard])
    cfg = _config_from_args(STEPS[argv[0]][0], args)
    assert {k: getattr(cfg, k) for k in want} == want


def test_the_cli_probe_preset_sets_the_launchers_ranks(monkeypatch):
    from vlmprobe import cli

    launched = {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(cli, "launch_ranks", lambda n, argv, debug: launched.update(n=n, argv=argv) or 0)
    assert cli.main(["probe", "--preset", "4gpu", "--run-date", "2026-11-25"]) == 0
    assert launched["n"] == 4 and "--preset" in launched["argv"]  # each rank resolves the same preset
    assert cli.main(["probe", "--preset", "4gpu", "--nproc-per-node", "2", "--run-date", "2026-11-25"]) == 0
    assert launched["n"] == 2
