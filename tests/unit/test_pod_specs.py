"""Pod specs rendered offline for a date and conf, validated against the Kubernetes schema."""

from __future__ import annotations

import json

import kubernetes_validate
import pendulum
import pytest

from podrender import render_pod

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
CASES = [
    ("probe", {}, None),
    ("probe", {"nproc_per_node": 4, "failure_batch_size": 32}, None),
    ("qa.generate", {"concurrency": 64, "no_async": True}, {"shard_index": "3"}),
]


def _main(pod_dict):
    return next(c for c in pod_dict["spec"]["containers"] if c["name"] == "base")


@pytest.mark.parametrize("version", ["1.30", "1.37"])
@pytest.mark.parametrize("task_id,conf,mapped", CASES)
def test_pods_pass_kubernetes_validate_strict(dag, task_id, conf, mapped, version):
    _, pod = render_pod(dag, task_id, RUN, conf, mapped)
    kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize("task_id,conf,mapped", CASES)
def test_gpu_requests_equal_limits_and_toleration(dag, task_id, conf, mapped):
    _, pod = render_pod(dag, task_id, RUN, conf, mapped)
    res = _main(pod)["resources"]
    want = str(conf.get("nproc_per_node", 8)) if task_id == "probe" else "1"
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == want
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    if task_id == "probe":
        assert f"--nproc_per_node={want}" in _main(pod)["args"]


@pytest.mark.parametrize("task_id,conf,mapped", CASES)
def test_secret_only_by_reference_and_shm_in_memory(dag, task_id, conf, mapped):
    _, pod = render_pod(dag, task_id, RUN, conf, mapped)
    env = {e["name"]: e for e in _main(pod)["env"]}
    key = env["GEMINI_API_KEY"]
    assert "value" not in key
    assert key["valueFrom"]["secretKeyRef"] == {"name": "vlmprobe-gemini", "key": "api-key"}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m["name"] for m in _main(pod)["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm" and mounts["/data"] == "data"
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "vlmprobe-data"


def test_args_carry_conf_and_run_date(dag):
    _, pod = render_pod(dag, "qa.generate", RUN, {"concurrency": 64, "no_async": True, "request_delay": 0.5},
                        {"shard_index": "3"})
    args = _main(pod)["args"]
    pairs = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "qa" and pairs["--shard-index"] == "3" and pairs["--run-date"] == "2026-11-25"
    assert pairs["--concurrency"] == "64" and pairs["--no-async"] == "True" and pairs["--request-delay"] == "0.5"
    # the rendered args parse with the real CLI into a valid config
    from vlmprobe.cli import STEPS, _config_from_args, build_parser

    cfg = _config_from_args(STEPS["qa"][0], build_parser().parse_args(args))
    assert cfg.shard_index == 3 and cfg.no_async is True and cfg.concurrency == 64


def test_deployment_settings_from_env(monkeypatch):
    from operators import DeploymentSettings

    s = DeploymentSettings.from_env({"VLMPROBE_NAMESPACE": "ml", "VLMPROBE_NODE_SELECTOR": '{"gpu": "h100"}',
                                     "VLMPROBE_QA_GPUS": "0"})
    assert s.namespace == "ml" and s.node_selector == {"gpu": "h100"} and s.qa_gpus == 0
    with pytest.raises(ValueError, match="VLMPROBE_NODE_SELECTOR"):
        DeploymentSettings.from_env({"VLMPROBE_NODE_SELECTOR": "gpu=h100"})
    with pytest.raises(ValueError, match="VLMPROBE_POD_MODE"):
        DeploymentSettings.from_env({"VLMPROBE_POD_MODE": "docker"})


def test_cpu_only_qa_pod_asks_for_no_gpu(dag):
    from kubernetes.client import ApiClient

    from operators import DeploymentSettings, GpuPodOperator
    from podrender import offline_context

    op = GpuPodOperator(task_id="cpu_only", settings=DeploymentSettings(qa_gpus=0), gpus=0, cmds=["vlmprobe"],
                        arguments=["qa"])
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(offline_context(dag, op, RUN), dry_run=True))
    assert "nvidia.com/gpu" not in json.dumps(pod["spec"]["containers"][0].get("resources", {}))
    assert not pod["spec"].get("tolerations")
    kubernetes_validate.validate(pod, "1.37", strict=True)


def test_pool_slots_count_gpus(dag):
    assert dag.get_task("probe").pool_slots == 8
    assert dag.get_task("qa.generate").pool_slots == 1
