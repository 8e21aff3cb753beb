"""Two users, one volume: the GPU pods' uid 10001 and Airflow's uid 50000 share the run folders.

Each step runs here as a subprocess with the user and groups Kubernetes gives it: the worker
pods run as 10001 with the shared group 10001 as primary group and fsGroup; the Airflow
components run as 50000, primary group 0, with 10001 as a supplemental group. The volume's
root is what the kubelet makes of it with fsGroup: group 10001, group-writable, setgid.

The interpreter lives where only root may read (here, under /root), so each subprocess starts
as root, imports what its step needs, then drops to the step's uid and groups (with umask
022, a container's default) before touching the volume.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from vlmprobe.shared_volume import make_shared_dir, share_with_group

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uids 10001 and 50000 needs root")

SHARED_GID = 10001
WORKER = dict(uid=10001, gid=SHARED_GID, groups=[SHARED_GID])  # the GPU pods
AIRFLOW = dict(uid=50000, gid=0, groups=[SHARED_GID])  # sample_keys, publish
RUN_DATE = "2026-11-25"
# Start as root, load the step's code, become the step's user: then run the step's code.
SWITCH_USER = textwrap.dedent("""
    import os, sys
    import vlmprobe.cli, vlmprobe.io, vlmprobe.io.fs, vlmprobe.log, vlmprobe.sample.run, vlmprobe.shared_volume
    vlmprobe.cli.build_parser()  # imports what the subcommands' options need
    os.setgroups({groups}); os.setgid({gid}); os.setuid({uid}); os.umask(0o022)
    assert (os.getuid(), os.getgid()) == ({uid}, {gid})
""")
SAMPLE_KEYS = "from vlmprobe import cli; sys.exit(cli.main(sys.argv[1:]))"

# What the probe pod leaves behind (through vlmprobe.io, as the step writes it), plus a stale
# sample/failures.json of an earlier attempt in the other format, which sample-keys deletes.
PROBE_LIKE = textwrap.dedent("""
    from vlmprobe.io import JsonlWriter, RunLayout, write_json
    from vlmprobe.shared_volume import share_with_group
    if sys.argv[2] == "shared":
        share_with_group()
    layout = RunLayout(sys.argv[1], "{run_date}")
    with JsonlWriter(layout.probe_rank(0)) as out:
        for i in range(6):
            out.write({{"id": f"r{{i}}", "failure_key": f"color:{{'red' if i % 2 else 'blue'}}",
                       "image": {{"uri": "/data/in/a.parquet", "row": i}}, "question": "q", "answer": "a"}})
    with JsonlWriter(layout.probe_errors(0)) as errors:
        errors.write({{"stage": "probe", "reason": "unreadable_file"}})
    sys.path.insert(0, {tests!r})
    from fakes import fake_success
    fake_success(layout, [layout.probe_rank(0)], verified=6)
    with JsonlWriter(layout.sampled_failures("json"), json_array=True) as stale:
        stale.write({{"id": "stale"}})
    write_json(layout.shard_plan, {{"stale": True}})
""").format(run_date=RUN_DATE, tests=str(Path(__file__).resolve().parents[1]))

# A rerun of the probe for the same date (uid 10001): it clears what Airflow wrote after it.
RERUN_CLEANUP = textwrap.dedent("""
    from vlmprobe.io.fs import join, remove_tree
    from vlmprobe.shared_volume import share_with_group
    share_with_group()
    remove_tree(join(sys.argv[1], "{run_date}", "sample"))
""").format(run_date=RUN_DATE)


@pytest.fixture
def volume():
    base = Path(tempfile.mkdtemp(prefix="vlmprobe-volume-", dir="/tmp"))  # not pytest's 0700 tmp_path
    os.chmod(base, 0o755)
    root = base / "data"
    os.makedirs(root)
    os.chmod(root, 0o770)  # only the shared group may enter, as on a volume set up for it
    make_shared_dir(str(root), group=SHARED_GID)  # what the kubelet does with fsGroup
    try:
        yield root
    finally:
        shutil.rmtree(base)


def _run(code, args, who):
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           # a checkout's own src/ first, as in the tests' process (else: the installed vlmprobe)
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
    script = SWITCH_USER.format(**who) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _sample_keys(output):
    # `vlmprobe sample-keys` as the Airflow worker runs it
    return _run(SAMPLE_KEYS, ["sample-keys", "--run-date", RUN_DATE, "--output-uri", output, "--samples-per-key",
                              "2", "--num-shards", "2", "--error-output-format", "jsonl"], AIRFLOW)


def test_steps_as_two_users_write_replace_and_delete_each_others_files(volume):
    output = str(volume / "output")
    run = volume / "output" / RUN_DATE

    probe = _run(PROBE_LIKE, [output, "shared"], WORKER)
    assert probe.returncode == 0, probe.stderr
    assert (run / "probe" / "rank-00000.jsonl").stat().st_uid == 10001

    sample = _sample_keys(output)
    assert sample.returncode == 0, sample.stdout + sample.stderr
    assert not (run / "sample" / "failures.json").exists()  # the other user's stale file, deleted
    plan = json.loads((run / "sample" / "shards.json").read_text())  # the other user's file, replaced
    assert "stale" not in plan and plan["counts"]["sampled"] == 4
    assert (run / "sample" / "shards.json").stat().st_uid == 50000
    assert (run / "errors" / "sample.jsonl").stat().st_uid == 50000  # next to the probe's errors

    for path in [run, *run.rglob("*")]:
        mode = path.stat()
        assert mode.st_gid == SHARED_GID, f"{path} is not in the shared group"
        assert mode.st_mode & stat.S_IWGRP, f"{path} is not group-writable"
        if path.is_dir():
            assert mode.st_mode & stat.S_ISGID, f"{path} is not setgid"

    rerun = _run(RERUN_CLEANUP, [output], WORKER)
    assert rerun.returncode == 0, rerun.stderr
    assert not (run / "sample").exists()


def test_without_the_shared_umask_the_second_user_is_locked_out(volume):
    # The check above can fail: a probe writing with umask 022 leaves Airflow unable to write.
    output = str(volume / "output")
    probe = _run(PROBE_LIKE, [output, "private"], WORKER)
    assert probe.returncode == 0, probe.stderr
    sample = _sample_keys(output)
    assert sample.returncode != 0
    assert "Permission denied" in sample.stdout + sample.stderr


def test_share_with_group_keeps_a_stricter_other_part():
    previous = os.umask(0o077)
    try:
        share_with_group()
        assert os.umask(0o022) == 0o007
        share_with_group()
        assert os.umask(previous) == 0o002
    finally:
        os.umask(previous)


def test_make_shared_dir_is_setgid_group_writable_and_rerunnable(tmp_path):
    target = tmp_path / "a" / "b"
    make_shared_dir(str(target))
    make_shared_dir(str(target))
    mode = target.stat().st_mode
    assert mode & stat.S_ISGID and stat.S_IMODE(mode) & 0o070 == 0o070
