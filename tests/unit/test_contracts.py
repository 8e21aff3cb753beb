"""The steps' contracts (vlmprobe.contracts): each file round-trips through its model, a version this
code does not read stops a step with one line (exit 2), and nothing else parses these files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import REPO
from fakes import RUN_DATE, fake_probe, fake_qa_stats
from vlmprobe.cli import main
from vlmprobe.config import ProbeConfig, PublishConfig, SampleConfig
from vlmprobe.contracts import (CONTRACTS, JournalHeader, Manifest, ProbeJournalHeader, ProbeSuccess, QACounts,
                                QAJournalHeader, QAShardStats, ShardPlan)
from vlmprobe.errors import InputError
from vlmprobe.io import JsonlWriter, RunLayout, read_json, write_json
from vlmprobe.probe.resume import fingerprint_settings, keep_or_discard
from vlmprobe.publish.run import publish
from vlmprobe.sample.run import sample_keys


def _published_run(out: str, demo_parquet: str) -> RunLayout:
    """probe (fabricated), sample_keys, QA stats (fabricated) and publish: every contract file on disk."""
    lay = fake_probe(out, demo_parquet, {"color:red": 3, "count:2": 2})
    sample_keys(SampleConfig(output_uri=out, run_date=RUN_DATE, num_shards=2))
    for s in ShardPlan.read(lay.shard_plan).shards:
        with JsonlWriter(lay.qa_shard(s.shard_index)) as w:
            for i in range(s.count):
                w.write({"id": str(i)})
        fake_qa_stats(lay, s.shard_index, QACounts(
            failures=s.count, failures_with_items=s.count, errors=0, items=s.count, items_generated=s.count,
            items_dropped=0, items_checked=s.count, items_target_failed=1, items_dropped_target_passed=0,
            items_check_errors=0, resumed=0), checked=True)
    publish(PublishConfig(output_uri=out, run_date=RUN_DATE))
    return lay


@pytest.fixture
def run(tmp_path, demo_parquet) -> RunLayout:
    return _published_run(str(tmp_path), demo_parquet)


def _files(lay: RunLayout) -> dict[type, str]:
    """One file of each contract, as the steps wrote it (journal headers written here as the steps do)."""
    cfg = ProbeConfig(input_uri="/in", output_uri=lay.output_uri, run_date=RUN_DATE, target_model="tiny")
    keep_or_discard(lay.probe_journal, fingerprint_settings(cfg))  # writes the probe journal's header
    qa_header = f"{lay.qa_journal}/shard-00000/{QAJournalHeader.NAME}"
    QAJournalHeader(fp="0123456789abcdef", format=1, plan_sha256="0" * 64, shard_index=0, start=0, stop=3,
                    gemini_model="gemini-2.5-flash", max_items=3).write(qa_header)
    return {ProbeSuccess: lay.probe_success, ShardPlan: lay.shard_plan, QAShardStats: lay.qa_stats(0),
            Manifest: lay.manifest, ProbeJournalHeader: f"{lay.probe_journal}/{ProbeJournalHeader.NAME}",
            QAJournalHeader: qa_header}


def test_every_contract_round_trips_and_is_versioned(run):
    files = _files(run)
    assert set(files) == set(CONTRACTS)
    for model, uri in files.items():
        on_disk = read_json(uri)
        assert on_disk["schema_version"] == 1, uri
        again = model.from_json(on_disk, uri)
        assert again.to_json() == on_disk, model.__name__  # nothing lost, nothing added, ints stay ints
        again.write(uri)
        assert read_json(uri) == on_disk
        if not issubclass(model, JournalHeader):
            assert model.read(uri) == again


def test_a_failed_manifest_keeps_its_reasons_and_a_published_one_has_none(run):
    manifest = Manifest.read(run.manifest)
    assert manifest.failed is None and "failed" not in read_json(run.manifest)
    failed = manifest.model_copy(update={"failed": ["budget reached: ..."]})
    failed.write(run.manifest_failed)
    assert Manifest.read(run.manifest_failed).failed == ["budget reached: ..."]


def test_a_file_written_before_schema_version_existed_reads_as_version_1(run):
    data = read_json(run.probe_success)
    del data["schema_version"]
    write_json(run.probe_success, data)
    assert ProbeSuccess.read(run.probe_success).schema_version == 1


@pytest.mark.parametrize("model", CONTRACTS, ids=lambda m: m.__name__)
def test_an_unknown_schema_version_is_one_line_naming_file_and_versions(run, model):
    uri = _files(run)[model]
    write_json(uri, {**read_json(uri), "schema_version": 99})
    reader = model.recorded if issubclass(model, JournalHeader) else model.read
    with pytest.raises(InputError) as caught:
        reader(uri)
    message = str(caught.value)
    assert "\n" not in message
    assert uri in message and "schema_version 99" in message and "reads schema_version 1" in message


def test_a_file_that_does_not_match_its_model_names_the_field(run):
    data = read_json(run.shard_plan)
    write_json(run.shard_plan, {**data, "surprise": 1})
    with pytest.raises(InputError, match="surprise: Extra inputs are not permitted"):  # extra="forbid"
        ShardPlan.read(run.shard_plan)
    del data["shards"][0]["byte_stop"]
    write_json(run.shard_plan, data)
    with pytest.raises(InputError) as caught:
        ShardPlan.read(run.shard_plan)
    assert "\n" not in str(caught.value)
    assert f"{run.shard_plan} does not match sample/shards.json schema_version 1: shards.0.byte_stop: Field " \
           "required" in str(caught.value)


def _one_error_line(capsys, step: str, *fragments: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"vlmprobe {step}: error: " in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_publish_refuses_a_shard_plan_of_a_newer_version_with_one_line(run, capsys):
    write_json(run.shard_plan, {**read_json(run.shard_plan), "schema_version": 99})
    assert main(["publish", "--run-date", RUN_DATE, "--output-uri", run.output_uri]) == 2
    _one_error_line(capsys, "publish", "shards.json has schema_version 99", "reads schema_version 1")


def test_sample_keys_refuses_a_probe_success_of_a_newer_version_with_one_line(run, capsys):
    write_json(run.probe_success, {**read_json(run.probe_success), "schema_version": 2})
    assert main(["sample-keys", "--run-date", RUN_DATE, "--output-uri", run.output_uri]) == 2
    _one_error_line(capsys, "sample-keys", "_SUCCESS.json has schema_version 2", "reads schema_version 1")


def test_qa_refuses_a_shard_plan_of_a_newer_version_with_one_line(run, capsys):
    write_json(run.shard_plan, {**read_json(run.shard_plan), "schema_version": 99})
    assert main(["qa", "--run-date", RUN_DATE, "--output-uri", run.output_uri, "--shard-index", "0"]) == 2
    _one_error_line(capsys, "qa", "shards.json has schema_version 99")


def test_a_probe_rerun_refuses_a_journal_header_of_a_newer_version(run):
    """Never discarded: a newer vlmprobe's paid-for journal is not this version's to throw away."""
    uri = _files(run)[ProbeJournalHeader]
    write_json(uri, {**read_json(uri), "schema_version": 99})
    (Path(run.probe_journal) / "rank-00000.attempt.jsonl").write_text("{}\n")
    cfg = ProbeConfig(input_uri="/in", output_uri=run.output_uri, run_date=RUN_DATE, target_model="tiny")
    with pytest.raises(InputError, match="_fingerprint.json has schema_version 99"):
        keep_or_discard(run.probe_journal, fingerprint_settings(cfg))
    assert (Path(run.probe_journal) / "rank-00000.attempt.jsonl").exists()


# -- nothing else parses the contract files ---------------------------------------------------------

# RunLayout's names for the contract files, and the files' own names
LAYOUT_NAMES = {"probe_success", "shard_plan", "qa_stats", "manifest", "manifest_failed"}
FILE_NAMES = ("_SUCCESS.json", "shards.json", ".stats.json", "manifest.json", "manifest.failed.json",
              "_fingerprint.json")
PARSERS_AND_WRITERS = {"read_json", "read_bytes", "read_text", "loads", "load", "open", "open_input_stream",
                       "write_json", "atomic_write", "iter_lines"}
# where the files are defined: the contracts, and the layout that names their paths
ALLOWED = {*(REPO / "src" / "vlmprobe" / "contracts").glob("*.py"), REPO / "src" / "vlmprobe" / "io" / "layout.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            # a path or a file name (a sentence that mentions one, e.g. a param's help, is fine)
            if any(name in node.value for name in FILE_NAMES) and not any(c.isspace() for c in node.value):
                out.append(f"{path}:{node.lineno}: names a contract file: {node.value!r}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in PARSERS_AND_WRITERS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for sub in ast.walk(arg):
                    if isinstance(sub, ast.Attribute) and sub.attr in LAYOUT_NAMES:
                        out.append(f"{path}:{node.lineno}: {name}(...{sub.attr}...) outside vlmprobe.contracts")
    return out


def test_only_the_contracts_module_reads_or_writes_the_contract_files():
    sources = [p for folder in ("src", "operators", "dags") for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(sources) > 30
    offences = [o for p in sources if p not in ALLOWED for o in _offences(p)]
    assert offences == []


def test_the_scan_sees_a_raw_read(tmp_path):
    """The check above can fail: a module that parses _SUCCESS.json or manifest.json itself is caught."""
    bad = tmp_path / "raw_reader.py"
    bad.write_text('from vlmprobe.io import read_json\n\ndef f(layout):\n    return read_json(layout.probe_success)\n'
                   'def g(root):\n    return json.loads(open(root + "/manifest.json").read())\n')
    found = _offences(bad)
    assert len(found) == 2 and "read_json(...probe_success...)" in found[0] and "manifest.json" in found[1]


def test_the_manifest_counts_are_typed_where_publish_and_the_asset_event_read_them(run):
    manifest = Manifest.read(run.manifest)
    assert manifest.probe.counts.verified == 5 and manifest.sample.counts.sampled == 5
    assert manifest.qa.counts["items"] == 5 and manifest.qa.target_check.items_target_failed == 2
    assert json.loads(Path(run.manifest).read_text())["qa"]["target_check"]["shards"] == 2
