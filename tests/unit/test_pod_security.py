"""Every pod the DAG creates passes Pod Security Standards "restricted", sidecars included.

``restricted_violations`` checks the baseline and restricted controls of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ on a pod as the API
server receives it (camelCase dict), for every init, main and ephemeral container.
"""

from __future__ import annotations

import pendulum
import pytest

from podrender import render_pod

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
PODS = [("probe", {}, None), ("probe", {"nproc_per_node": 2}, None), ("qa.generate", {}, {"shard_index": "0"}),
        ("qa.submit", {"qa_mode": "batch"}, {"shard_index": "0"})]

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(spec):
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            yield container


def restricted_violations(pod: dict) -> list[str]:
    """What keeps ``pod`` out of a namespace labelled ``pod-security.kubernetes.io/enforce: restricted``."""
    spec, bad = pod["spec"], []
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"pod: {field}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad.append(f"pod: sysctl {sysctl['name']}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        bad.append("pod: seccomp Unconfined")
    if psc.get("runAsUser") == 0:
        bad.append("pod: runAsUser 0")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("pod: hostProcess")
    if (psc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
        bad.append("pod: seLinux type")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append("pod: appArmor Unconfined")
    for c in _containers(spec):
        name, sc = c["name"], c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities do not drop ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"} or added - BASELINE_CAPABILITIES:
            bad.append(f"{name}: adds capabilities {sorted(added)}")
        non_root = sc["runAsNonRoot"] if "runAsNonRoot" in sc else psc.get("runAsNonRoot")
        if non_root is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccomp profile {seccomp!r}")
        if any(port.get("hostPort") for port in c.get("ports") or []):
            bad.append(f"{name}: hostPort")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{name}: procMount")
        if (sc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
            bad.append(f"{name}: seLinux type")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{name}: appArmor Unconfined")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{name}: hostProcess")
    return bad


@pytest.mark.parametrize("task_id,conf,mapped", PODS)
def test_every_container_of_every_dag_pod_is_restricted(dag, task_id, conf, mapped):
    _, pod = render_pod(dag, task_id, RUN, conf, mapped)
    assert list(_containers(pod["spec"])), "no containers rendered"
    assert restricted_violations(pod) == []


@pytest.mark.parametrize("task_id,conf,mapped", PODS)
def test_read_only_root_with_writable_scratch_and_no_api_token(dag, task_id, conf, mapped):
    _, pod = render_pod(dag, task_id, RUN, conf, mapped)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert pod["spec"]["automountServiceAccountToken"] is False
    for c in _containers(pod["spec"]):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["runAsUser"] >= 10000  # a numeric uid: the image's user is a name
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")
                    and "emptyDir" in volumes[m["name"]]}
        assert {"/tmp", "/dev/shm", "/var/cache/vlmprobe"} <= writable
        env = {e["name"]: e.get("value") for e in c["env"]}
        # every place the ML stack writes to lies on a writable volume
        data_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
        for name in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME"):
            assert any(env[name] == p or env[name].startswith(p + "/") for p in writable | {data_mount}), name
        res = c["resources"]
        assert res["requests"] == res["limits"] and {"cpu", "memory"} <= set(res["limits"])


def test_pods_share_one_group_on_the_data_volume(dag):
    for task_id, mapped in (("probe", None), ("qa.generate", {"shard_index": "0"})):
        _, pod = render_pod(dag, task_id, RUN, {}, mapped)
        psc = pod["spec"]["securityContext"]
        assert psc["fsGroup"] == psc["runAsGroup"] == 10001 and 10001 in psc["supplementalGroups"]
        assert psc["fsGroupChangePolicy"] == "OnRootMismatch"


def test_the_check_catches_the_providers_xcom_sidecar(dag):
    # What the pods looked like with do_xcom_push=True: the sidecar the kubelet refused.
    from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import add_xcom_sidecar
    from kubernetes.client import ApiClient

    pod, _ = render_pod(dag, "probe", RUN)
    with_sidecar = ApiClient().sanitize_for_serialization(add_xcom_sidecar(pod, sidecar_container_image="alpine"))
    problems = restricted_violations(with_sidecar)
    assert any(p.startswith("airflow-xcom-sidecar: allowPrivilegeEscalation") for p in problems)
    assert any(p.startswith("airflow-xcom-sidecar: capabilities") for p in problems)
