"""The report's address for a browser: what the publish task's "Run report" link opens.

No URL is signed: a signed URL needs the storage credentials at publish time and expires (7 days
at most on S3), while the link stays on the task for as long as Airflow keeps the run. Instead:

- ``gs://BUCKET/PATH`` → ``https://storage.cloud.google.com/BUCKET/PATH``, Google's authenticated
  browser URL: it shows the page (publish stores it as ``text/html``) to a person signed in to
  Google with read access to the object (``storage.objects.get``);
- ``s3://BUCKET/KEY`` → the object's page in the AWS console (sign-in, then "Open"), with the
  region when ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` names it. An S3-compatible store
  (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` set) gets the object's path-style URL on that
  endpoint instead, which opens only where the browser may read the object (a bucket policy
  allowing it, or the store's own sign-in); else set ``VLMPROBE_REPORT_BASE_URL``;
- a local path → ``file:///…``. Browsers do not follow a ``file:`` link from an ``http(s)`` page
  (the Airflow UI): copy it into the address bar, or serve the outputs over HTTP and set
  ``VLMPROBE_REPORT_BASE_URL``.

``VLMPROBE_REPORT_BASE_URL`` (on the Airflow workers, where publish runs), when set, wins for every
scheme: an ``http(s)`` URL that serves the deployment's ``output_uri`` (a static file server on the
shared volume, a bucket behind an authenticating proxy); the link is
``{VLMPROBE_REPORT_BASE_URL}/{run_date}/report.html``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlparse

BASE_URL_ENV = "VLMPROBE_REPORT_BASE_URL"


def report_url(report_uri: str, environ: dict[str, str] | None = None) -> str:
    """The URL a browser opens for the report at ``report_uri`` (see the module docstring)."""
    env = os.environ if environ is None else environ
    base = (env.get(BASE_URL_ENV) or "").strip()
    if base:
        run_date, name = report_uri.rstrip("/").rsplit("/", 2)[-2:]
        return f"{base.rstrip('/')}/{quote(run_date)}/{quote(name)}"
    if "://" not in report_uri or report_uri.startswith("file://"):
        path = report_uri[len("file://"):] if report_uri.startswith("file://") else report_uri
        return Path(os.path.abspath(path)).as_uri()
    url = urlparse(report_uri)
    bucket, key = url.netloc, url.path.lstrip("/")
    if url.scheme in ("gs", "gcs"):
        emulator = env.get("STORAGE_EMULATOR_HOST")
        if emulator:
            host = emulator if "://" in emulator else f"http://{emulator}"
            return f"{host.rstrip('/')}/storage/v1/b/{quote(bucket)}/o/{quote(key, safe='')}?alt=media"
        return f"https://storage.cloud.google.com/{quote(bucket)}/{quote(key)}"
    if url.scheme == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            return f"{endpoint.rstrip('/')}/{quote(bucket)}/{quote(key)}"
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        where = f"region={quote(region)}&" if region else ""
        return f"https://s3.console.aws.amazon.com/s3/object/{quote(bucket)}?{where}prefix={quote(key, safe='')}"
    return report_uri  # another scheme pyarrow knows: as it is
