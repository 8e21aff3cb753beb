"""The Airflow-side task functions: run dates, conf checks, no retry for deterministic failures, the Asset event."""

from __future__ import annotations

import types

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from fakes import RUN_DATE, fake_probe
from vlmprobe.io import read_json
from vlmprobe.params import defaults
from vlmprobe.tasks import fail_without_retry, publish_task, sample_keys_task

SCHEDULED = types.SimpleNamespace(  # the 2026-11-26 02:00 run: its data interval starts on the 25th
    data_interval_start=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
    logical_date=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
    run_after=pendulum.datetime(2026, 11, 26, 2, tz="UTC"), conf={})


def _manual(run_after, conf=None):
    return types.SimpleNamespace(data_interval_start=None, logical_date=None, run_after=run_after, conf=conf or {})


def test_sample_keys_task_names_the_run_by_its_data_interval(tmp_path, demo_parquet):
    fake_probe(str(tmp_path), demo_parquet, {"color:red": 5, "count:2": 1})
    params = {**defaults(), "output_uri": str(tmp_path), "num_shards": 4, "samples_per_key": 2}
    assert sample_keys_task(params, SCHEDULED) == ["0", "1", "2"]
    # a manual run without a logical date at 09:30 on the 26th also processes the 25th
    assert sample_keys_task(params, _manual(pendulum.datetime(2026, 11, 26, 9, 30, tz="UTC"))) == ["0", "1", "2"]
    # one a day later looks for the 26th, which probe never wrote: a deterministic failure, no retry
    with pytest.raises(AirflowFailException, match="sample_keys: .*2026-11-26"):
        sample_keys_task(params, _manual(pendulum.datetime(2026, 11, 27, 9, 30, tz="UTC")))


def test_a_typo_in_the_conf_fails_without_retry_naming_the_key(tmp_path, demo_parquet):
    fake_probe(str(tmp_path), demo_parquet, {"color:red": 5})
    # Airflow merges the conf into the params, unknown keys included
    conf = {"samples_per_kye": 5}
    params = {**defaults(), "output_uri": str(tmp_path), **conf}
    with pytest.raises(AirflowFailException) as e:
        sample_keys_task(params, types.SimpleNamespace(**{**vars(SCHEDULED), "conf": conf}))
    assert "'samples_per_kye' (did you mean 'samples_per_key'?)" in str(e.value)
    assert not (tmp_path / RUN_DATE / "sample").exists()  # refused before the step ran


def test_a_relative_output_uri_fails_without_retry(tmp_path):
    params = {**defaults(), "output_uri": "relative/out"}
    with pytest.raises(AirflowFailException, match="output_uri='relative/out' must be an absolute local path"):
        publish_task(params, SCHEDULED)


def test_runtime_errors_keep_their_retry():
    with pytest.raises(RuntimeError):
        with fail_without_retry("publish"):
            raise RuntimeError("counts do not add up")
    with pytest.raises(AirflowFailException, match="publish: bad input"):
        with fail_without_retry("publish"):
            raise ValueError("bad\ninput")


def test_no_failures_means_no_shards_and_an_empty_publish(tmp_path, demo_parquet):
    fake_probe(str(tmp_path), demo_parquet, {})
    params = {**defaults(), "output_uri": str(tmp_path)}
    assert sample_keys_task(params, SCHEDULED) == []
    out = publish_task(params, SCHEDULED)
    m = read_json(out["manifest_uri"])
    assert out["qa_items"] == 0 and m["qa"]["shards"] == [] and m["sample"]["counts"]["sampled"] == 0
    assert m["run_date"] == RUN_DATE


def test_publish_emits_the_qa_dataset_event_with_the_manifest_counts(tmp_path, demo_parquet):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from vlmprobe.lineage import QA_DATASET

    fake_probe(str(tmp_path), demo_parquet, {})
    params = {**defaults(), "output_uri": str(tmp_path)}
    sample_keys_task(params, SCHEDULED)
    events = OutletEventAccessors()
    out = publish_task(params, SCHEDULED, events)
    extra = events[QA_DATASET].extra
    m = read_json(out["manifest_uri"])
    assert extra["run_date"] == RUN_DATE and extra["manifest_uri"] == out["manifest_uri"]
    assert extra["counts"] == {"probe": m["probe"]["counts"], "sample": m["sample"]["counts"], "qa": m["qa"]["counts"]}
    assert extra["counts"]["probe"]["rows"] == 5 and extra["qa_items"] == 0 and extra["qa_uris"] == []
    assert extra["report_uri"] == out["report_uri"] == m["report"]["uri"]  # a night with no failure has a report too
