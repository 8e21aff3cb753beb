"""A policy scanner from PyPI over what reaches a cluster: zero failures, every skip justified.

checkov scans the chart's rendered manifests, the DAG's rendered probe and QA pods, and both
Dockerfiles; hadolint lints the Dockerfiles. Skips live next to what they excuse: the pods'
``checkov.io/skipN`` annotations (``operators.gpu_pod.POLICY_SCAN_SKIPS``) and the
``checkov:skip`` / ``hadolint ignore`` comments in the Dockerfiles, each with its reason.

Each scan also gets a known-bad input (the provider's XCom sidecar pod, a careless Dockerfile),
which must fail: the harness can see a failure. The scanners live in their own venv
(``.venv-scan``, built by ``make test``); run directly with pytest the tests skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import helm_python as helm
import pendulum
import pytest
import yaml
from kubernetes.client import ApiClient

from conftest import REPO
from podrender import render_pod

SCAN_VENV = Path(os.environ.get("VLMPROBE_SCAN_VENV", REPO / ".venv-scan"))
if not SCAN_VENV.is_absolute():
    SCAN_VENV = REPO / SCAN_VENV
CHECKOV = SCAN_VENV / "bin" / "checkov"
HADOLINT = SCAN_VENV / "bin" / "hadolint"
DOCKERFILES = [REPO / "images" / "worker" / "Dockerfile", REPO / "images" / "airflow" / "Dockerfile"]
RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
CHART_VALUE_SETS = {
    "defaults": {},
    "everything_on": {"rbac": {"triggererDeletesPods": True}, "gemini": {"baseUrl": "https://gemini.internal"},
                      "policy": {"allowedUriPrefixes": ["/data"]}, "gpuQuota": {"gpus": 16}},
}
BAD_DOCKERFILE = "FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n"

pytestmark = pytest.mark.skipif(
    not CHECKOV.exists() and not os.environ.get("VLMPROBE_SCAN_VENV"),
    reason=f"no policy scanners in {SCAN_VENV}: `make test` (or `make scan`) installs them",
)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # checkov fetches check guidelines from its vendor unless told not to; no network here.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _checkov(args: list[str], cwd: Path) -> dict:
    proc = _run([str(CHECKOV), *args, "--skip-download", "--output", "json"], cwd)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: some check failed
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    return {
        "passed": [c for r in reports for c in r["results"]["passed_checks"]],
        "failed": [c for r in reports for c in r["results"]["failed_checks"]],
        "skipped": [c for r in reports for c in r["results"]["skipped_checks"]],
        "errors": [e for r in reports for e in r["results"].get("parsing_errors", [])],
    }


def _where(check: dict) -> str:
    return f"{check['check_id']} {check['resource']} ({Path(check['file_path']).name})"


@pytest.fixture(scope="module")
def manifests(dag, tmp_path_factory) -> Path:
    """The chart rendered with two value sets, the DAG's pods, and one known-bad pod, as YAML files."""
    from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import add_xcom_sidecar

    out = tmp_path_factory.mktemp("manifests")
    with helm.Chart.load(REPO / "helm" / "vlmprobe") as chart:
        for case, values in CHART_VALUE_SETS.items():
            rendered = chart.render(values, name="vlmprobe", namespace="vlmprobe")
            docs = [d for path, text in rendered.items() if not path.endswith("NOTES.txt")
                    for d in yaml.safe_load_all(text) if d]
            (out / f"chart-{case}.yaml").write_text(yaml.safe_dump_all(docs))
    for task_id, conf, mapped in (("probe", {}, None), ("qa.generate", {}, {"shard_index": "0"})):
        pod, pod_dict = render_pod(dag, task_id, RUN, conf, mapped)
        (out / f"pod-{task_id}.yaml").write_text(yaml.safe_dump(pod_dict))
    # What the probe pod was before: the XCom sidecar, no annotations of ours.
    pod.metadata.annotations = {}
    bad = ApiClient().sanitize_for_serialization(add_xcom_sidecar(pod, sidecar_container_image="alpine"))
    bad["metadata"]["name"] = "known-bad"
    (out / "known-bad.yaml").write_text(yaml.safe_dump(bad))
    return out


def test_checkov_passes_the_chart_and_the_dag_pods(manifests):
    result = _checkov(["--directory", str(manifests), "--framework", "kubernetes"], manifests)
    assert result["errors"] == []
    scanned = {Path(c["file_path"]).name for c in result["passed"]}
    assert {"chart-defaults.yaml", "chart-everything_on.yaml", "pod-probe.yaml", "pod-qa.generate.yaml"} <= scanned
    # the chart's `helm test` pod (the connectivity check) is scanned like the step pods
    assert any(c["resource"].endswith("-connectivity-check") for c in result["passed"])
    failed = [_where(c) for c in result["failed"] if Path(c["file_path"]).name != "known-bad.yaml"]
    assert failed == []
    # the harness sees failures: the sidecar pod fails the checks it was refused for
    bad = {c["check_id"] for c in result["failed"] if Path(c["file_path"]).name == "known-bad.yaml"}
    assert {"CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_22"} <= bad  # privilege escalation, NET_RAW, read-only root
    for check in result["skipped"]:
        assert len(check["check_result"].get("suppress_comment") or "") > 20, f"unjustified skip {_where(check)}"


def test_checkov_passes_both_dockerfiles(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    args = [a for path in [*DOCKERFILES, bad] for a in ("--file", str(path))]
    result = _checkov([*args, "--framework", "dockerfile"], REPO)
    assert result["errors"] == []
    assert {Path(c["file_path"]).parent.name for c in result["passed"]} >= {"worker", "airflow"}
    assert [_where(c) for c in result["failed"] if Path(c["file_abs_path"]) != bad] == []
    assert any(Path(c["file_abs_path"]) == bad for c in result["failed"])
    for check in result["skipped"]:
        assert len(check["check_result"].get("suppress_comment") or "") > 20, f"unjustified skip {_where(check)}"


def test_hadolint_passes_both_dockerfiles(tmp_path):
    proc = _run([str(HADOLINT), "--format", "json", *map(str, DOCKERFILES)], REPO)
    assert json.loads(proc.stdout or "[]") == [] and proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    proc = _run([str(HADOLINT), "--format", "json", str(bad)], REPO)
    assert proc.returncode != 0 and json.loads(proc.stdout)
    # every ignore in the real files says why, in the comment block just above it
    for dockerfile in DOCKERFILES:
        lines = dockerfile.read_text().splitlines()
        for number, line in enumerate(lines):
            if "hadolint ignore" in line:
                above = []
                for previous in reversed(lines[:number]):
                    if not previous.startswith("#"):
                        break
                    above.append(previous)
                assert len(" ".join(above)) > 40, f"unjustified ignore at {dockerfile}:{number + 1}"
