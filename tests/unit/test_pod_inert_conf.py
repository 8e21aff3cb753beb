"""A conf value cannot expand ``$(VAR)`` in a pod, and may only name what the deployment allows."""

from __future__ import annotations

import pendulum
import pytest

from operators.policy import (
    ConfPolicyError,
    check_conf_policy,
    escape_dollars,
    expand_like_kubernetes,
)
from kubernetes.client import ApiClient

from podrender import render_pod, render_task, resolve_params

RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")
PROBE = "$(GEMINI_API_KEY)"
SECRET_VALUE = "AIza-the-real-key-would-be-here"
POD_TASKS = [("probe", None), ("qa.generate", {"shard_index": "0"}), ("qa.submit", {"shard_index": "0"})]
CLOSED_FORMS = {"target_revision": r"^([0-9a-f]{40})?$",  # string params whose pattern refuses any "$(…)"
                "teacher_project": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}


def _probe_conf(dag):
    """``$(GEMINI_API_KEY)`` in every free-text string param (inside a valid value where the param needs one)."""
    conf = {}
    for name in dag.params:
        schema = dag.params.get_param(name).schema
        if schema.get("type") != "string" or "enum" in schema:
            continue
        default = dag.params.get_param(name).value
        for candidate in (PROBE, f"{default}/{PROBE}", f"{default}#{PROBE}"):
            try:
                resolve_params(dag, dag.get_task("probe"), {name: candidate})
            except Exception:
                continue
            conf[name] = candidate
            break
        else:
            if name in CLOSED_FORMS:  # its pattern admits no "$" at all: nothing in it can expand
                assert schema["pattern"] == CLOSED_FORMS[name]
                continue
            pytest.fail(f"string param {name} accepts no value carrying {PROBE}")
    return conf


def _env_lookup(container):
    """The container's env as the kubelet resolves it, the Secret-backed key included."""
    resolved = {}
    for var in container.get("env") or []:
        if "valueFrom" in var:
            resolved[var["name"]] = SECRET_VALUE
        else:
            resolved[var["name"]] = expand_like_kubernetes(var.get("value", ""), resolved.get)
    return resolved


def test_every_string_param_carries_the_probe(dag):
    conf = _probe_conf(dag)
    assert {"input_uri", "output_uri", "target_model", "gemini_model"} <= set(conf)


@pytest.mark.parametrize("task_id,mapped", POD_TASKS)
def test_no_rendered_pod_can_expand_a_conf_value(dag, task_id, mapped):
    conf = _probe_conf(dag)
    task, ctx = render_task(dag, task_id, RUN, conf, mapped)
    pod = ApiClient().sanitize_for_serialization(task.build_pod_request_obj(ctx, dry_run=True))
    for container in pod["spec"]["containers"]:
        env = _env_lookup(container)
        assert env["GEMINI_API_KEY"] == SECRET_VALUE  # the lookup would leak it if anything expanded
        command = [expand_like_kubernetes(a, env.get) for a in container.get("command") or []]
        args = [expand_like_kubernetes(a, env.get) for a in container.get("args") or []]
        others = [v for k, v in env.items() if k != "GEMINI_API_KEY"]
        assert not any(SECRET_VALUE in text for text in [*command, *args, *others])
        # the process gets exactly the text the templates rendered, the probes included
        assert command == [str(a) for a in task.cmds] and args == [str(a) for a in task.arguments]
    assert sum(a.count(PROBE) for a in args) >= 2


def test_without_escaping_the_same_pod_would_leak(dag):
    # The check above can fail: the same args unescaped expand to the key.
    conf = _probe_conf(dag)
    _, pod = render_pod(dag, "probe", RUN, conf)
    container = pod["spec"]["containers"][0]
    env = _env_lookup(container)
    unescaped = [a.replace("$$", "$") for a in container["args"]]
    assert any(SECRET_VALUE in expand_like_kubernetes(a, env.get) for a in unescaped)


@pytest.mark.parametrize("text", ["", "plain", "$", "$$", "$(", "$()", "$(A", "$(GEMINI_API_KEY)", "$$(X)",
                                  "a$b$", "$(A)$(B)", "${HOME}", "x$(Y)z$", "$$$(Z)", "(a)$)"])
def test_escape_then_kubernetes_expansion_is_identity(text):
    env = {"A": "1", "B": "2", "X": "3", "Y": "4", "Z": "5", "GEMINI_API_KEY": SECRET_VALUE}
    assert expand_like_kubernetes(escape_dollars(text), env.get) == text


@pytest.mark.parametrize("text,expected", [
    ("$(A)", "1"), ("$$(A)", "$(A)"), ("$(MISSING)", "$(MISSING)"), ("$(A", "$(A"), ("a$b", "a$b"),
    ("$$", "$"), ("$", "$"), ("$(A)$(A)", "11"),
])
def test_expansion_matches_kubernetes_rules(text, expected):
    assert expand_like_kubernetes(text, {"A": "1"}.get) == expected


# -- what a conf may name ----------------------------------------------------------------------
PREFIXES = ("/data", "gs://team-bucket/vqa", "s3://lake/images/")


@pytest.mark.parametrize("uri", ["/data/input", "/data", "file:///data/input/{run_date}", "gs://team-bucket/vqa",
                                 "gs://team-bucket/vqa/2026-11-25/", "s3://lake/images/x"])
def test_allowed_uris_pass(uri):
    check_conf_policy({"input_uri": uri}, allowed_uri_prefixes=PREFIXES)


@pytest.mark.parametrize("uri", ["/database", "/data/../etc", "/etc/passwd", "gs://team-bucket/vqa-other",
                                 "gs://team-bucket", "gs://team-bucket/vqa/../private", "s3://lake/imagesX",
                                 "relative/data"])
def test_uris_outside_the_prefixes_are_refused(uri):
    with pytest.raises(ConfPolicyError, match="output_uri"):
        check_conf_policy({"output_uri": uri}, allowed_uri_prefixes=PREFIXES)


ENDPOINTS = ("http://vllm.ml.svc:8000/v1", "https://llm.example.com")


@pytest.mark.parametrize("target", ["openai:http://vllm.ml.svc:8000/v1#llava", "openai:https://llm.example.com/v1#m",
                                    "llava-hf/llava-1.5-7b-hf", "/data/models/tiny"])
def test_allowed_targets_pass(target):
    check_conf_policy({"target_model": target}, allowed_target_endpoints=ENDPOINTS)


@pytest.mark.parametrize("target", ["openai:http://evil.example:8000/v1#m", "openai:http://vllm.ml.svc:8000@evil/v1#m",
                                    "openai:http://vllm.ml.svc:8001/v1#m", "openai:http://vllm.ml.svc:8000/v2#m",
                                    "openai:https://llm.example.com.evil.io/v1#m"])
def test_other_target_endpoints_are_refused(target):
    with pytest.raises(ConfPolicyError, match="target_model endpoint"):
        check_conf_policy({"target_model": target}, allowed_target_endpoints=ENDPOINTS)


def test_empty_lists_allow_anything():
    check_conf_policy({"input_uri": "gs://anywhere", "target_model": "openai:http://x:1/v1#m"})
