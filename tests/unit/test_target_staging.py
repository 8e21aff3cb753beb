"""The target pinned to a commit (issue 15): the sha's form, one download per revision under a lock
(a fake hub: nothing can be downloaded here), offline pods, the revision in the fingerprint and _SUCCESS.json."""

from __future__ import annotations

import os
import shutil
import threading
import time
import types

import pendulum
import pytest

from vlmprobe.config import ProbeConfig, QAConfig
from vlmprobe.errors import UsageError
from vlmprobe.vlm.staging import revision_problem, stage_target, staged_path
from fakes import SIM_PLAN

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")


class FakeHub:
    """``huggingface_hub.snapshot_download`` without a network: copies a folder into ``local_dir``, slowly.

    Records each call and whether offline mode was lifted for it; fails the first ``fail_first`` calls
    half way (one file written), as a killed download would.
    """

    def __init__(self, source: str | None = None, delay_s: float = 0.2, fail_first: int = 0,
                 revisions: tuple[str, ...] = (SHA,)) -> None:
        self.source, self.delay_s, self.fail_first, self.revisions = source, delay_s, fail_first, revisions
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, repo_id, *, revision=None, local_dir=None, **kw):
        from huggingface_hub import constants
        from huggingface_hub.errors import RevisionNotFoundError

        with self._lock:
            self.calls.append({"repo_id": repo_id, "revision": revision, "local_dir": local_dir,
                               "offline": constants.HF_HUB_OFFLINE, "found": sorted(os.listdir(local_dir))
                               if os.path.isdir(local_dir) else []})
            n = len(self.calls)
        if revision not in self.revisions:
            import httpx

            url = f"https://huggingface.co/api/models/{repo_id}/revision/{revision}"
            raise RevisionNotFoundError(f"{repo_id} has no revision {revision}",
                                        response=httpx.Response(404, request=httpx.Request("GET", url)))
        os.makedirs(local_dir, exist_ok=True)
        with open(os.path.join(local_dir, "weights.part"), "w") as f:
            f.write("half")
        time.sleep(self.delay_s)
        if n <= self.fail_first:
            raise ConnectionError("connection reset by peer")
        if self.source:
            shutil.copytree(self.source, local_dir, dirs_exist_ok=True)
        else:
            with open(os.path.join(local_dir, "config.json"), "w") as f:
                f.write("{}")
        return local_dir


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as the step pods have it (huggingface_hub read it at import: set its constant too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _hub(monkeypatch, hub: FakeHub) -> FakeHub:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    return hub


# -- the sha's form, and where a revision belongs -----------------------------------------------------

@pytest.mark.parametrize("model,revision,problem", [
    ("llava-hf/llava-1.5-7b-hf", SHA, None),
    ("llava-hf/llava-1.5-7b-hf", "", "hub id without target_revision"),
    ("llava-hf/llava-1.5-7b-hf", None, "hub id without target_revision"),
    ("llava-hf/llava-1.5-7b-hf", "main", "is not a commit sha"),
    ("llava-hf/llava-1.5-7b-hf", SHA[:12], "is not a commit sha"),
    ("llava-hf/llava-1.5-7b-hf", SHA.upper(), "is not a commit sha"),
    ("/data/models/tiny", "", None),
    ("/data/models/tiny", SHA, "is a local folder"),
    ("openai:http://vllm:8000/v1#llava", "", None),
    ("openai:http://vllm:8000/v1#llava", SHA, "is an openai: target"),
])
def test_a_hub_id_needs_a_commit_sha_and_nothing_else_takes_one(model, revision, problem):
    got = revision_problem(model, revision)
    assert (got is None) if problem is None else (problem in got), got


def test_the_step_configs_check_the_form_and_refuse_a_revision_nothing_can_use():
    base = dict(input_uri="/in", output_uri="/out", run_date="2026-11-25")
    assert ProbeConfig(**base, target_model="org/model", target_revision=SHA).target_revision == SHA
    with pytest.raises(ValueError, match="is not a commit sha"):
        ProbeConfig(**base, target_model="org/model", target_revision="v1.0")
    with pytest.raises(ValueError, match="is a local folder"):
        QAConfig(output_uri="/out", run_date="2026-11-25", shard_index=0, target_model="/models/tiny",
                 target_revision=SHA)
    # a hub id without one is refused where the target is loaded (and in the probe's preflight)
    with pytest.raises(UsageError, match="hub id without target_revision"):
        from vlmprobe.vlm import load_target

        load_target("org/model")


def test_the_preflight_refuses_an_unpinned_hub_id_before_the_pod(tmp_path, demo_parquet):
    from airflow.sdk.exceptions import AirflowFailException

    from vlmprobe.params import defaults
    from vlmprobe.preflight import preflight

    run = types.SimpleNamespace(data_interval_start=RUN, logical_date=RUN, run_after=None, conf={})
    params = {**defaults(), "input_uri": demo_parquet, "output_uri": str(tmp_path / "out")}
    with pytest.raises(AirflowFailException, match="'llava-hf/llava-1.5-7b-hf' is a Hugging Face hub id without "
                                                   "target_revision.*VLMPROBE_PARAM_DEFAULTS"):
        preflight({"params": params, "dag_run": run})
    preflight({"params": {**params, "target_revision": SHA}, "dag_run": run})  # pinned: passes


# -- staging ---------------------------------------------------------------------------------------

def test_ranks_staging_at_once_download_once_under_the_lock(tmp_path, monkeypatch, offline):
    hub = _hub(monkeypatch, FakeHub(delay_s=0.3))
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(stage_target("org/model", SHA, str(tmp_path))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = staged_path("org/model", SHA, str(tmp_path))
    assert got == [final] * 4 and final == str(tmp_path / "org--model" / SHA)
    assert len(hub.calls) == 1  # the other three waited on the lock and found the folder
    assert hub.calls[0]["revision"] == SHA and hub.calls[0]["local_dir"] == final + ".partial"
    assert hub.calls[0]["offline"] is False  # lifted for the download only ...
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is True  # ... and back for from_pretrained
    assert sorted(os.listdir(final)) == ["config.json", "weights.part"] and not os.path.exists(final + ".partial")
    stage_target("org/model", SHA, str(tmp_path))  # a later pod: staged, nothing downloaded
    assert len(hub.calls) == 1


def test_a_killed_download_leaves_no_staged_folder_and_the_retry_resumes(tmp_path, monkeypatch, offline):
    from vlmprobe.vlm import TargetLoadError

    hub = _hub(monkeypatch, FakeHub(delay_s=0, fail_first=1))
    with pytest.raises(TargetLoadError, match="could not download org/model@.*a retry resumes"):
        stage_target("org/model", SHA, str(tmp_path))
    final = staged_path("org/model", SHA, str(tmp_path))
    assert not os.path.exists(final) and os.path.exists(final + ".partial")  # never a torn folder
    assert stage_target("org/model", SHA, str(tmp_path)) == final
    assert hub.calls[1]["found"] == ["weights.part"]  # the second attempt continued in the same folder
    assert os.path.isfile(os.path.join(final, "config.json"))


def test_an_unknown_commit_is_a_deterministic_error(tmp_path, monkeypatch, offline):
    _hub(monkeypatch, FakeHub(delay_s=0))
    with pytest.raises(UsageError, match=f"'org/model' has no commit {OTHER_SHA}: check target_revision"):
        stage_target("org/model", OTHER_SHA, str(tmp_path))
    assert not os.path.exists(staged_path("org/model", OTHER_SHA, str(tmp_path)))


def test_a_hub_target_loads_its_staged_revision_offline(tmp_path, tiny_llava, monkeypatch, offline):
    from vlmprobe.vlm import load_target

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    hub = _hub(monkeypatch, FakeHub(source=tiny_llava, delay_s=0))
    target = load_target("org/tiny-llava", revision=SHA, device="cpu", max_new_tokens=2)
    assert target.name == "org/tiny-llava"
    assert len(hub.calls) == 1
    assert os.path.isfile(tmp_path / "hf-cache" / "vlmprobe-targets" / "org--tiny-llava" / SHA / "config.json")
    load_target("org/tiny-llava", revision=SHA, device="cpu")  # the next rank or pod: no download
    assert len(hub.calls) == 1


# -- the pods ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("task_id,mapped", [("probe", None), ("qa.generate", {"shard_index": "0"})])
def test_rendered_with_defaults_the_pods_are_offline_and_get_the_revision(dag, task_id, mapped):
    from podrender import render_pod

    _, pod = render_pod(dag, task_id, RUN, None, mapped)
    (main,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].endswith("/hf-cache")
    args = main["args"]
    assert "--target-revision" in args and args[args.index("--target-revision") + 1] == ""  # the default: none
    _, pinned = render_pod(dag, task_id, RUN, {"target_revision": SHA}, mapped)
    (main,) = [c for c in pinned["spec"]["containers"] if c["name"] == "base"]
    assert main["args"][main["args"].index("--target-revision") + 1] == SHA


def test_local_pod_mode_runs_offline_too(dag, monkeypatch):
    from operators import DeploymentSettings, GpuPodOperator
    from podrender import offline_context

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-secret")
    op = GpuPodOperator(task_id="p", settings=DeploymentSettings(pod_mode="local"), cmds=["true"])
    ctx = offline_context(dag, op, RUN)
    op.render_template_fields(ctx)
    _, env = op.local_command(ctx)
    assert env["HF_HUB_OFFLINE"] == "1"


# -- the fingerprint and _SUCCESS.json ---------------------------------------------------------------------

def test_another_revision_is_another_journal(tmp_path, caplog):
    from vlmprobe.io.journal import Journal
    from vlmprobe.probe.resume import fingerprint_settings, keep_or_discard

    base = dict(input_uri="/in", output_uri=str(tmp_path), run_date="2026-11-25", target_model="org/model")
    first = fingerprint_settings(ProbeConfig(**base, target_revision=SHA))
    second = fingerprint_settings(ProbeConfig(**base, target_revision=OTHER_SHA))
    assert first["target_revision"] == SHA and first != second
    journal_dir = str(tmp_path / "_journal")
    keep_or_discard(journal_dir, first)
    with Journal(journal_dir, "rank-00000") as j:
        j.append({"uri": "f", "row": 0})
    assert keep_or_discard(journal_dir, first)  # same revision: the earlier rows apply
    assert keep_or_discard(journal_dir, second) == []  # a new commit: nothing old matches
    assert f"target_revision '{SHA}' -> '{OTHER_SHA}'" in caplog.text


def test_a_probe_of_a_hub_target_records_its_revision(tmp_path, demo_parquet, tiny_llava, gemini_sim, monkeypatch,
                                                      offline):
    from vlmprobe.io import read_json
    from vlmprobe.probe.run import main

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    hub = _hub(monkeypatch, FakeHub(source=tiny_llava, delay_s=0))
    cfg = ProbeConfig(input_uri=demo_parquet, output_uri=str(tmp_path / "out"), run_date="2026-11-25",
                      target_model="org/tiny-llava", target_revision=SHA, failure_batch_size=8, concurrency=4,
                      parquet_sample_size=1, **SIM_PLAN)
    success = read_json(main(cfg)["success_uri"])
    assert success["target_revision"] == SHA and success["target_model"] == "org/tiny-llava"
    assert len(hub.calls) == 1 and success["counts"]["rows"] == 12
