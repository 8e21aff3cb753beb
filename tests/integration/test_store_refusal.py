"""A real 403 from an S3 server (moto enforcing IAM) fails the probe task once, before any pod.

moto runs in server mode with ``INITIAL_NO_AUTH_ACTION_COUNT=3``: the first three requests (the
bucket, an IAM user, its access key) pass unauthenticated, every later one is checked against
IAM. The user has no policy, so each S3 request pyarrow sends with its key is answered 403
AccessDenied, as a bucket answers a pod whose Workload Identity or IRSA binding is missing.
"""

from __future__ import annotations

import sys

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from test_object_stores import _free_port, _server

pytestmark = pytest.mark.slow
BUCKET = "vlmprobe-denied"
RUN = pendulum.datetime(2026, 11, 25, 2, tz="UTC")


@pytest.fixture(scope="module")
def denying_s3(tmp_path_factory):
    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto-iam") / "server.log"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")  # the server process inherits it
        with _server(cmd, f"{endpoint}/moto-api/", log):
            mp.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
            admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="admin",
                         aws_secret_access_key="admin")
            boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
            iam = boto3.client("iam", **admin)
            iam.create_user(UserName="unbound")
            key = iam.create_access_key(UserName="unbound")["AccessKey"]
            yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                   "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                   "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/vlmprobe"}, log


def test_a_403_in_the_preflight_fails_the_task_once_naming_the_uri_and_identity(dag, denying_s3, monkeypatch, tmp_path):
    from operators import DeploymentSettings, GpuPodOperator
    from podrender import offline_context
    from vlmprobe.preflight import preflight

    env, log = denying_s3
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    marker = tmp_path / "pod-ran"
    op = GpuPodOperator(task_id="probe_403", settings=DeploymentSettings(pod_mode="local"), cmds=[sys.executable],
                        arguments=["-c", f"open({str(marker)!r}, 'w')"], preflight=preflight, retries=3)
    conf = {"input_uri": f"s3://{BUCKET}/vqa/{{run_date}}", "output_uri": f"s3://{BUCKET}/out",
            "target_model": "/models/tiny-llava"}  # a local folder: no revision to pin
    ctx = offline_context(dag, op, RUN, conf)
    op.render_template_fields(ctx)
    before = log.read_text().count('" 403 -')
    with pytest.raises(AirflowFailException) as info:  # Airflow never retries this one, whatever `retries` says
        op.execute(ctx)
    line = str(info.value)
    assert "\n" not in line and not marker.exists()
    assert line.startswith(f"preflight for run date 2026-11-25: access denied to s3://{BUCKET}/vqa/2026-11-25 "
                           "for role arn:aws:iam::123456789012:role/vlmprobe")
    assert "AWS Error ACCESS_DENIED" in line
    # the store really answered 403 (from its request log), once per request pyarrow made
    assert log.read_text().count('" 403 -') > before
