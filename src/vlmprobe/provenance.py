"""Where a run came from: the code that ran, the input files it read, the images and conf.

- :func:`code_version`: the package version and the git commit — ``VLMPROBE_GIT_SHA``, baked into
  the images at build time (``--build-arg VLMPROBE_GIT_SHA=$(git rev-parse HEAD)``), else
  ``git rev-parse HEAD`` when the code runs from a checkout, else ``"unknown"``.
- :func:`file_fingerprint`: what the store says of an input file (size, modification time), so a
  file replaced under the same name after the run can be told apart. pyarrow's ``FileInfo`` gives
  no ETag or generation; neither is recorded.
- :func:`run_provenance`: the manifest's :class:`~vlmprobe.contracts.Provenance`, from the
  probe's ``_SUCCESS.json`` (its code and input fingerprints, recorded by rank 0 at plan time),
  the pods' images (their tasks' XComs, :mod:`operators.gpu_pod`) and the trigger's conf.

Cheap to import (the probe's rank 0 and the Airflow worker both use it).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

log = logging.getLogger("vlmprobe.provenance")

GIT_SHA_ENV = "VLMPROBE_GIT_SHA"
# The Gemini endpoint the deployment points the pods at (operators' settings) or a step's own.
TEACHER_ENDPOINT_ENVS = ("VLMPROBE_GEMINI_BASE_URL", "GEMINI_BASE_URL")


@functools.lru_cache(maxsize=1)
def code_version() -> Any:
    """This process's :class:`~vlmprobe.contracts.CodeVersion` (computed once)."""
    from vlmprobe import __version__
    from vlmprobe.contracts import CodeVersion

    baked = os.environ.get(GIT_SHA_ENV, "").strip()
    if baked and baked != "unknown":
        return CodeVersion(version=__version__, git_commit=baked, source="image")
    commit = _checkout_commit(Path(__file__).resolve().parent)
    if commit:
        return CodeVersion(version=__version__, git_commit=commit, source="checkout")
    return CodeVersion(version=__version__, git_commit="unknown", source="unknown")


def _checkout_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding ``folder``, or None (no git, not a checkout, a slow disk)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) >= 40 else None


def file_fingerprint(uri: str) -> dict[str, Any]:
    """``{uri, size, mtime}`` of one file as its store reports it (None where it cannot tell)."""
    from vlmprobe.io.fs import resolve

    size: int | None = None
    mtime: str | None = None
    try:
        fs, path = resolve(uri)
        info = fs.get_file_info(path)
        if info.size is not None and info.size >= 0:
            size = int(info.size)
        if info.mtime is not None:
            stamp = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=dt.timezone.utc)
            mtime = stamp.astimezone(dt.timezone.utc).isoformat()
    except OSError:  # gone or refused since it was listed: the plan records it as lost anyway
        pass
    return {"uri": uri, "size": size, "mtime": mtime}


def probe_provenance(plan_fingerprints: Iterable[Mapping[str, Any]], target_revision: str | None) -> Any:
    """The probe's :class:`~vlmprobe.contracts.ProbeProvenance`: this code, the plan's input fingerprints."""
    from vlmprobe.contracts import InputFile, ProbeProvenance

    return ProbeProvenance(code=code_version(), input_files=[InputFile(**f) for f in plan_fingerprints],
                           target_revision=target_revision)


def teacher_endpoint() -> str | None:
    """The Gemini base URL this deployment sets (the simulator in the demo); None: Google's own."""
    for name in TEACHER_ENDPOINT_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def run_provenance(probe: Any, conf: Mapping[str, Any] | None, worker_images: Iterable[Mapping[str, Any]]) -> Any:
    """The manifest's :class:`~vlmprobe.contracts.Provenance` from the probe's ``_SUCCESS.json`` (a
    :class:`~vlmprobe.contracts.ProbeSuccess`), the trigger's conf and the pods' image records."""
    from vlmprobe.contracts import InputFile, Provenance, WorkerImage
    from vlmprobe.teacher.prompts import PROMPTS_VERSION

    recorded = probe.provenance
    if recorded is not None:
        files = list(recorded.input_files)
    else:  # a _SUCCESS.json from before fingerprints: the file names alone
        files = [InputFile(uri=u, size=None, mtime=None) for u in probe.input_files]
    images = []
    for record in worker_images:
        try:
            images.append(WorkerImage.model_validate(record))
        except ValidationError:  # another operator version's record: left out, said so
            log.warning("a worker image record is not one this vlmprobe reads, left out: %s", record)
    images.sort(key=lambda w: (w.step != "probe", w.step, w.map_index))
    return Provenance(
        code=code_version(),
        probe_code=recorded.code if recorded is not None else None,
        worker_images=images,
        target_model=probe.target_model,
        target_revision=recorded.target_revision if recorded is not None else None,
        teacher_model=probe.teacher_model,
        teacher_endpoint=teacher_endpoint(),
        prompts_version=PROMPTS_VERSION,
        template_version=probe.template_version,
        input_uri=probe.input_uri,
        input_files=files,
        conf=dict(conf) if conf is not None else None,
    )
