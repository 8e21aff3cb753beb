"""The QA items as a dataset people load: Parquet shards `datasets`, pandas and DuckDB read as they are,
the dataset card, and the manifest's provenance."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fakes import RUN_DATE, fake_probe
from vlmprobe.config import PublishConfig, QAConfig, SampleConfig
from vlmprobe.contracts import Manifest, QAShardStats
from vlmprobe.io import iter_jsonl
from vlmprobe.publish.run import publish
from vlmprobe.qa.dataset import FEATURES, SCHEMA, item_row, write_shard_parquet
from vlmprobe.qa.run import run_shard
from vlmprobe.sample.run import sample_keys


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """`datasets` with its caches in tmp_path and no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return str(tmp_path / "hf-cache")


def _qa_run(tmp_path, demo_parquet, embed=False, shards=2):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:3": 4, "size:big": 2})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=shards, embed_images=embed))
    for i in range(shards):
        run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=i, concurrency=4, batch_size=3))
    return lay


def test_datasets_loads_every_qa_item_with_pil_images_and_the_row_count_of_the_manifest(
        tmp_path, demo_parquet, gemini_sim, hf_offline):
    import datasets
    from PIL import Image

    lay = _qa_run(tmp_path, demo_parquet)
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    m = Manifest.read(lay.manifest)
    ds = datasets.load_dataset("parquet", data_dir=lay.qa_parquet_dir, split="train", cache_dir=hf_offline)
    assert len(ds) == m.qa.counts["items"] == m.dataset.rows > 0
    assert all(isinstance(img, Image.Image) and img.size[0] > 0 for img in ds["image"])
    assert ds.features["image"] == datasets.Image() and ds.features["choices"] == datasets.List(datasets.Value("string"))
    # the same items as the JSONL shards (each Parquet file in its shard's reading order: by input file and row)
    jsonl = [it for uri in m.outputs.qa for it in iter_jsonl(uri)]
    assert sorted(zip(ds["id"], ds["question"])) == sorted((it["id"], it["question"]) for it in jsonl)
    jsonl = sorted(jsonl, key=lambda it: ds["id"].index(it["id"]))
    # each image is the bytes the input file holds for the item's row
    first = jsonl[0]
    cell = pq.read_table(first["image"]["uri"], columns=["image"]).column("image")[first["image"]["row"]].as_py()
    assert ds.with_format("arrow")[0:1].column("image")[0].as_py()["bytes"] == cell["bytes"]
    assert ds[0]["source_image"] == first["image"] and ds[0]["failure_prediction"] == "blue"
    # the manifest lists the files; with the card in the run folder, the folder itself loads
    assert sorted(m.outputs.qa_parquet) == sorted(str(p) for p in (tmp_path / RUN_DATE / "qa" / "parquet").iterdir())
    whole = datasets.load_dataset(lay.root, split="train", cache_dir=hf_offline)
    assert len(whole) == len(ds)


def test_the_features_are_recorded_as_datasets_writes_them(tmp_path):
    import datasets

    features = datasets.Features.from_dict(FEATURES)
    ours = item_row({"id": "a", "question": "q", "answer": "yes", "answer_type": "yes_no", "choices": ["yes", "no"],
                     "failure_key": "color:red", "image": {"uri": "/in/x.parquet", "row": 3}, "usage": {}},
                    {"factor": {"completion": "it is red"}}, _png())
    theirs = tmp_path / "theirs.parquet"
    datasets.Dataset.from_list([ours], features=features).to_parquet(str(theirs))
    mine = tmp_path / "mine.parquet"
    write_shard_parquet(str(mine), {0: [{}]}, [[(0, {}, None, _png())]])
    their_schema = pq.read_schema(theirs)
    assert json.loads(their_schema.metadata[b"huggingface"]) == json.loads(SCHEMA.metadata[b"huggingface"])
    assert their_schema.remove_metadata() == pq.read_schema(mine).remove_metadata()


def test_pandas_and_duckdb_read_the_files_as_they_are(tmp_path, demo_parquet, gemini_sim):
    import duckdb
    import pandas as pd

    lay = _qa_run(tmp_path, demo_parquet)
    items = [it for i in range(2) for it in iter_jsonl(lay.qa_shard(i))]
    df = pd.read_parquet(lay.qa_parquet_dir)
    assert len(df) == len(items) and isinstance(df.loc[0, "image"]["bytes"], bytes)
    rows = duckdb.sql(f"SELECT failure_key, count(*) FROM read_parquet('{lay.qa_parquet_dir}/*.parquet') "
                      "GROUP BY ALL ORDER BY 1").fetchall()
    want = {}
    for it in items:
        want[it["failure_key"]] = want.get(it["failure_key"], 0) + 1
    assert dict(rows) == want


def test_embedded_images_go_into_the_parquet_file_too(tmp_path, demo_parquet, gemini_sim):
    lay = _qa_run(tmp_path, demo_parquet, embed=True, shards=1)
    table = pq.read_table(lay.qa_parquet(0))
    assert table.num_rows == len(list(iter_jsonl(lay.qa_shard(0)))) > 0
    assert table.column("image").null_count == 0


def test_an_image_that_cannot_be_read_any_more_keeps_its_row_and_says_why(tmp_path, demo_parquet, gemini_sim,
                                                                         monkeypatch):
    from vlmprobe.qa import run as qa_run

    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 3})
    sample_keys(SampleConfig(output_uri=str(tmp_path), run_date=RUN_DATE, num_shards=1))
    real = qa_run.load_images
    calls = []

    def second_read_fails(records, *args):  # the teacher's read works; the Parquet file's read finds the file gone
        calls.append(len(records))
        out = real(records, *args)
        return out if len(calls) == 1 else [OSError("input file moved") for _ in out]

    monkeypatch.setattr(qa_run, "load_images", second_read_fails)
    monkeypatch.setattr(qa_run, "IMAGE_CACHE_BYTES", 0)  # images not kept: the Parquet file reads them again
    run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, batch_size=10))
    table = pq.read_table(lay.qa_parquet(0))
    items = list(iter_jsonl(lay.qa_shard(0)))
    assert table.num_rows == len(items) > 0 and table.column("image").null_count == table.num_rows
    assert set(table.column("image_error").to_pylist()) == {"OSError: input file moved"}
    stats = QAShardStats.read(lay.qa_stats(0))
    assert stats.parquet.rows == len(items) and stats.parquet.images_missing == len(items)
    publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))
    assert "have no image" in (tmp_path / RUN_DATE / "README.md").read_text()


def test_a_rerun_replaces_the_file_and_a_short_file_is_never_published(tmp_path, demo_parquet, gemini_sim,
                                                                        monkeypatch):
    from vlmprobe.sim import GeminiSimulator

    lay = _qa_run(tmp_path, demo_parquet, shards=1)
    assert pq.read_table(lay.qa_parquet(0)).num_rows > 0
    with GeminiSimulator(port=0, rate_503=1.0, seed=5) as sim:  # the rerun's teacher fails every request
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        run_shard(QAConfig(output_uri=str(tmp_path), run_date=RUN_DATE, shard_index=0, max_attempts=1))
    assert list(iter_jsonl(lay.qa_shard(0))) == [] and pq.read_table(lay.qa_parquet(0)).num_rows == 0
    assert [p.name for p in (tmp_path / RUN_DATE / "qa" / "parquet").iterdir()] == ["shard-00000.parquet"]
    with pytest.raises(RuntimeError, match="1 row\\(s\\) for 2 QA item\\(s\\)"):
        write_shard_parquet(str(tmp_path / "x.parquet"), {0: [{}], 5: [{}]}, [[(0, {}, None, _png())]])
    assert not list(tmp_path.glob("*x.parquet*"))  # nothing under the name, no temporary file left


def test_publish_refuses_a_parquet_file_that_does_not_hold_the_items(tmp_path, demo_parquet, gemini_sim):
    lay = _qa_run(tmp_path, demo_parquet, shards=1)
    table = pq.read_table(lay.qa_parquet(0))
    pq.write_table(table.slice(1), lay.qa_parquet(0))  # one row short
    with pytest.raises(RuntimeError, match=f"qa shard 0: {lay.qa_parquet(0)} holds {table.num_rows - 1} row"):
        publish(PublishConfig(output_uri=str(tmp_path), run_date=RUN_DATE))


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_parquet_schema_is_what_arrow_readers_expect():
    assert SCHEMA.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert SCHEMA.field("choices").type == pa.list_(pa.string())
    assert SCHEMA.names[:3] == ["id", "image", "question"]
