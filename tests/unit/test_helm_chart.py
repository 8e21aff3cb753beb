"""Render the vlmprobe companion chart offline and check what a cluster would receive.

Runs helm's Go template engine through helm-python-sdk (no helm binary, no cluster) and
validates every manifest against the Kubernetes schemas bundled with kubernetes-validate.
Also checks `helm/airflow-values.yaml`, which the official Airflow chart consumes.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HELM_DIR = REPO / "helm"
CHART_DIR = HELM_DIR / "vlmprobe"
AIRFLOW_VALUES = HELM_DIR / "airflow-values.yaml"

RELEASE = "vlmprobe"
NAMESPACE = "vlmprobe"
SETTINGS_CONFIGMAP = "vlmprobe-settings"

# The environment variables the DAG reads at parse time; the settings ConfigMap holds exactly these.
SETTINGS_KEYS = {
    "VLMPROBE_NAMESPACE",
    "VLMPROBE_WORKER_IMAGE",
    "VLMPROBE_IMAGE_PULL_POLICY",
    "VLMPROBE_SERVICE_ACCOUNT",
    "VLMPROBE_DATA_PVC",
    "VLMPROBE_DATA_MOUNT",
    "VLMPROBE_NODE_SELECTOR",
    "VLMPROBE_GEMINI_SECRET",
    "VLMPROBE_GEMINI_SECRET_KEY",
    "VLMPROBE_GEMINI_BASE_URL",
    "VLMPROBE_GPU_POOL",
    "VLMPROBE_QA_GPUS",
    "VLMPROBE_SHM_SIZE",
    "VLMPROBE_INPUT_URI",
    "VLMPROBE_OUTPUT_URI",
    "VLMPROBE_RUN_AS_USER",
    "VLMPROBE_FS_GROUP",
    "VLMPROBE_SCRATCH_SIZE",
    "VLMPROBE_PROBE_CPU_PER_GPU",
    "VLMPROBE_PROBE_MEMORY_PER_GPU",
    "VLMPROBE_QA_CPU",
    "VLMPROBE_QA_MEMORY",
    "VLMPROBE_QA_SUBMIT_CPU",
    "VLMPROBE_QA_SUBMIT_MEMORY",
    "VLMPROBE_DEFERRABLE",
    "VLMPROBE_POD_LOG_INTERVAL",
    "VLMPROBE_ALLOWED_URI_PREFIXES",
    "VLMPROBE_ALLOWED_TARGET_ENDPOINTS",
}
PRIORITY_KEYS = {"VLMPROBE_PRIORITY_CLASS", "VLMPROBE_BACKFILL_PRIORITY_CLASS"}
CLUSTER_SCOPED = {"Namespace", "PriorityClass"}
GSA = "vlmprobe@project.iam.gserviceaccount.com"
ROLE_ARN = "arn:aws:iam::123456789012:role/vlmprobe"
IDENTITY_KEYS = {"iam.gke.io/gcp-service-account", "eks.amazonaws.com/role-arn"}

# A stand-in key; real Gemini keys start with "AIza", which must appear nowhere in helm/.
FAKE_API_KEY = "test-only-not-a-key-7f3a"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "create_secret": {"gemini": {"createSecret": True, "apiKey": FAKE_API_KEY}},
    "existing_claim": {"data": {"createClaim": False, "existingClaim": "shared-datasets"}},
    "all_off": {
        "priorityClasses": {"enabled": False},
        "gpuQuota": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "airflow": {"triggererServiceAccount": "", "createWorkerServiceAccount": False},
        "connectivityCheck": {"enabled": False},
    },
    "separate_namespaces": {
        "namespace": {"create": True, "name": "gpu-pods"},
        "airflow": {"namespace": "airflow"},
    },
    "everything_on": {
        "gemini": {"createSecret": True, "apiKey": FAKE_API_KEY, "baseUrl": "http://gemini-sim:8000"},
        "data": {"storageClass": "nfs", "size": "2Ti"},
        "pods": {"nodeSelector": {"nvidia.com/gpu.present": "true"}, "qaGpus": 2},
        "priorityClasses": {"scheduled": {"name": "nightly", "value": 5000}},
        "gpuQuota": {"enabled": True, "gpus": 16},
        "policy": {"allowedUriPrefixes": ["/data", "gs://team/vqa"],
                   "allowedTargetEndpoints": ["http://vllm.ml.svc:8000/v1"]},
        "rbac": {"triggererDeletesPods": True},
        "networkPolicy": {"httpsTo": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                          "extraEgress": [{"to": [{"podSelector": {"matchLabels": {"app": "vllm"}}}],
                                           "ports": [{"port": 8000, "protocol": "TCP"}]}]},
        "storageIdentity": {"gcpServiceAccount": GSA, "awsRoleArn": ROLE_ARN},
        "serviceAccount": {"annotations": {"example.com/owner": "ml-data"}},
        "labels": {"team": "ml-data"},
    },
    "node_local_dns": {"networkPolicy": {"dns": "node-local", "dnsServerIps": ["10.0.0.10"]}},
    "any_dns": {"networkPolicy": {"dns": "any"}},
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any], namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt and empty templates dropped)."""
    rendered = chart.render(values, name=RELEASE, namespace=namespace)
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def installed(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `helm install` creates: the objects without a hook (test pods run only in `helm test`)."""
    return [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def settings(docs: list[dict[str, Any]]) -> dict[str, str]:
    configmap = only(docs, "ConfigMap")
    assert configmap["metadata"]["name"] == SETTINGS_CONFIGMAP
    return configmap["data"]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return only([d for d in docs if d["metadata"]["name"].endswith(suffix)], kind)


def test_default_render_has_the_pod_prerequisites_and_the_guards(chart):
    docs = render(chart, {})

    assert sorted(doc["kind"] for doc in installed(docs)) == [
        "ConfigMap",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PriorityClass",
        "PriorityClass",
        "ResourceQuota",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "ServiceAccount",
        "ServiceAccount",
    ]
    assert [d["kind"] for d in docs if d not in installed(docs)] == ["Pod"]  # the `helm test` check
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_optional_objects_can_be_turned_off(chart):
    kinds = sorted(doc["kind"] for doc in render(chart, VALUE_SETS["all_off"]))  # hooks included
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "ServiceAccount"]


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", ["1.30", "1.37"])
def test_every_manifest_is_valid_kubernetes(chart, case, kube_version):
    for doc in render(chart, VALUE_SETS[case]):
        kubernetes_validate.validate(doc, kube_version, strict=True)


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_settings_configmap_holds_exactly_the_dag_settings_as_strings(chart, case):
    data = settings(render(chart, VALUE_SETS[case]))

    expected = set(SETTINGS_KEYS)
    if VALUE_SETS[case].get("priorityClasses", {}).get("enabled", True):
        expected |= PRIORITY_KEYS
    assert set(data) == expected
    assert all(isinstance(value, str) for value in data.values())
    assert isinstance(json.loads(data["VLMPROBE_NODE_SELECTOR"]), dict)
    assert int(data["VLMPROBE_QA_GPUS"]) >= 0


def test_default_settings_match_the_dag_defaults(chart):
    data = settings(render(chart, {}))

    assert data["VLMPROBE_NAMESPACE"] == NAMESPACE
    assert data["VLMPROBE_WORKER_IMAGE"] == f"vlmprobe-worker:{chart.metadata['appVersion']}"
    assert data["VLMPROBE_DATA_MOUNT"] == "/data"
    assert data["VLMPROBE_NODE_SELECTOR"] == "{}"
    assert data["VLMPROBE_GEMINI_SECRET"] == "vlmprobe-gemini"
    assert data["VLMPROBE_GEMINI_SECRET_KEY"] == "api-key"
    assert data["VLMPROBE_GEMINI_BASE_URL"] == ""
    assert data["VLMPROBE_GPU_POOL"] == "gpu"
    assert data["VLMPROBE_QA_GPUS"] == "1"
    assert data["VLMPROBE_SHM_SIZE"] == "32Gi"
    assert data["VLMPROBE_INPUT_URI"] == "/data/input"
    assert data["VLMPROBE_OUTPUT_URI"] == "/data/output"
    assert data["VLMPROBE_PRIORITY_CLASS"] == "vlmprobe-scheduled"
    assert data["VLMPROBE_BACKFILL_PRIORITY_CLASS"] == "vlmprobe-backfill"
    assert data["VLMPROBE_RUN_AS_USER"] == data["VLMPROBE_FS_GROUP"] == "10001"
    assert data["VLMPROBE_DEFERRABLE"] == "true" and data["VLMPROBE_ALLOWED_URI_PREFIXES"] == ""


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_the_dag_reads_the_published_settings(chart, case):
    # The ConfigMap is the Airflow components' environment: the DAG's own parser must accept it.
    from operators import DeploymentSettings

    values = VALUE_SETS[case]
    settings_ = DeploymentSettings.from_env(settings(render(chart, values)))
    assert settings_.probe_memory_per_gpu == "32Gi" and settings_.qa_cpu == "4"
    assert settings_.deferrable is True and settings_.pod_log_interval == 60
    assert settings_.allowed_uri_prefixes == tuple(values.get("policy", {}).get("allowedUriPrefixes", ()))
    assert settings_.allowed_target_endpoints == tuple(values.get("policy", {}).get("allowedTargetEndpoints", ()))
    if values.get("priorityClasses", {}).get("enabled", True):
        classes = {d["metadata"]["name"] for d in render(chart, values) if d["kind"] == "PriorityClass"}
        assert {settings_.priority_class, settings_.backfill_priority_class} == classes
    else:
        assert settings_.priority_class == settings_.backfill_priority_class == ""

def test_settings_follow_the_values(chart):
    data = settings(render(chart, VALUE_SETS["everything_on"]))

    assert json.loads(data["VLMPROBE_NODE_SELECTOR"]) == {"nvidia.com/gpu.present": "true"}
    assert data["VLMPROBE_QA_GPUS"] == "2"
    assert data["VLMPROBE_GEMINI_BASE_URL"] == "http://gemini-sim:8000"
    assert data["VLMPROBE_PRIORITY_CLASS"] == "nightly"
    assert data["VLMPROBE_ALLOWED_URI_PREFIXES"] == "/data,gs://team/vqa"


def test_scheduled_runs_outrank_backfills_and_evict_nobody_unless_told(chart):
    classes = {d["metadata"]["name"]: d for d in render(chart, {}) if d["kind"] == "PriorityClass"}

    assert classes["vlmprobe-scheduled"]["value"] > classes["vlmprobe-backfill"]["value"]
    # cluster-scoped: a class that may preempt could evict other teams' pods of lower priority
    assert {c["preemptionPolicy"] for c in classes.values()} == {"Never"}
    assert not any(c["globalDefault"] for c in classes.values())
    opted_in = render(chart, {"priorityClasses": {"scheduled": {"preemptionPolicy": "PreemptLowerPriority"}}})
    policies = {d["metadata"]["name"]: d["preemptionPolicy"] for d in opted_in if d["kind"] == "PriorityClass"}
    assert policies == {"vlmprobe-scheduled": "PreemptLowerPriority", "vlmprobe-backfill": "Never"}


def test_pod_objects_are_the_ones_the_settings_name(chart):
    docs = render(chart, {})
    data = settings(docs)

    step_account = named(docs, "ServiceAccount", data["VLMPROBE_SERVICE_ACCOUNT"])
    assert step_account["automountServiceAccountToken"] is False
    assert only(docs, "PersistentVolumeClaim")["metadata"]["name"] == data["VLMPROBE_DATA_PVC"]


def _rules(role: dict[str, Any]) -> dict[str, set[str]]:
    return {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}


def test_workers_launch_pods_and_nothing_more(chart):
    rules = _rules(named(render(chart, {}), "Role", "-pod-launcher"))

    assert rules == {
        "pods": {"create", "get", "list", "watch", "patch", "delete"},
        "pods/log": {"get"},
        "events": {"get", "list", "watch"},
    }  # no pods/exec: no XCom sidecar; no secrets: pods reference the Gemini Secret by name


def test_triggerer_only_reads_unless_told_to_delete(chart):
    assert _rules(named(render(chart, {}), "Role", "-pod-watcher")) == {
        "pods": {"get", "list", "watch"},
        "pods/log": {"get"},
        "events": {"get", "list", "watch"},
    }
    assert _rules(named(render(chart, VALUE_SETS["everything_on"]), "Role", "-pod-watcher"))["pods"] == {
        "get", "list", "watch", "delete"}


def test_rolebindings_name_the_airflow_service_accounts(chart):
    docs = render(chart, VALUE_SETS["separate_namespaces"], namespace="airflow")
    subjects = {}
    for suffix in ("-pod-launcher", "-pod-watcher"):
        binding = named(docs, "RoleBinding", suffix)
        assert binding["metadata"]["namespace"] == "gpu-pods"
        assert binding["roleRef"]["name"] == named(docs, "Role", suffix)["metadata"]["name"]
        subjects[suffix] = [(s["name"], s["namespace"]) for s in binding["subjects"]]
    assert subjects == {"-pod-launcher": [("airflow-worker", "airflow"), ("airflow-scheduler", "airflow")],
                        "-pod-watcher": [("airflow-triggerer", "airflow")]}


def test_network_policy_admits_nothing_in_and_only_dns_and_https_out(chart, dag):
    import pendulum

    from podrender import render_pod

    policy = only(render(chart, {}), "NetworkPolicy")
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and spec["ingress"] == []
    ports = sorted((p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 443), ("UDP", 53)]
    # it selects the pods the DAG renders
    for task_id, mapped in (("probe", None), ("qa.generate", {"shard_index": "0"})):
        _, pod = render_pod(dag, task_id, pendulum.datetime(2026, 11, 25, 2, tz="UTC"), {}, mapped)
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())


def test_network_policy_extra_egress_is_appended(chart):
    spec = only(render(chart, VALUE_SETS["everything_on"]), "NetworkPolicy")["spec"]
    assert spec["egress"][-1]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert spec["egress"][1]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]


def test_separate_namespaces_put_settings_with_airflow_and_pods_elsewhere(chart):
    docs = render(chart, VALUE_SETS["separate_namespaces"], namespace="airflow")

    namespace = only(docs, "Namespace")
    assert namespace["metadata"]["name"] == "gpu-pods"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert only(docs, "ConfigMap")["metadata"]["namespace"] == "airflow"
    assert settings(docs)["VLMPROBE_NAMESPACE"] == "gpu-pods"
    for doc in docs:
        if doc["kind"] in ("PersistentVolumeClaim", "Role", "RoleBinding", "NetworkPolicy", "ResourceQuota", "Pod"):
            assert doc["metadata"]["namespace"] == "gpu-pods", doc["kind"]
    accounts = {d["metadata"]["name"]: d["metadata"]["namespace"] for d in docs if d["kind"] == "ServiceAccount"}
    # the step pods' account where they run, the Airflow workers' where Airflow runs
    assert accounts == {"vlmprobe-worker": "gpu-pods", "airflow-worker": "airflow"}


def test_namespace_create_for_the_release_namespace_is_refused(chart):
    with pytest.raises(helm.HelmRenderError, match="--create-namespace"):
        render(chart, {"namespace": {"create": True, "name": NAMESPACE}})


def test_existing_claim_is_referenced_not_created(chart):
    docs = render(chart, VALUE_SETS["existing_claim"])

    assert not [doc for doc in docs if doc["kind"] == "PersistentVolumeClaim"]
    assert settings(docs)["VLMPROBE_DATA_PVC"] == "shared-datasets"


def test_created_claim_is_shared_and_kept(chart):
    claim = only(render(chart, VALUE_SETS["everything_on"]), "PersistentVolumeClaim")

    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("case", ["defaults", "existing_claim", "separate_namespaces"])
def test_no_secret_unless_create_secret(chart, case):
    docs = render(chart, VALUE_SETS[case])

    assert "Secret" not in {doc["kind"] for doc in docs}
    assert settings(docs)["VLMPROBE_GEMINI_SECRET"] == "vlmprobe-gemini"


def test_created_secret_holds_the_key_and_only_the_secret_does(chart):
    docs = render(chart, VALUE_SETS["create_secret"])
    secret = only(docs, "Secret")
    data = settings(docs)

    assert secret["metadata"]["name"] == data["VLMPROBE_GEMINI_SECRET"]
    assert base64.b64decode(secret["data"][data["VLMPROBE_GEMINI_SECRET_KEY"]]).decode() == FAKE_API_KEY
    encoded = base64.b64encode(FAKE_API_KEY.encode()).decode()
    for doc in docs:
        if doc["kind"] != "Secret":
            dumped = json.dumps(doc)
            assert FAKE_API_KEY not in dumped and encoded not in dumped, doc["kind"]


def test_create_secret_without_a_key_is_refused(chart):
    with pytest.raises(helm.HelmRenderError, match="gemini.apiKey"):
        render(chart, {"gemini": {"createSecret": True}})


def test_gpu_quota_caps_gpu_requests(chart):
    assert only(render(chart, {}), "ResourceQuota")["spec"]["hard"] == {"requests.nvidia.com/gpu": "8"}
    quota = only(render(chart, VALUE_SETS["everything_on"]), "ResourceQuota")

    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "16"}


def test_chart_lints_clean():
    report = helm.lint(CHART_DIR, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_pass_the_schema(chart):
    chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    "values, where",
    [
        ({"gpuPools": "gpu"}, "gpuPools"),
        ({"pods": {"qaGpus": "two"}}, "/pods/qaGpus"),
        ({"data": {"createClaim": "yes"}}, "/data/createClaim"),
        ({"data": {"accessModes": ["RWX"]}}, "/data/accessModes/0"),
        ({"gemini": {"apikey": "x"}}, "apikey"),
        ({"pods": {"probe": {"memoryPerGpu": "32 GB"}}}, "/pods/probe/memoryPerGpu"),
        ({"policy": {"allowedTargetEndpoints": ["vllm:8000"]}}, "/policy/allowedTargetEndpoints/0"),
        ({"priorityClass": {"create": True}}, "priorityClass"),
    ],
)
def test_schema_rejects_unknown_keys_and_bad_types(chart, values, where):
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)


def _value_paths(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return set()
    paths = set()
    for key, child in node.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        # Free-form maps (labels, annotations, nodeSelector) have no fixed keys.
        if isinstance(child, dict) and child:
            paths |= _value_paths(child, path)
    return paths


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, child in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        paths |= _schema_paths(child, path)
    return paths


def test_schema_is_in_step_with_values(chart):
    schema = chart.schema

    assert schema is not None and schema["additionalProperties"] is False
    assert _value_paths(chart.values) == _schema_paths(schema)


def test_every_values_key_has_a_comment_above_it():
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    key = re.compile(r"^\s*[A-Za-z][A-Za-z0-9]*:")
    undocumented = []
    for number, line in enumerate(lines):
        if key.match(line):
            previous = next((p for p in reversed(lines[:number]) if p.strip()), "")
            if not previous.lstrip().startswith("#"):
                undocumented.append(f"{number + 1}: {line.strip()}")
    assert undocumented == []


def test_airflow_values_load_the_settings_and_run_pods_in_the_cluster(chart):
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    data = settings(render(chart, {}))

    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert {"configMapRef": {"name": SETTINGS_CONFIGMAP}} in env_from
    assert {"name": "VLMPROBE_POD_MODE", "value": "cluster"} in values["env"]
    assert not any(item["name"].startswith("VLMPROBE_GEMINI") for item in values["env"])
    # the triggerer polls QA's Batch API jobs: the key from the chart's Secret, by reference only
    (key,) = [e for e in values["triggerer"]["env"] if e["name"] == "GEMINI_API_KEY"]
    chart_values_ = chart.values["gemini"]
    assert key == {"name": "GEMINI_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": chart_values_["existingSecret"], "key": chart_values_["secretKey"]}}}
    assert not any(e["name"] == "GEMINI_API_KEY" for e in values["env"])
    assert values["dags"]["gitSync"]["enabled"] is False
    # Pod rights come from the companion chart's Roles only (no pods/exec); the triggerer waits for pods
    assert values["allowPodLaunching"] is False and values["triggerer"]["enabled"] is True
    chart_values = chart.values
    pod_sc = values["securityContexts"]["pod"]
    # Airflow's tasks share the step pods' group on the data volume
    assert pod_sc["fsGroup"] == chart_values["securityContext"]["sharedGroup"] in pod_sc["supplementalGroups"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert values["securityContexts"]["containers"] == {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}
    assert values["airflowVersion"] == "3.3.2"
    # Workers read step outputs from the same claim, at the same path, as the GPU pods.
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in values["workers"]["extraVolumes"]}
    mounts = {m["name"]: m["mountPath"] for m in values["workers"]["extraVolumeMounts"]}
    assert data["VLMPROBE_DATA_PVC"] in claims.values()
    volume = next(name for name, claim in claims.items() if claim == data["VLMPROBE_DATA_PVC"])
    assert mounts[volume] == data["VLMPROBE_DATA_MOUNT"]


def test_no_api_key_is_committed_under_helm():
    # Google API keys are "AIza" + 35 characters; no key of any form belongs in values files.
    offenders = []
    for path in sorted(HELM_DIR.rglob("*")):
        if path.is_file():
            text = path.read_text()
            if "AIza" in text or re.search(r"apiKey:\s*['\"]?[^'\"\s#]", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _accounts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}


def test_the_airflow_workers_and_the_step_pods_carry_one_storage_identity(chart):
    # defaults: both accounts exist, no identity annotation (local data or keys)
    defaults = _accounts(render(chart, {}))
    step, workers = defaults["vlmprobe-worker"], defaults["airflow-worker"]
    assert not IDENTITY_KEYS & set(step["metadata"].get("annotations") or {})
    assert not IDENTITY_KEYS & set(workers["metadata"].get("annotations") or {})
    assert workers["automountServiceAccountToken"] is True  # the workers launch pods through the API
    assert step["automountServiceAccountToken"] is False
    # with the identity set once in the values, both carry it
    accounts = _accounts(render(chart, VALUE_SETS["everything_on"]))
    expected = {"iam.gke.io/gcp-service-account": GSA, "eks.amazonaws.com/role-arn": ROLE_ARN}
    for name in ("vlmprobe-worker", "airflow-worker"):
        annotations = accounts[name]["metadata"]["annotations"]
        assert {k: annotations[k] for k in IDENTITY_KEYS} == expected, name
    assert accounts["vlmprobe-worker"]["metadata"]["annotations"]["example.com/owner"] == "ml-data"
    # the Airflow chart creates the workers' account instead: this chart leaves it alone
    assert "airflow-worker" not in _accounts(render(chart, {"airflow": {"createWorkerServiceAccount": False}}))


def test_the_airflow_workers_run_as_the_account_the_companion_chart_annotates(chart):
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    workers = values["workers"]["serviceAccount"]
    # the official chart's key (workers.serviceAccount, shared by Celery workers and the
    # KubernetesExecutor's pod template) names the account the companion chart creates
    assert workers["create"] is False
    assert workers["name"] == chart.values["airflow"]["serviceAccount"]
    assert chart.values["airflow"]["createWorkerServiceAccount"] is True
    created = _accounts(render(chart, VALUE_SETS["everything_on"]))[workers["name"]]
    assert IDENTITY_KEYS <= set(created["metadata"]["annotations"])
    # and the account the RoleBinding lets launch pods
    subjects = [s["name"] for s in named(render(chart, {}), "RoleBinding", "-pod-launcher")["subjects"]]
    assert workers["name"] in subjects


def _dns_peers(values: dict[str, Any], chart) -> list[dict[str, Any]] | None:
    spec = only(render(chart, values), "NetworkPolicy")["spec"]
    rule = next(r for r in spec["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"])
    assert {"port": 53, "protocol": "TCP"} in rule["ports"]
    return rule.get("to")


def test_dns_presets_match_how_the_cluster_answers(chart):
    kube_dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    assert _dns_peers({}, chart) == [kube_dns]
    node_local = _dns_peers(VALUE_SETS["node_local_dns"], chart)
    assert node_local == [{"ipBlock": {"cidr": "169.254.20.10/32"}}, kube_dns, {"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert _dns_peers(VALUE_SETS["any_dns"], chart) is None  # no `to`: port 53 anywhere


def test_schema_refuses_an_unknown_dns_preset_or_address(chart):
    with pytest.raises(helm.HelmValuesError, match="/networkPolicy/dns"):
        chart.validate_schema({"networkPolicy": {"dns": "coredns"}})
    with pytest.raises(helm.HelmValuesError, match="/networkPolicy/dnsServerIps/0"):
        chart.validate_schema({"networkPolicy": {"dnsServerIps": ["10.0.0.10/32"]}})


def _connectivity_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only([d for d in docs if d["metadata"]["name"].endswith("-connectivity-check")], "Pod")


def test_the_connectivity_check_is_a_restricted_step_like_pod_for_helm_test(chart):
    from test_pod_security import restricted_violations

    docs = render(chart, {})
    pod = _connectivity_pod(docs)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"  # created by `helm test` only
    assert restricted_violations(pod) == []
    # under the step pods' NetworkPolicy, with their identity and image
    selector = only(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())
    data = settings(docs)
    assert pod["spec"]["serviceAccountName"] == data["VLMPROBE_SERVICE_ACCOUNT"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    [container] = pod["spec"]["containers"]
    assert container["image"] == data["VLMPROBE_WORKER_IMAGE"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"] == ["python", "-m", "vlmprobe.connectivity"]
    assert container["args"] == ["--gemini-url=https://generativelanguage.googleapis.com",
                                 f"--output-uri={data['VLMPROBE_OUTPUT_URI']}", "--timeout-s=10"]
    # a Gemini endpoint and an output URI from the values are what it checks
    other = _connectivity_pod(render(chart, {"gemini": {"baseUrl": "http://gemini-sim:8000"},
                                             "params": {"outputUri": "gs://team/vqa"}}))
    assert other["spec"]["containers"][0]["args"][:2] == ["--gemini-url=http://gemini-sim:8000",
                                                          "--output-uri=gs://team/vqa"]
    assert not [d for d in render(chart, VALUE_SETS["all_off"]) if d["kind"] == "Pod"]
