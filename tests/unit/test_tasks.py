"""The Airflow-side task functions: run dates, conf to configs, the zero-failure path."""

from __future__ import annotations

import types

import pendulum
import pytest

from fakes import RUN_DATE, fake_probe
from vlmprobe.io import read_json
from vlmprobe.params import defaults
from vlmprobe.tasks import publish_task, sample_keys_task


def _run(logical_date, run_after=pendulum.datetime(2026, 11, 26, 9, 30, tz="UTC")):
    return types.SimpleNamespace(logical_date=logical_date, run_after=run_after)


def test_sample_keys_task_uses_logical_date_then_run_after(tmp_path, demo_parquet):
    fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:2": 1})
    params = {**defaults(), "output_uri": str(tmp_path), "num_shards": 4, "samples_per_key": 2}
    assert sample_keys_task(params, _run(pendulum.datetime(2026, 11, 25, 2, tz="UTC"))) == ["0", "1", "2"]
    # a manual run without a logical date is named after run_after: there is no probe output for it
    with pytest.raises(FileNotFoundError, match="2026-11-26"):
        sample_keys_task(params, _run(None))


def test_no_failures_means_no_shards_and_an_empty_publish(tmp_path, demo_parquet):
    fake_probe(str(tmp_path), demo_parquet, {})
    params = {**defaults(), "output_uri": str(tmp_path)}
    run = _run(pendulum.datetime(2026, 11, 25, 2, tz="UTC"))
    assert sample_keys_task(params, run) == []
    out = publish_task(params, run)
    m = read_json(out["manifest_uri"])
    assert out["qa_items"] == 0 and m["qa"]["shards"] == [] and m["sample"]["counts"]["sampled"] == 0
    assert m["run_date"] == RUN_DATE
