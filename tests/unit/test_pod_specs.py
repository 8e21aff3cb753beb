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


@pytest.mark.parametrize("conf,cpu,memory", [({}, "64", "256Gi"), ({"nproc_per_node": 2}, "16", "64Gi")])
def test_probe_cpu_and_memory_follow_its_gpu_count(dag, conf, cpu, memory):
    _, pod = render_pod(dag, "probe", RUN, conf)
    res = _main(pod)["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == cpu
    assert res["requests"]["memory"] == res["limits"]["memory"] == memory


def test_qa_pod_resources_are_per_pod(dag):
    _, pod = render_pod(dag, "qa.generate", RUN, {}, {"shard_index": "0"})
    res = _main(pod)["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}


def test_resources_come_from_the_settings(dag):
    from kubernetes.client import ApiClient

    from operators import DeploymentSettings, GpuPodOperator
    from podrender import offline_context

    settings = DeploymentSettings.from_env({"VLMPROBE_PROBE_CPU_PER_GPU": "1500m",
                                            "VLMPROBE_PROBE_MEMORY_PER_GPU": "12.5Gi"})
    op = GpuPodOperator(task_id="p", settings=settings, step="probe", gpus=3, cmds=["vlmprobe"], arguments=["probe"])
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(offline_context(dag, op, RUN), dry_run=True))
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4500m", "memory": "37.5Gi",
                                                                   "nvidia.com/gpu": "3"}
    with pytest.raises(ValueError, match="VLMPROBE_QA_MEMORY"):
        DeploymentSettings.from_env({"VLMPROBE_QA_MEMORY": "16 GB"})


@pytest.mark.parametrize("run_id,expected", [
    ("scheduled__2026-11-25T02:00:00+00:00", "vlmprobe-scheduled"),
    ("manual__2026-11-25T09:30:00+00:00", "vlmprobe-scheduled"),
    ("backfill__2026-11-03T02:00:00+00:00", "vlmprobe-backfill"),
])
def test_priority_class_follows_the_run_type(dag, run_id, expected):
    from kubernetes.client import ApiClient

    from operators import DeploymentSettings, GpuPodOperator
    from podrender import offline_context

    settings = DeploymentSettings(priority_class="vlmprobe-scheduled", backfill_priority_class="vlmprobe-backfill")
    op = GpuPodOperator(task_id="probe", settings=settings, step="probe", gpus=8, cmds=["true"])
    pod = op.build_pod_request_obj(offline_context(dag, op, RUN, run_id=run_id), dry_run=True)
    assert ApiClient().sanitize_for_serialization(pod)["spec"]["priorityClassName"] == expected


def test_pod_cannot_outlive_its_task(dag):
    _, pod = render_pod(dag, "probe", RUN)
    assert pod["spec"]["activeDeadlineSeconds"] == int(dag.get_task("probe").execution_timeout.total_seconds())


def test_step_pods_carry_the_label_the_network_policy_selects(dag):
    from operators.gpu_pod import STEP_POD_LABEL, STEP_POD_LABEL_VALUE

    for task_id, mapped in (("probe", None), ("qa.generate", {"shard_index": "0"})):
        _, pod = render_pod(dag, task_id, RUN, {}, mapped)
        assert pod["metadata"]["labels"][STEP_POD_LABEL] == STEP_POD_LABEL_VALUE


def test_no_xcom_sidecar_and_failures_keep_their_log_tail(dag):
    for task_id, mapped in (("probe", None), ("qa.generate", {"shard_index": "0"})):
        task = dag.get_task(task_id)
        assert task.do_xcom_push is False
        _, pod = render_pod(dag, task_id, RUN, {}, mapped)
        assert [c["name"] for c in pod["spec"]["containers"]] == ["base"]
        assert _main(pod)["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert "VLMPROBE_XCOM_FILE" not in {e["name"] for e in _main(pod)["env"]}


def test_new_deployment_settings_from_env():
    from operators import DeploymentSettings

    s = DeploymentSettings.from_env({
        "VLMPROBE_ALLOWED_URI_PREFIXES": "/data, gs://team/vqa ,",
        "VLMPROBE_ALLOWED_TARGET_ENDPOINTS": "http://vllm.ml.svc:8000/v1",
        "VLMPROBE_DEFERRABLE": "false", "VLMPROBE_POD_LOG_INTERVAL": "0", "VLMPROBE_RUN_AS_USER": "2000",
        "VLMPROBE_BACKFILL_PRIORITY_CLASS": "low"})
    assert s.allowed_uri_prefixes == ("/data", "gs://team/vqa")
    assert s.allowed_target_endpoints == ("http://vllm.ml.svc:8000/v1",)
    assert s.deferrable is False and s.pod_log_interval == 0 and s.run_as_user == 2000
    assert s.backfill_priority_class == "low"
    with pytest.raises(ValueError, match="VLMPROBE_RUN_AS_USER"):
        DeploymentSettings.from_env({"VLMPROBE_RUN_AS_USER": "0"})
    with pytest.raises(ValueError, match="VLMPROBE_DEFERRABLE"):
        DeploymentSettings.from_env({"VLMPROBE_DEFERRABLE": "maybe"})
