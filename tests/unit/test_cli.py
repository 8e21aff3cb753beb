"""The ``vlmprobe`` console script: options come from the step configs and are validated once."""

from __future__ import annotations

import json

import pytest

from vlmprobe.cli import main


def test_invalid_options_exit_2_with_the_field(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample-keys", "--run-date", "2026-13-01", "--output-uri", "/tmp/x"])
    assert e.value.code == 2
    assert "run_date" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["qa", "--run-date", "2026-11-25", "--shard-index", "0", "--no-async", "perhaps"])
    with pytest.raises(SystemExit):
        main(["sample-keys", "--run-date", "2026-11-25", "--error-output-format", "xml"])


def test_step_result_goes_to_stdout_and_the_xcom_file(tmp_path, monkeypatch, capsys, demo_parquet):
    from fakes import RUN_DATE, fake_probe

    fake_probe(str(tmp_path), demo_parquet, {"color:red": 3})
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("VLMPROBE_XCOM_FILE", str(xcom))
    assert main(["sample-keys", "--run-date", RUN_DATE, "--output-uri", str(tmp_path), "--embed-images", "false",
                 "--num-shards", "2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(xcom.read_text())
    assert printed["num_shards"] == 2 and printed["counts"]["sampled"] == 3
