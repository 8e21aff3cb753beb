"""Checks that run on the Airflow side before anything expensive starts.

:func:`check_conf_keys` refuses a trigger conf naming a key that is not a param (a typo would
otherwise be ignored and the default used), naming the closest valid key. :func:`preflight` runs
before the probe pod is created — its GPUs are the expensive part — and checks, cheaply:

1. the conf's keys, and the form of ``input_uri`` / ``output_uri`` (allowed schemes); a hub-id
   ``target_model`` pinned by ``target_revision`` (:mod:`vlmprobe.vlm.staging`);
2. ``input_uri``, after ``{run_date}`` expansion, exists and holds ``.parquet`` files;
3. ``output_uri`` is writable: a marker file is created under ``{output_uri}/{run_date}/`` and
   deleted again.

A failed check raises ``AirflowFailException``: the task fails at once, without a retry, with a
sentence that says what to change. A store that refuses this worker (a 403: Workload Identity or
IRSA not bound) is such a failure too, named with the URI and the worker's identity
(:mod:`vlmprobe.io.access`). A storage error that may pass (a timeout, a 503) is left to
propagate as it is, so the task's normal retry applies.

Imported at DAG parse time (the DAG hands :func:`preflight` to the probe task): nothing heavy at
module level.
"""

from __future__ import annotations

import difflib
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from vlmprobe.errors import InputError, UsageError, VlmprobeError
from vlmprobe.params import PARAM_SPECS, run_params, uri_form_problem
from vlmprobe.rundate import expand_uri, run_date_of_dag_run

log = logging.getLogger("vlmprobe.preflight")

URI_PARAMS = ("input_uri", "output_uri")


def check_conf_keys(keys: Iterable[str], valid: Iterable[str] = PARAM_SPECS) -> None:
    """Raise :class:`UsageError` when a key is not a param: the closest valid key, and the others."""
    valid = sorted(valid)
    unknown = sorted({k for k in keys if k not in valid})
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "key" if len(unknown) == 1 else "keys"
    raise UsageError(f"unknown conf {noun} {', '.join(parts)}; valid keys: {', '.join(valid)}")


def check_uri_forms(params: Mapping[str, Any]) -> None:
    """Raise :class:`UsageError` when input_uri or output_uri is not an allowed form."""
    problems = [p for name in URI_PARAMS if name in params
                if (p := uri_form_problem(name, str(params[name])))]
    if problems:
        raise UsageError("; ".join(problems))


def check_conf(params: Mapping[str, Any], conf: Mapping[str, Any] | None) -> None:
    """The conf checks every task makes: its keys (those of the resolved params too) and URI forms.

    Airflow merges a trigger's conf into the params, unknown keys included, so both are looked at.
    """
    check_conf_keys([*(conf or {}), *params])
    check_uri_forms(params)


def check_input(input_uri: str, run_date: str) -> str:
    """The expanded input URI; :class:`InputError` when it is missing or holds no parquet file."""
    from vlmprobe.io.access import access_denied
    from vlmprobe.io.fs import list_files

    uri = expand_uri(input_uri, run_date)
    shown = uri if uri == input_uri else f"{uri} (input_uri {input_uri} for run date {run_date})"
    try:
        files = list_files(uri, suffix=".parquet")
    except FileNotFoundError:
        raise InputError(f"input {shown} does not exist: check input_uri and the run date") from None
    except OSError as e:  # a refusal is deterministic; anything else (a timeout) propagates: retried
        raise access_denied(e, uri) or e
    if not files:
        raise InputError(f"input {shown} holds no .parquet files (names starting with _ or . are skipped)")
    log.info("input %s: %d parquet file(s)", uri, len(files))
    return uri


def check_output_writable(output_uri: str, run_date: str) -> None:
    """Create and delete a marker under ``{output_uri}/{run_date}/``; :class:`InputError` if refused."""
    from vlmprobe.io.access import access_denied
    from vlmprobe.io.fs import is_local, join, remove_file, write_json

    marker = join(output_uri, run_date, f"_preflight-{uuid.uuid4().hex[:12]}.json")
    try:
        write_json(marker, {"run_date": run_date, "check": "output writable"})
        remove_file(marker)
    except (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError) as e:
        # deterministic; other OSErrors (a timeout, a 503) propagate and the task's retry applies
        denied = None if is_local(output_uri) else access_denied(e, join(output_uri, run_date))
        if denied is not None:
            raise denied
        raise InputError(f"output_uri {output_uri} is not writable ({e}); fix its permissions or choose "
                         f"another output_uri") from None
    except OSError as e:  # an object store's 403
        raise access_denied(e, join(output_uri, run_date)) or e
    log.info("output %s is writable", join(output_uri, run_date))


def check_target_pin(params: Mapping[str, Any]) -> None:
    """Raise :class:`UsageError` when the target cannot be loaded as pinned (a hub id needs a commit sha)."""
    from vlmprobe.vlm.staging import revision_problem

    if problem := revision_problem(str(params.get("target_model") or ""), params.get("target_revision")):
        raise UsageError(problem)


def check_probe(params: Mapping[str, Any], conf: Mapping[str, Any] | None, run_date: str) -> None:
    """Everything the probe pod would find out too late, as :class:`VlmprobeError`\\ s."""
    check_conf(params, conf)
    check_target_pin(params)
    check_input(str(params["input_uri"]), run_date)
    check_output_writable(str(params["output_uri"]), run_date)


def preflight(context: Mapping[str, Any]) -> None:
    """The probe task's preflight (the operator's hook): :func:`check_probe` for this DAG run.

    Raises ``AirflowFailException`` — no retry — on a failed check.
    """
    from vlmprobe.shared_volume import share_with_group

    # the output check creates {output_uri}/{run_date}/: group-writable, so the pods can write in it
    share_with_group()
    dag_run = context["dag_run"]
    run_date = run_date_of_dag_run(dag_run)
    try:
        # the values the pod gets: the conf's, else its preset's, else the defaults
        check_probe(run_params(context["params"], dag_run), getattr(dag_run, "conf", None), run_date)
    except VlmprobeError as e:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"preflight for run date {run_date}: {e}") from e
    log.info("preflight passed for run date %s", run_date)
