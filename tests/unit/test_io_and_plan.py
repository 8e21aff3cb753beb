"""Storage helpers, failure keys and the deterministic file plan."""

from __future__ import annotations

import json

import pytest

from vlmprobe.io import JsonlWriter, RunLayout, iter_json_records, iter_jsonl, list_files
from vlmprobe.io.parquet import image_bytes, iter_rows, read_cells
from vlmprobe.probe.plan import sample_files
from vlmprobe.records import failure_key


def test_jsonl_writer_is_atomic(tmp_path):
    uri = str(tmp_path / "out" / "a.jsonl")
    with pytest.raises(RuntimeError):
        with JsonlWriter(uri) as w:
            w.write({"x": 1})
            raise RuntimeError("crash mid-write")
    assert not (tmp_path / "out" / "a.jsonl").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temp file left behind
    with JsonlWriter(uri) as w:
        w.write({"x": 1})
        w.write({"x": 2})
    assert w.count == 2 and [r["x"] for r in iter_jsonl(uri)] == [1, 2]
    with JsonlWriter(uri) as w:  # a rerun replaces, never appends
        w.write({"x": 3})
    assert [r["x"] for r in iter_jsonl(uri)] == [3]


def test_json_array_records(tmp_path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert [r["a"] for r in iter_json_records(str(p))] == [1, 2]


def test_layout_paths():
    lay = RunLayout("/data/out", "2026-11-25")
    assert lay.probe_rank(3) == "/data/out/2026-11-25/probe/rank-00003.jsonl"
    assert lay.qa_shard(12) == "/data/out/2026-11-25/qa/shard-00012.jsonl"
    assert lay.manifest == "/data/out/2026-11-25/manifest.json"
    assert RunLayout("gs://bucket/x/", "2026-11-25").shard_plan == "gs://bucket/x/2026-11-25/sample/shards.json"
    with pytest.raises(ValueError, match="run date"):
        RunLayout("/data", "25/11/2026")


def test_failure_key_normalizes():
    assert failure_key("Color", " Light Blue! ") == "color:light_blue"
    assert failure_key("count", "") == "count:unknown"


@pytest.mark.parametrize("category,value,key", [
    ("count", "circles", "count:circle"),  # the demo's count:circle / count:circles split
    ("Count", "  the Circles. ", "count:circle"),
    ("count", "small squares", "count:small_square"),
    ("color", "Grey  DISCS", "color:gray_circle"),  # word synonyms declared by the template set
    ("size", "buses", "size:bus"),
    ("shape", "lens", "shape:lens"),  # invariant words stay as they are
    ("text", "STOP signs", "text:stop_signs"),  # text is quoted, never put in the singular
    ("lighting", "Dim light", "lighting:dark"),  # phrase synonyms of a closed category
    ("lighting", "reflections", "lighting:glare"),
    ("lighting", "foggy haze", "lighting:other"),  # outside the closed vocabulary
    ("viewpoint", "Bird's-eye view", "viewpoint:top_down"),
    ("mood", "gloomy", "other:gloomy"),  # not a category of the set
    ("text", "Café MENU", "text:café_menu"),  # letters of any script are kept, lowercased
    ("text", "中文", "text:中文"),
])
def test_failure_keys_come_from_a_controlled_vocabulary(category, value, key):
    assert failure_key(category, value) == key
    cat, val = key.split(":")
    assert failure_key(cat, val.replace("_", " ")) == key  # normalising a key again changes nothing


def test_factor_schema_allows_only_closed_values_and_the_simulator_keeps_to_it(gemini_sim):
    import asyncio

    from vlmprobe.records import vocabulary
    from vlmprobe.teacher.client import Teacher
    from vlmprobe.teacher.prompts import factor_prompt
    from vlmprobe.teacher.schemas import FactorCompletion
    from vlmprobe.teacher.templates import load_templates

    templates = load_templates()
    schema = FactorCompletion.model_json_schema()
    branches = {tuple(b["properties"]["category"]["enum"]): b["properties"]["value"] for b in schema["anyOf"]}
    assert branches[("lighting",)]["enum"] == list(templates.get("lighting").values)
    assert "enum" not in next(v for cats, v in branches.items() if "count" in cats)
    assert sorted(c for cats in branches for c in cats) == sorted(templates.categories)
    from vlmprobe.teacher.schemas import factor_response_schema

    flat = factor_response_schema(templates, constrain=False)  # the fallback: one object, values described
    assert flat["type"] == "object" and "glare" in flat["properties"]["value"]["description"]

    async def ask(n: int):
        async with Teacher("gemini-sim", base_url=gemini_sim.base_url) as teacher:
            prompts = [factor_prompt(templates, f"How many circles are there in picture {i}?", "3", "4", None)
                       for i in range(n)]
            return await asyncio.gather(*(teacher.generate(p, FactorCompletion) for p in prompts))

    results = asyncio.run(ask(40))
    vocab = vocabulary()
    closed_seen = 0
    for r in results:
        key = failure_key(r.parsed.category, r.parsed.value)
        if r.parsed.category in vocab.closed:
            closed_seen += 1
            assert r.parsed.value in templates.get(r.parsed.category).values
            assert key.split(":")[1].replace("_", " ") in vocab.closed[r.parsed.category]
    assert closed_seen > 0


def test_file_sampling_is_seeded_by_run_date(demo_parquet):
    all_files = list_files(demo_parquet, ".parquet")
    assert len(all_files) == 4
    a = sample_files(demo_parquet, 2, seed=0, run_date="2026-11-25")
    assert a == sample_files(demo_parquet, 2, seed=0, run_date="2026-11-25")
    others = {tuple(sample_files(demo_parquet, 2, seed=0, run_date=f"2026-11-{d:02d}")) for d in range(1, 29)}
    assert len(others) > 1  # the draw changes with the date
    assert sample_files(demo_parquet, 10, seed=0, run_date="2026-11-25") == all_files
    with pytest.raises(FileNotFoundError):
        sample_files(demo_parquet + "-missing", 2, 0, "2026-11-25")


def test_parquet_rows_stream_and_read_back(demo_parquet):
    uri = list_files(demo_parquet, ".parquet")[1]
    rows = list(iter_rows(uri, batch_rows=5))
    assert [r.row for r in rows] == list(range(len(rows)))
    picked = read_cells(uri, [rows[-1].row, 0], ["image", "question"])
    assert picked[0]["question"] == rows[0].cells["question"]
    assert image_bytes(picked[rows[-1].row]["image"], uri) == image_bytes(rows[-1].cells["image"], uri)
    assert read_cells(uri, [10_000, 0], ["question"]).keys() == {0}  # rows past the end are left out


def test_image_cell_by_relative_path(tmp_path):
    (tmp_path / "img.png").write_bytes(b"png-bytes")
    assert image_bytes({"bytes": None, "path": "img.png"}, str(tmp_path / "x.parquet")) == b"png-bytes"
    assert image_bytes(b"raw", "unused") == b"raw"
    with pytest.raises(ValueError):
        image_bytes({"bytes": None, "path": None}, "x")


@pytest.mark.parametrize("n", [0, 1, 3])
def test_json_array_writer_streams_a_valid_array(tmp_path, n):
    uri = str(tmp_path / "f.json")
    with JsonlWriter(uri, json_array=True) as w:
        for i in range(n):
            w.write({"i": i})
    assert json.loads((tmp_path / "f.json").read_text()) == [{"i": i} for i in range(n)]


def test_json_array_reader_streams_across_chunks(tmp_path):
    from vlmprobe.io.jsonl import iter_json_array

    records = [{"i": i, "text": "x" * (i * 7), "nested": {"a": [1, 2, {"b": "]"}]}} for i in range(40)]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(records, indent=1))
    assert list(iter_json_array(str(p), chunk_chars=13)) == records  # chunks far smaller than a record
    p.write_text("[]")
    assert list(iter_json_array(str(p))) == []
    p.write_text('[{"a": 1}, {"a": ')
    with pytest.raises(ValueError, match="not a complete JSON array"):
        list(iter_json_array(str(p), chunk_chars=4))
    p.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON array"):
        list(iter_json_array(str(p)))
