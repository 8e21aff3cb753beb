"""The Airflow-side checks before the probe pod: conf keys, URI forms, dated input, writable output."""

from __future__ import annotations

import shutil
import types

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from vlmprobe.errors import InputError, UsageError
from vlmprobe.params import defaults
from vlmprobe.preflight import check_conf_keys, check_output_writable, preflight

PINNED = "0123456789abcdef0123456789abcdef01234567"
RUN = types.SimpleNamespace(data_interval_start=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
                            logical_date=pendulum.datetime(2026, 11, 25, 2, tz="UTC"), run_after=None, conf={})


def _context(tmp_path, conf=None, **params):
    conf = conf or {}
    # as Airflow merges them; the default hub-id target pinned as a deployment would pin it
    merged = {**defaults(), "target_revision": PINNED, "output_uri": str(tmp_path / "out"), **params, **conf}
    return {"params": merged, "dag_run": types.SimpleNamespace(**{**vars(RUN), "conf": conf})}


def test_a_typo_names_the_closest_key_and_lists_the_others():
    with pytest.raises(UsageError) as e:
        check_conf_keys(["samples_per_kye", "seed"])
    msg = str(e.value)
    assert msg.startswith("unknown conf key 'samples_per_kye' (did you mean 'samples_per_key'?); valid keys: ")
    assert "input_uri" in msg and "nproc_per_node" in msg
    with pytest.raises(UsageError, match=r"unknown conf keys 'colour_mode', 'nproc_per_nod' \(did you mean "
                                         r"'nproc_per_node'\?\)"):
        check_conf_keys(["nproc_per_nod", "colour_mode"])
    check_conf_keys(["seed", "input_uri"])  # all known: nothing raised


def test_preflight_passes_for_a_dated_input_and_leaves_no_marker(tmp_path, demo_parquet):
    dated = tmp_path / "in" / "2026-11-25"
    shutil.copytree(demo_parquet, dated)
    preflight(_context(tmp_path, input_uri=str(tmp_path / "in" / "{run_date}")))
    assert [p.name for p in (tmp_path / "out" / "2026-11-25").iterdir()] == []


def test_missing_input_fails_without_retry_naming_the_expanded_uri(tmp_path):
    with pytest.raises(AirflowFailException) as e:
        preflight(_context(tmp_path, input_uri=str(tmp_path / "in" / "{run_date}")))
    assert f"input {tmp_path}/in/2026-11-25 (input_uri {tmp_path}/in/{{run_date}} for run date 2026-11-25) " \
           "does not exist" in str(e.value)
    assert not (tmp_path / "out").exists()  # the output check comes after


def test_an_input_without_parquet_files_fails(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "_hidden.parquet").write_text("x")
    with pytest.raises(AirflowFailException, match="holds no .parquet files"):
        preflight(_context(tmp_path, input_uri=str(tmp_path / "in")))


def test_a_typo_in_the_conf_fails_the_preflight(tmp_path, demo_parquet):
    with pytest.raises(AirflowFailException, match="did you mean 'samples_per_key'"):
        preflight(_context(tmp_path, conf={"samples_per_kye": 5}, input_uri=demo_parquet))


def test_a_uri_of_the_wrong_form_fails_the_preflight(tmp_path):
    with pytest.raises(AirflowFailException, match="input_uri='http://host/x' must be an absolute local path"):
        preflight(_context(tmp_path, input_uri="http://host/x"))


def test_an_output_that_cannot_be_written_fails(tmp_path, monkeypatch):
    # we run as root here, so a read-only folder would not stop us: a file stands where a folder should be
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(InputError, match="is not writable"):
        check_output_writable(str(tmp_path / "out"), "2026-11-25")

    import vlmprobe.io.fs as fs

    def refuse(uri, obj):
        raise PermissionError(13, "Permission denied", uri)

    monkeypatch.setattr(fs, "write_json", refuse)
    with pytest.raises(InputError, match="not writable.*Permission denied"):
        check_output_writable(str(tmp_path / "elsewhere"), "2026-11-25")


def test_storage_errors_that_may_pass_are_left_to_the_retry(tmp_path, demo_parquet, monkeypatch):
    import vlmprobe.io.fs as fs

    def flaky(uri, suffix=""):
        raise OSError("When listing objects under key 'vqa' in bucket 'b': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(fs, "list_files", flaky)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        preflight(_context(tmp_path, input_uri=demo_parquet))


def test_the_run_folder_the_preflight_creates_is_group_writable(tmp_path, demo_parquet):
    import os
    import stat

    old = os.umask(0o022)  # an Airflow worker's usual umask
    try:
        preflight(_context(tmp_path, input_uri=demo_parquet))
    finally:
        os.umask(old)
    # the probe pod runs as another user of the same group: it must be able to write here
    assert stat.S_IMODE((tmp_path / "out" / "2026-11-25").stat().st_mode) & stat.S_IWGRP
