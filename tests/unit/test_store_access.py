"""A store that refuses the worker (403) fails once, no retry, with the URI and the identity in one line."""

from __future__ import annotations

import base64
import json
import os
import sys
import types

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from vlmprobe.io.access import UNKNOWN_IDENTITY, StoreAccessDenied, access_denied, describe_identity, is_access_denied

S3_403 = ("When listing objects under key 'vqa/2026-11-25/' in bucket 'team-data': AWS Error ACCESS_DENIED during "
          "ListObjectsV2 operation: Access Denied (Request ID: X1)")
GCS_403 = ("google::cloud::Status(PERMISSION_DENIED: Permanent error in ListObjects: airflow@p.iam.gserviceaccount.com "
           "does not have storage.objects.list access to the Google Cloud Storage bucket.)")
TRANSIENT = "When listing objects under key 'vqa' in bucket 'b': AWS Error NETWORK_CONNECTION during ListObjectsV2"
RUN = types.SimpleNamespace(data_interval_start=pendulum.datetime(2026, 11, 25, 2, tz="UTC"),
                            logical_date=pendulum.datetime(2026, 11, 25, 2, tz="UTC"), run_after=None, conf={})


def _token(tmp_path, sub: str) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    path = tmp_path / "token"
    path.write_text(f"{part({'alg': 'RS256'})}.{part({'sub': sub})}.c2lnbmF0dXJl")
    return str(path)


@pytest.mark.parametrize("message, denied", [
    (S3_403, True), (GCS_403, True),
    ("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body.", True),
    (TRANSIENT, False), ("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.", False),
])
def test_refusals_are_told_from_errors_that_may_pass(message, denied):
    assert is_access_denied(OSError(message)) is denied
    assert is_access_denied(FileNotFoundError(S3_403)) is False  # missing is its own, already deterministic
    assert is_access_denied(TimeoutError("read timed out")) is False


def test_the_identity_is_what_the_process_can_tell_without_a_call(tmp_path):
    token = _token(tmp_path, "system:serviceaccount:vlmprobe:airflow-worker")
    assert describe_identity("s3://b/x", {"AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}, token) == \
        "role arn:aws:iam::1:role/r via Kubernetes service account vlmprobe/airflow-worker"
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"client_email": "sa@p.iam.gserviceaccount.com", "private_key": "SECRET"}))
    gcs = describe_identity("gs://b/x", {"GOOGLE_APPLICATION_CREDENTIALS": str(key)}, token)
    assert gcs == "service account sa@p.iam.gserviceaccount.com via Kubernetes service account vlmprobe/airflow-worker"
    assert "SECRET" not in gcs
    assert describe_identity("gs://b/x", {}, str(tmp_path / "no-token")) == UNKNOWN_IDENTITY
    assert describe_identity("/data/out", {}).startswith(f"uid {os.getuid()} (gid {os.getgid()}")


def test_the_line_names_the_uri_the_identity_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/vlmprobe")
    error = access_denied(OSError(S3_403))
    assert isinstance(error, StoreAccessDenied) and error.exit_code == 2
    assert str(error).startswith("access denied to s3://team-data/vqa/2026-11-25 for role "
                                 "arn:aws:iam::123456789012:role/vlmprobe")
    assert "AWS Error ACCESS_DENIED" in str(error) and "storageIdentity" in str(error)
    assert access_denied(OSError(S3_403), "s3://team-data/vqa").uri == "s3://team-data/vqa"
    assert access_denied(OSError(TRANSIENT)) is None


def test_the_preflight_fails_without_retry_on_a_403(tmp_path, demo_parquet, monkeypatch):
    import vlmprobe.io.fs as fs
    from vlmprobe.params import defaults
    from vlmprobe.preflight import preflight

    def refuse(uri, suffix=""):
        raise OSError(S3_403)

    monkeypatch.setattr(fs, "list_files", refuse)
    params = {**defaults(), "input_uri": "s3://team-data/vqa/{run_date}", "output_uri": str(tmp_path / "out"),
              "target_revision": "0123456789abcdef0123456789abcdef01234567"}
    with pytest.raises(AirflowFailException) as info:
        preflight({"params": params, "dag_run": RUN})
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("preflight for run date 2026-11-25: access denied to s3://team-data/vqa/2026-11-25 for ")


def test_the_light_tasks_fail_without_retry_on_a_403_and_retry_other_errors():
    from vlmprobe.tasks import fail_without_retry

    with pytest.raises(AirflowFailException, match=r"^sample_keys: access denied to s3://team-data/vqa/2026-11-25 for "):
        with fail_without_retry("sample_keys"):
            raise OSError(S3_403)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"), fail_without_retry("publish"):
        raise OSError(TRANSIENT)


def test_the_operator_fails_any_preflight_refused_by_the_store_without_retry(dag, monkeypatch):
    from operators import DeploymentSettings, GpuPodOperator
    from podrender import offline_context

    def preflight(context):
        raise OSError(GCS_403)

    op = GpuPodOperator(task_id="p", settings=DeploymentSettings(pod_mode="local"), cmds=[sys.executable],
                        arguments=["-c", "raise SystemExit(9)"], preflight=preflight)
    ctx = offline_context(dag, op, RUN.logical_date)
    op.render_template_fields(ctx)
    with pytest.raises(AirflowFailException, match=r"^preflight: access denied to the store for .*PERMISSION_DENIED"):
        op.execute(ctx)
