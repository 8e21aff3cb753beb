import argparse
import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image, UnidentifiedImageError

from vlmprobe.demo import data
from vlmprobe.demo.data import COLORS, DEMO_RUN_PARAMS, SCHEMA, draw_scene, iter_demo_examples, write_demo_parquet


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    return write_demo_parquet(str(tmp_path_factory.mktemp("parquet")), n_files=3, rows_per_file=20, seed=7)


def _rows(uri):
    return pq.read_table(uri).to_pylist()


def test_schema_and_row_groups(demo_files):
    assert [os.path.basename(f) for f in demo_files] == [f"part-0000{i}.parquet" for i in range(3)]
    for uri in demo_files:
        meta = pq.ParquetFile(uri)
        assert meta.schema_arrow == SCHEMA
        assert meta.metadata.num_rows == 20
        assert meta.num_row_groups == 3  # 8 + 8 + 4: readers have to stream
    rows = [r for uri in demo_files for r in _rows(uri)]
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["source"].split(":")[1] for r in rows} >= {"color", "count", "side", "which_shape"}
    assert any(r["choices"] is None for r in rows) and any(r["choices"] for r in rows)


def test_same_seed_same_files_other_seed_other_rows(demo_files, tmp_path):
    again = write_demo_parquet(str(tmp_path / "a"), n_files=3, rows_per_file=20, seed=7)
    for first, second in zip(demo_files, again):
        with open(first, "rb") as f1, open(second, "rb") as f2:
            assert f1.read() == f2.read()
    other = write_demo_parquet(str(tmp_path / "b"), n_files=1, rows_per_file=20, seed=8)
    assert [r["question"] for r in _rows(other[0])] != [r["question"] for r in _rows(demo_files[0])]


def test_first_file_has_one_corrupt_image_and_one_null_question(demo_files):
    bad_image, bad_question = [], []
    for uri in demo_files:
        for row in _rows(uri):
            try:
                Image.open(io.BytesIO(row["image"]["bytes"])).load()
            except UnidentifiedImageError:
                bad_image.append(row["id"])
            if row["question"] is None:
                bad_question.append(row["id"])
    assert bad_image == ["demo-00000-0001"]
    assert bad_question == ["demo-00000-0002"]


def _region(shape):
    x, y = shape["x"], shape["y"]
    return "left" if x < 24 else "right" if x > 40 else "top" if y < 24 else "bottom"


def _answer_from_scene(question, scene):
    """Recompute the true answer from the drawn shapes, independently of the generator."""
    words = question.rstrip("?").split()
    if question.startswith("How many"):  # How many SHAPEs are there?
        return str(sum(s["shape"] + "s" == words[2] for s in scene))
    if question.startswith("Which shape"):  # Which shape is COLOR?
        (shape,) = [s for s in scene if s["color"] == words[-1]]
        return shape["shape"]
    if question.startswith("Is"):  # Is the SHAPE on the SIDE?
        (shape,) = [s for s in scene if s["shape"] == words[2]]
        return "yes" if _region(shape) == words[-1] else "no"
    (shape,) = [s for s in scene if s["shape"] == words[-1]]  # What color / Where is the SHAPE?
    return shape["color"] if question.startswith("What color") else _region(shape)


def test_answers_are_true_of_the_images(demo_files):
    with_choices = 0
    for file_index, uri in enumerate(demo_files):
        examples = iter_demo_examples(file_index, 20, seed=7)
        for row, ex in zip(_rows(uri), examples):
            assert row["id"] == ex["id"]
            if row["id"] in ("demo-00000-0001", "demo-00000-0002"):
                continue
            image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            assert image.size == (64, 64)
            # The stored picture is exactly the scene, and each shape's centre has its color.
            assert image.tobytes() == draw_scene(ex["scene"]).tobytes()
            for shape in ex["scene"]:
                assert image.getpixel((shape["x"], shape["y"])) == COLORS[shape["color"]]
            assert row["answer"] == _answer_from_scene(row["question"], ex["scene"])
            if row["choices"] is not None:
                assert row["answer"] in row["choices"]
                with_choices += 1
    assert with_choices >= 5  # the check above ran on rows with choices


def test_rerun_with_fewer_files_removes_stale_parts(tmp_path):
    write_demo_parquet(str(tmp_path), n_files=3, rows_per_file=2)
    kept = write_demo_parquet(str(tmp_path), n_files=2, rows_per_file=2)
    assert sorted(os.path.join(tmp_path, f) for f in os.listdir(tmp_path)) == kept


def test_demo_data_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--files", "2", "--rows-per-file", "9", "--seed", "1"])
    assert data.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["parquet"] == f"{tmp_path}/parquet" and summary["tiny_llava"] == f"{tmp_path}/tiny-llava"
    assert sorted(os.listdir(summary["parquet"])) == ["part-00000.parquet", "part-00001.parquet"]
    assert os.path.isfile(os.path.join(summary["tiny_llava"], "config.json"))
    assert os.path.isfile(os.path.join(summary["tiny_llava"], "model.safetensors"))


def test_the_demo_run_params_are_dag_params():
    # make demo passes them as a run's conf, make up as the DAG's defaults: a misspelt name would fail there
    from vlmprobe.params import default_overrides

    assert default_overrides(json.dumps(DEMO_RUN_PARAMS)) == DEMO_RUN_PARAMS
