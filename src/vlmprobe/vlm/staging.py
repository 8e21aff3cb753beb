"""The target pinned to a commit and staged once on the data volume; every pod loads that copy offline.

A hub id alone floats: ``from_pretrained("org/name")`` takes what ``main`` holds when a pod starts,
so a new commit would change the target mid-backfill while old resume-journal rows still matched.
So (:func:`revision_problem`, checked by the step configs, the probe's preflight and the loader):

- a Hugging Face hub id needs ``target_revision``, a commit sha of 40 hex digits (a branch or a
  tag would float again);
- a local folder and an ``openai:`` target take none: the folder or the server is what it is.

:func:`stage_target` puts the snapshot of (repo, sha) at
``{staging root}/{org}--{name}/{sha}``; the root is ``$HF_HOME/vlmprobe-targets`` (the step pods'
``HF_HOME`` is ``{data mount}/hf-cache``, on the shared volume). The first process to find it
missing takes a file lock beside it, downloads into ``{sha}.partial`` (a killed download resumes
there) and renames that into place: the folder appears whole or not at all. Every other rank or
pod waits on the lock, then finds the folder. A volume whose locks do not reach across nodes can
cost a second download, never a torn folder. The pods run with ``HF_HUB_OFFLINE=1``
(:mod:`operators.gpu_pod`): this download is the one call that reaches the hub, and lifts offline
mode for itself only; ``from_pretrained`` then reads the staged folder and never asks the hub.

Safe to call from every rank at once, and again on every attempt: a staged revision is reused.
Importing this module is cheap (huggingface_hub and filelock load when a download is due).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from vlmprobe.errors import UsageError
from vlmprobe.vlm import OPENAI_PREFIX, TargetLoadError

log = logging.getLogger("vlmprobe.target")

REVISION = re.compile(r"[0-9a-f]{40}")
STAGING_DIR = "vlmprobe-targets"  # under HF_HOME
LOCK_TIMEOUT_S = 6 * 3600  # how long a rank waits for another's download of the same revision
# Weights in other frameworks' formats: never read by from_pretrained here, often as large as the rest.
IGNORED_FILES = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.gguf", "*.mlmodel"]


def is_local_folder(spec: str) -> bool:
    """Whether ``spec`` names a folder on this machine rather than a hub id (``org/name`` or ``name``)."""
    return os.path.exists(spec) or spec.startswith((".", "~", os.sep)) or spec.count("/") > 1


def is_hub_id(spec: str) -> bool:
    return not spec.startswith(OPENAI_PREFIX) and not is_local_folder(spec)


def revision_problem(target_model: str, target_revision: str | None) -> str | None:
    """Why (``target_model``, ``target_revision``) cannot be loaded as pinned, in one sentence; None if it can."""
    revision = target_revision or ""
    if revision and not REVISION.fullmatch(revision):
        return (f"target_revision {revision!r} is not a commit sha: give the 40 lowercase hex digits of a "
                "commit of the model's repository (a branch or tag name would float)")
    if is_hub_id(target_model) and not revision:
        return (f"target_model {target_model!r} is a Hugging Face hub id without target_revision: pin it to a "
                "commit (the 40-hex sha under 'Files and versions' → history on the model's page), per run "
                "or for the deployment in VLMPROBE_PARAM_DEFAULTS, e.g. {\"target_revision\": \"<sha>\"}")
    if revision and not is_hub_id(target_model):
        kind = "an openai: target" if target_model.startswith(OPENAI_PREFIX) else "a local folder"
        return (f"target_revision is set but target_model {target_model!r} is {kind}, which has no hub revision: "
                "leave target_revision empty")
    return None


def staging_root() -> str:
    """Where staged revisions live: ``$HF_HOME/vlmprobe-targets`` (the pods' HF_HOME is on the data volume)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, STAGING_DIR)


def staged_path(repo_id: str, revision: str, root: str | None = None) -> str:
    return os.path.join(root or staging_root(), repo_id.replace("/", "--"), revision)


@contextmanager
def _hub_reachable() -> Iterator[None]:
    """Lift ``HF_HUB_OFFLINE`` for this download only (huggingface_hub reads it per request)."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _download(repo_id: str, revision: str, into: str) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        with _hub_reachable():
            snapshot_download(repo_id, revision=revision, local_dir=into, ignore_patterns=IGNORED_FILES)
    except RevisionNotFoundError as e:  # deterministic: another attempt finds the same
        raise UsageError(f"target_model {repo_id!r} has no commit {revision}: check target_revision") from e
    except GatedRepoError as e:
        raise UsageError(f"target_model {repo_id!r} is gated: accept its terms and give the pods an HF_TOKEN "
                         f"allowed to read it ({type(e).__name__})") from e
    except RepositoryNotFoundError as e:
        raise UsageError(f"target_model {repo_id!r} is not a repository the hub shows this pod (a typo, or a "
                         "private repository without HF_TOKEN)") from e
    except Exception as e:  # the network, a full volume: worth a retry, which resumes the download
        raise TargetLoadError(f"could not download {repo_id}@{revision} to {into}: {type(e).__name__}: {e}; "
                              "a retry resumes the download") from e


def stage_target(repo_id: str, revision: str | None, root: str | None = None) -> str:
    """The local folder holding ``repo_id`` at commit ``revision``, downloaded first if no process has.

    Raises :class:`UsageError` (exit 2) for a spec that cannot be pinned (:func:`revision_problem`)
    or a repository/commit the hub does not have; :class:`TargetLoadError` (retried) when the
    download fails otherwise.
    """
    problem = revision_problem(repo_id, revision)
    if problem:
        raise UsageError(problem)
    assert revision is not None  # a hub id with no problem has one
    final = staged_path(repo_id, revision, root)
    if os.path.isdir(final):
        log.info("target %s@%s: staged at %s", repo_id, revision[:12], final)
        return final
    from filelock import FileLock, Timeout

    os.makedirs(os.path.dirname(final), exist_ok=True)
    partial = final + ".partial"
    try:
        with FileLock(final + ".lock", timeout=LOCK_TIMEOUT_S):
            if os.path.isdir(final):  # another rank or pod staged it while this one waited
                log.info("target %s@%s: staged by another process at %s", repo_id, revision[:12], final)
                return final
            log.info("target %s@%s: downloading once to %s", repo_id, revision[:12], final)
            _download(repo_id, revision, partial)
            if not os.path.isfile(os.path.join(partial, "config.json")):
                shutil.rmtree(partial, ignore_errors=True)
                raise UsageError(f"target_model {repo_id}@{revision} has no config.json: it is not a model "
                                 "from_pretrained can load")
            try:
                os.rename(partial, final)  # the folder appears whole, or not at all
            except OSError:
                if not os.path.isdir(final):
                    raise
                # a process whose lock did not reach this one (another node) renamed its copy first
                shutil.rmtree(partial, ignore_errors=True)
    except Timeout as e:
        raise TargetLoadError(f"waited {LOCK_TIMEOUT_S} s for another process staging {repo_id}@{revision} "
                              f"({final}.lock); remove the lock file if no pod is downloading") from e
    log.info("target %s@%s: staged at %s", repo_id, revision[:12], final)
    return final
