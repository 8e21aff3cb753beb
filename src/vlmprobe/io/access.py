"""A store that refuses this process: one line naming the URI and the identity, never a retry.

On GKE Workload Identity or EKS IRSA a missing binding answers every request with 403. pyarrow
raises a plain ``OSError`` for it (``AWS Error ACCESS_DENIED during HeadObject operation``,
``google::cloud::Status(PERMISSION_DENIED: ...)``), the same type as a timeout, so without a look
at the message the task would be retried with the same identity and fail the same way.
:func:`access_denied` turns such an error into :class:`StoreAccessDenied` — an ``InputError``,
exit code 2, which the operator's preflight and the light tasks fail without a retry — worded
as ``access denied to URI for IDENTITY: the store's message``.

The identity is what this process can tell cheaply, without a network call: the IAM role IRSA
puts in ``AWS_ROLE_ARN``, the service account of a key file in ``GOOGLE_APPLICATION_CREDENTIALS``,
and the pod's Kubernetes service account (whose binding Workload Identity and IRSA use), read
from the ``sub`` claim of its mounted token (the token itself is never logged). Local paths name
the uid and groups. Cheap: only a failing store call pays for it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping

from vlmprobe.errors import InputError

# Markers of a refusal in the messages pyarrow's S3 and GCS clients raise; all of them are HTTP 403.
_DENIED = re.compile(r"ACCESS_DENIED|AccessDenied|PERMISSION_DENIED|HTTP status 403|\b403 Forbidden\b|"
                     r"INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH")
# pyarrow's S3 messages name the object: "... for key 'a/b.json' in bucket 'b': AWS Error ..."
_S3_OBJECT = re.compile(r"key '(?P<key>[^']*)' in bucket '(?P<bucket>[^']+)'")
K8S_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
UNKNOWN_IDENTITY = "this worker's identity (its Kubernetes service account's binding)"


class StoreAccessDenied(InputError):
    """The store refused this process (403 or a local permission error): deterministic, never retried."""

    def __init__(self, message: str, uri: str | None, identity: str) -> None:
        super().__init__(message)
        self.uri, self.identity = uri, identity


def is_access_denied(e: BaseException) -> bool:
    """Did the store refuse this process (as opposed to a timeout, a 5xx, a missing object)?"""
    if isinstance(e, PermissionError):
        return True
    return isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and bool(_DENIED.search(str(e)))


def _kubernetes_service_account(token_path: str) -> str | None:
    """``namespace/name`` from the ``sub`` claim of the pod's token (not verified: a label, not a proof)."""
    try:
        with open(token_path, encoding="ascii") as f:
            payload = f.read().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        prefix = "system:serviceaccount:"
        sub = str(claims.get("sub", ""))
        return sub[len(prefix):].replace(":", "/", 1) if sub.startswith(prefix) else None
    except (OSError, IndexError, ValueError):
        return None


def describe_identity(uri: str | None = None, env: Mapping[str, str] | None = None,
                      token_path: str = K8S_TOKEN) -> str:
    """Who this process is to the store of ``uri``, as far as it can tell without a network call."""
    env = os.environ if env is None else env
    if uri is not None and ("://" not in uri or uri.startswith("file://")):
        return f"uid {os.getuid()} (gid {os.getgid()}, groups {', '.join(map(str, os.getgroups())) or 'none'})"
    parts = []
    scheme = uri.split("://", 1)[0] if uri else ""
    if scheme in ("s3", "") and env.get("AWS_ROLE_ARN"):
        parts.append(f"role {env['AWS_ROLE_ARN']}")
    if scheme in ("gs", "gcs", "") and env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        try:
            with open(env["GOOGLE_APPLICATION_CREDENTIALS"], encoding="utf-8") as f:
                email = json.load(f).get("client_email")
            if email:
                parts.append(f"service account {email}")
        except (OSError, ValueError, AttributeError):
            pass
    account = _kubernetes_service_account(token_path)
    if account:
        parts.append(f"Kubernetes service account {account}")
    return " via ".join(parts) if parts else UNKNOWN_IDENTITY


def _uri_in_message(message: str) -> str | None:
    found = _S3_OBJECT.search(message)
    return f"s3://{found['bucket']}/{found['key']}".rstrip("/") if found else None


def access_denied(e: BaseException, uri: str | None = None) -> StoreAccessDenied | None:
    """:class:`StoreAccessDenied` for an error that is a refusal (``uri``: what was being read or
    written; else the object named in the store's message), or None for any other error."""
    if isinstance(e, StoreAccessDenied):
        return e
    if not is_access_denied(e):
        return None
    message = " ".join(str(e).split())
    where = uri or _uri_in_message(message) or getattr(e, "filename", None)
    identity = describe_identity(where)
    fix = ("grant it access to the bucket, or bind this pod's service account to an identity that has it "
           "(helm values storageIdentity; README, Deploy step 4)") if where and "://" in where else \
          "fix the folder's owner or permissions (README, Deploy step 5)"
    error = StoreAccessDenied(f"access denied to {where or 'the store'} for {identity}: {message}; {fix}",
                              where, identity)
    error.__cause__ = e
    return error
