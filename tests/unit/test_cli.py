"""The ``vlmprobe`` console script: options validated once, one line per failure, exit codes that mean something."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fakes import RUN_DATE, fake_probe
from vlmprobe.cli import _rank_argv, main
from vlmprobe.errors import InputError, QuotaExhausted, TeacherUnusable, require_fields


def _failure_lines(capsys) -> tuple[list[str], str]:
    """(the ERROR lines, all of stderr) of the last call."""
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if " ERROR " in line], err


def _assert_one_line(capsys, step: str, *fragments: str) -> str:
    lines, err = _failure_lines(capsys)
    assert len(lines) == 1, err
    assert f"vlmprobe {step}: error: " in lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_invalid_options_exit_2_on_one_line_naming_the_flag(capsys):
    assert main(["sample-keys", "--run-date", "2026-13-01", "--output-uri", "/tmp/x"]) == 2
    _assert_one_line(capsys, "sample-keys", "--run-date", "2026-13-01", "not a calendar date")
    # argparse's own refusals: its usage line, one error line, exit 2
    with pytest.raises(SystemExit) as e:
        main(["qa", "--run-date", "2026-11-25", "--shard-index", "0", "--no-async", "perhaps"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["sample-keys", "--run-date", "2026-11-25", "--error-output-format", "xml"])


def test_step_result_goes_to_stdout_and_the_xcom_file(tmp_path, monkeypatch, capsys, demo_parquet):
    fake_probe(str(tmp_path), demo_parquet, {"color:red": 3})
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("VLMPROBE_XCOM_FILE", str(xcom))
    assert main(["sample-keys", "--run-date", RUN_DATE, "--output-uri", str(tmp_path), "--embed-images", "false",
                 "--num-shards", "2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(xcom.read_text())
    assert printed["num_shards"] == 2 and printed["counts"]["sampled"] == 3


def test_missing_input_is_one_line_and_exit_2(tmp_path, capsys):
    # the probe in a process of its own, as a pod runs it (torch's error handler wants a real stderr)
    dated = str(tmp_path / "in" / "{run_date}")  # expanded to the run's day, as the preflight does
    proc = subprocess.run([sys.executable, "-m", "vlmprobe.cli", "probe", "--run-date", RUN_DATE, "--input-uri", dated,
                           "--output-uri", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert " ERROR " in line and f"vlmprobe probe: error: input_uri {tmp_path}/in/{RUN_DATE} does not exist: check " \
                                 "input_uri" in line
    assert proc.stdout == ""  # no stray `null`
    # a step whose prerequisite is missing: the same
    assert main(["sample-keys", "--run-date", RUN_DATE, "--output-uri", str(tmp_path)]) == 2
    _assert_one_line(capsys, "sample-keys", "_SUCCESS.json is missing")
    assert not (tmp_path / RUN_DATE / "probe").exists()


def test_a_placeholder_other_than_run_date_is_refused(tmp_path, capsys):
    assert main(["probe", "--run-date", RUN_DATE, "--input-uri", str(tmp_path / "{ds}"), "--output-uri",
                 str(tmp_path)]) == 2
    line = _assert_one_line(capsys, "probe", "contains {ds}")
    assert "--debug" not in line  # an expected failure: worded for the user, no hint


@pytest.fixture
def shard_plan(tmp_path, demo_parquet, capsys):
    """A run with probe output and a two-shard plan (sample-keys through the CLI)."""
    fake_probe(str(tmp_path), demo_parquet, {"color:red": 3, "count:2": 2})
    assert main(["sample-keys", "--run-date", RUN_DATE, "--output-uri", str(tmp_path), "--num-shards", "2"]) == 0
    capsys.readouterr()
    return tmp_path


def test_shard_index_out_of_range_is_one_line_and_exit_2(shard_plan, capsys, gemini_sim):
    assert main(["qa", "--run-date", RUN_DATE, "--output-uri", str(shard_plan), "--shard-index", "9"]) == 2
    _assert_one_line(capsys, "qa", "shard 9 does not exist", "2 shard(s)")


def test_malformed_failures_file_is_one_line_and_exit_2(shard_plan, capsys, gemini_sim):
    failures = shard_plan / RUN_DATE / "sample" / "failures.jsonl"
    lines = failures.read_text().splitlines()
    failures.write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    assert main(["qa", "--run-date", RUN_DATE, "--output-uri", str(shard_plan), "--shard-index", "0"]) == 2
    _assert_one_line(capsys, "qa", "failures.jsonl line 1 is not JSON")


def test_malformed_probe_output_is_one_line_for_sample_keys(tmp_path, demo_parquet, capsys):
    lay = fake_probe(str(tmp_path), demo_parquet, {"color:red": 3})
    with open(lay.probe_rank(1), "a") as f:
        f.write('{"id": "x", "failure_key": \n')
    assert main(["sample-keys", "--run-date", RUN_DATE, "--output-uri", str(tmp_path)]) == 2
    _assert_one_line(capsys, "sample-keys", "rank-00001.jsonl line 2 is not JSON")


def test_unexpected_errors_exit_1_with_the_debug_hint(monkeypatch, capsys):
    import vlmprobe.cli as cli

    def boom(_config):
        raise RuntimeError("the teacher client crashed\nwith a second line")

    monkeypatch.setitem(cli.STEPS, "publish", (cli.STEPS["publish"][0], boom, "publish"))
    assert main(["publish", "--run-date", RUN_DATE, "--output-uri", "/tmp/x"]) == 1
    _assert_one_line(capsys, "publish", "RuntimeError: the teacher client crashed with a second line",
                     "(run with --debug for the traceback)")
    assert main(["publish", "--run-date", RUN_DATE, "--output-uri", "/tmp/x", "--debug"]) == 1
    lines, err = _failure_lines(capsys)
    assert len(lines) == 1 and "Traceback" in err and "--debug for the traceback" not in err
    monkeypatch.setenv("VLMPROBE_DEBUG", "1")
    assert main(["--debug", "publish", "--run-date", RUN_DATE, "--output-uri", "/tmp/x"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("error,code", [
    (InputError("no input"), 2), (TeacherUnusable("API key not valid"), 3),
    (QuotaExhausted("daily quota spent", resets_at=None), 4),
])
def test_expected_errors_carry_their_exit_code(monkeypatch, capsys, error, code):
    import vlmprobe.cli as cli

    def fail(_config):
        raise error

    monkeypatch.setitem(cli.STEPS, "qa", (cli.STEPS["qa"][0], fail, "qa"))
    assert main(["qa", "--run-date", RUN_DATE, "--output-uri", "/tmp/x", "--shard-index", "0"]) == code
    line = _assert_one_line(capsys, "qa")
    assert line.endswith(f"vlmprobe qa: error: {error}")


def test_require_fields_names_the_file_and_record():
    require_fields({"failure_key": "color:red", "id": "a"}, ("failure_key",), source="probe/rank-00000.jsonl", number=3)
    with pytest.raises(InputError, match=r"probe/rank-00000.jsonl, record 12: no 'failure_key' \(fields present: "
                                         r"id, question\)"):
        require_fields({"id": "a", "question": "q"}, ("failure_key",), source="probe/rank-00000.jsonl", number=12)
    with pytest.raises(InputError, match="record 2: expected a JSON object, got list"):
        require_fields([1], ("failure_key",), source="f.jsonl", number=2)


def test_the_launcher_passes_everything_but_nproc_to_the_ranks():
    argv = ["--debug", "probe", "--nproc-per-node", "2", "--run-date", RUN_DATE, "--nproc_per_node=4", "--seed", "1"]
    assert _rank_argv(argv) == ["--debug", "probe", "--run-date", RUN_DATE, "--seed", "1"]


def test_nproc_per_node_under_torchrun_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["probe", "--nproc-per-node", "2", "--run-date", RUN_DATE, "--input-uri", str(tmp_path),
                 "--output-uri", str(tmp_path)]) == 2
    _assert_one_line(capsys, "probe", "do not also run under torchrun")
