"""The dataset card publish writes, and the provenance in the manifest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from fakes import RUN_DATE, fake_probe
from vlmprobe.config import PublishConfig, QAConfig, SampleConfig
from vlmprobe.contracts import Manifest, ProbeSuccess
from vlmprobe.io import RunLayout
from vlmprobe.publish.run import publish
from vlmprobe.qa.dataset import FEATURES
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys


def _published(tmp_path, demo_parquet, **publish_kw) -> RunLayout:
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:3": 4, "size:big": 2})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=2))
    for i in range(2):
        run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=i))
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE, **publish_kw))
    return lay


def _card(lay: RunLayout) -> tuple[dict, str]:
    text = Path(lay.dataset_card).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_the_card_is_a_hugging_face_dataset_card(tmp_path, demo_parquet, gemini_sim):
    import datasets
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    lay = _published(tmp_path, demo_parquet)
    m = Manifest.read(lay.manifest)
    head, body = _card(lay)
    assert head["license"] == "other" and head["task_categories"] == ["visual-question-answering"]
    assert head["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "qa/parquet/*.parquet"}]}]
    # the features as datasets itself lists them in a card, and the card as datasets reads it
    assert head["dataset_info"]["features"] == datasets.Features.from_dict(FEATURES)._to_yaml_list()
    card_data = DatasetCardData(**head)
    info = DatasetInfosDict.from_dataset_card_data(card_data)["default"]
    assert info.features == datasets.Features.from_dict(FEATURES)
    assert info.splits["train"].num_examples == m.dataset.rows == m.qa.counts["items"]
    assert MetadataConfigs.from_dataset_card_data(card_data)["default"]["data_files"][0]["path"] == \
        "qa/parquet/*.parquet"
    assert m.outputs.dataset_card == lay.dataset_card
    # the sections a reader looks for, with this run's figures
    for section in ("## Counts", "## Failure keys", "## Models and versions", "## How to load it", "## Columns",
                    "## Provenance", "## Limitations", "## Licence"):
        assert section in body, section
    assert f"**QA items (rows)** | **{m.dataset.rows}**" in body
    assert "| `color:red` | 5 | 5 |" in body and "Prompts version `p1`" in body
    assert f'data_dir="{lay.qa_parquet_dir}"' in body and "read_parquet(" in body
    assert "**synthetic**" in body  # the teacher was the simulator (GEMINI_BASE_URL)
    assert "VLMPROBE_DATASET_LICENSE" in body


def test_the_deployment_sets_the_licence(tmp_path, demo_parquet, gemini_sim, monkeypatch):
    monkeypatch.setenv("VLMPROBE_DATASET_LICENSE", "cc-by-4.0")
    lay = _published(tmp_path, demo_parquet)
    head, body = _card(lay)
    assert head["license"] == "cc-by-4.0" and Manifest.read(lay.manifest).dataset.license == "cc-by-4.0"
    assert "not set by this deployment" not in body


def test_a_rerun_removes_the_card_and_a_failed_run_gets_none(tmp_path, demo_parquet, gemini_sim, monkeypatch):
    from vlmprobe.publish.run import RunFailed
    from vlmprobe.sim import GeminiSimulator

    lay = _published(tmp_path, demo_parquet)
    assert (tmp_path / RUN_DATE / "README.md").exists()
    with GeminiSimulator(port=0, rate_503=1.0, seed=5) as sim:  # the shard's rerun gets only 503s
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=1, max_attempts=1))
    assert not (tmp_path / RUN_DATE / "README.md").exists()  # it described the earlier items
    with pytest.raises(RunFailed):  # the 503 error rows are more than max_error_rate of the failures
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert not (tmp_path / RUN_DATE / "README.md").exists()
    assert Manifest.read(lay.manifest_failed).outputs.dataset_card is None


def test_the_manifest_names_the_code_the_inputs_and_the_conf(tmp_path, demo_parquet, gemini_sim, monkeypatch):
    from vlmprobe import provenance

    provenance.code_version.cache_clear()
    monkeypatch.setenv("VLMPROBE_GIT_SHA", "0123456789abcdef0123456789abcdef01234567")
    lay = _published(tmp_path, demo_parquet, conf_json='{"preset": "4gpu", "concurrency": 8}')
    provenance.code_version.cache_clear()
    p = Manifest.read(lay.manifest).provenance
    assert p.code.git_commit == "0123456789abcdef0123456789abcdef01234567" and p.code.source == "image"
    assert p.conf == {"preset": "4gpu", "concurrency": 8}
    assert p.prompts_version == "p1" and p.template_version == "v1" and p.teacher_model == "gemini-2.5-flash"
    # the fake probe's _SUCCESS.json predates fingerprints: the file names alone, never lost
    assert [f.uri for f in p.input_files] == ProbeSuccess.read(lay.probe_success).input_files
    assert p.worker_images == [] and p.teacher_endpoint == gemini_sim.base_url


def test_the_code_version_comes_from_the_image_else_the_checkout_else_unknown(monkeypatch, tmp_path):
    from vlmprobe import provenance

    monkeypatch.setenv("VLMPROBE_GIT_SHA", "unknown")  # the Dockerfiles' default: no commit was given
    monkeypatch.setattr(provenance, "_checkout_commit", lambda folder: "f" * 40)
    provenance.code_version.cache_clear()
    try:
        assert (provenance.code_version().git_commit, provenance.code_version().source) == ("f" * 40, "checkout")
        monkeypatch.setattr(provenance, "_checkout_commit", lambda folder: None)
        provenance.code_version.cache_clear()
        assert (provenance.code_version().git_commit, provenance.code_version().source) == ("unknown", "unknown")
    finally:
        provenance.code_version.cache_clear()


def test_a_checkouts_commit_is_its_head(tmp_path):
    from vlmprobe.provenance import _checkout_commit

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / "pkg").mkdir()
    assert _checkout_commit(tmp_path / "pkg") == head
    assert _checkout_commit(tmp_path.parent / "not-a-folder") is None


def test_the_probe_plan_fingerprints_every_file(tmp_path, demo_parquet):
    import os

    from vlmprobe.probe.plan import WorkPlan, plan_work
    from vlmprobe.io import list_files

    files = list_files(demo_parquet, ".parquet") + [str(tmp_path / "gone.parquet")]
    plan = plan_work(files)
    by_uri = {f["uri"]: f for f in plan.fingerprints}
    assert list(by_uri) == files
    assert all(by_uri[u]["size"] == os.path.getsize(u) and by_uri[u]["mtime"] for u in files[:-1])
    assert by_uri[files[-1]] == {"uri": files[-1], "size": None, "mtime": None}  # lost: named, not dropped
    assert WorkPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).fingerprints == plan.fingerprints  # broadcast


def test_files_written_before_issue_17_still_read(tmp_path, demo_parquet, gemini_sim):
    from vlmprobe.contracts import QAShardStats
    from vlmprobe.io import read_json

    lay = _published(tmp_path, demo_parquet)
    manifest = read_json(lay.manifest)
    outputs = {k: v for k, v in manifest["outputs"].items() if k not in ("qa_parquet", "dataset_card")}
    old = {**{k: v for k, v in manifest.items() if k not in ("dataset", "provenance")}, "outputs": outputs}
    m = Manifest.from_json(old, "old manifest.json")
    assert m.provenance is None and m.dataset is None and m.outputs.qa_parquet == []
    stats = {k: v for k, v in read_json(lay.qa_stats(0)).items() if k != "parquet"}
    assert QAShardStats.from_json(stats, "old stats").parquet is None


def test_pod_image_records_are_ordered_and_a_foreign_one_is_left_out(tmp_path):
    from fakes import fake_success
    from vlmprobe.provenance import run_provenance

    success = fake_success(RunLayout(str(tmp_path), RUN_DATE), [], input_files=["/in/a.parquet"])
    records = [{"step": "qa", "map_index": 1, "image": "w:1", "image_id": "sha256:b"},
               {"step": "probe", "map_index": -1, "image": "w:1", "image_id": "sha256:a"},
               {"pod": "from another version"}]
    p = run_provenance(success, None, records)
    assert [(w.step, w.image_id) for w in p.worker_images] == [("probe", "sha256:a"), ("qa", "sha256:b")]
    assert p.conf is None and [f.uri for f in p.input_files] == ["/in/a.parquet"]
