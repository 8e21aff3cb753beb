"""Every param a step's config takes reaches that step: the pods' arguments, the light tasks' configs.

A param that a step reads but its pod is not given would silently run at its default; these
tests set every param to a value other than its default and read it back from what the step gets.
"""

from __future__ import annotations

import pendulum
import pytest

from podrender import render_pod
from vlmprobe.config import ProbeConfig, PublishConfig, QAConfig, SampleConfig
from vlmprobe.params import PARAM_SPECS, defaults

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
STRINGS = {"input_uri": "/other/input", "output_uri": "/other/output", "target_model": "other-org/other-llava",
           "gemini_model": "gemini-2.5-pro", "target_revision": "0123456789abcdef0123456789abcdef01234567",
           "teacher_project": "other-project"}


def _other_value(name: str, spec: dict):
    default = spec["default"]
    if "enum" in spec:
        return next(v for v in spec["enum"] if v != default)
    if spec["type"] == "boolean":
        return not default
    if spec["type"] == "string":
        return STRINGS[name]
    step = 1 if spec["type"] == "integer" else 0.5
    up = default + step
    return up if up <= spec.get("maximum", float("inf")) else default - step


def _conf() -> dict:
    conf = {name: _other_value(name, spec) for name, spec in PARAM_SPECS.items()}
    conf["min_per_key"] = conf["samples_per_key"]  # the one cross-param rule (min_per_key <= samples_per_key)
    return conf


def _config_of(pod: dict, model: type):
    from vlmprobe.cli import _config_from_args, build_parser

    (main,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    return _config_from_args(model, build_parser().parse_args(main["args"])), main["args"]


def _step_params(model: type) -> list[str]:
    return [name for name in model.model_fields if name in PARAM_SPECS]


def test_every_param_of_the_probe_and_qa_configs_reaches_their_pods(dag):
    conf = _conf()
    assert all(conf[name] != value for name, value in defaults().items() if name != "min_per_key")
    for task_id, model, mapped in (("probe", ProbeConfig, None), ("qa.generate", QAConfig, {"shard_index": "3"}),
                                   ("qa.submit", QAConfig, {"shard_index": "3"})):
        _, pod = render_pod(dag, task_id, RUN, conf, mapped)
        cfg, args = _config_of(pod, model)
        names = _step_params(model)
        assert {name: getattr(cfg, name) for name in names} == {name: conf[name] for name in names}, task_id
        assert cfg.run_date == "2026-11-25"
        if task_id == "probe":  # not a config field: the launcher's own flag
            assert f"--nproc_per_node={conf['nproc_per_node']}" in args


def test_the_new_params_are_among_them():
    # the pods' arguments follow the configs; the configs must carry what the issues added
    assert {"max_new_tokens", "teacher_rpm", "teacher_tpm", "teacher_rpd", "teacher_retry_window_s",
            "thinking_budget", "teacher_image_max_side", "max_cost_usd"} <= set(_step_params(ProbeConfig))
    assert {"target_model", "max_new_tokens", "qa_target_check", "qa_keep", "teacher_rpm", "thinking_budget",
            "teacher_image_max_side", "max_cost_usd", "target_revision"} <= set(_step_params(QAConfig))
    assert {"target_revision", "force"} <= set(_step_params(ProbeConfig))
    assert "max_error_rate" in _step_params(PublishConfig) and "max_error_rate" in _step_params(SampleConfig)


@pytest.mark.parametrize("model", [SampleConfig, PublishConfig])
def test_the_light_tasks_take_every_param_of_their_config(model):
    from vlmprobe.tasks import _pick

    conf = _conf()
    cfg = _pick(model, conf, run_date="2026-11-25")
    names = _step_params(model)
    assert names and {name: getattr(cfg, name) for name in names} == {name: conf[name] for name in names}
