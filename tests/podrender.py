"""Render the DAG's pod tasks offline: no cluster, no database (after shared/snippets/k8s_render.py)."""

from __future__ import annotations

import copy
import types

import pendulum
from kubernetes.client import ApiClient

from airflow.sdk.definitions.param import process_params


def resolve_params(dag, task, conf):
    """Merge and validate conf like the task runner (raises ParamValidationError on bad conf).

    process_params sets conf values on the Param objects it merges, so it gets copies.
    """
    return process_params(types.SimpleNamespace(params=copy.deepcopy(dag.params)),
                          types.SimpleNamespace(params=copy.deepcopy(task.params)), conf,
                          suppress_exception=False)


def offline_context(dag, task, logical_date, conf=None, map_index=-1, run_id="scheduled__test"):
    ld = pendulum.instance(logical_date) if logical_date is not None else None
    run_after = ld or pendulum.datetime(2026, 11, 26, 9, 30, tz="UTC")
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, map_index=map_index,
                               try_number=1, run_id=run_id)
    ctx = {
        "dag_run": types.SimpleNamespace(run_id=run_id, run_after=run_after, logical_date=ld, conf=conf or {},
                                         run_type=run_id.split("__", 1)[0]),
        "dag": dag, "task": task, "ti": ti, "task_instance": ti, "run_id": run_id,
        "logical_date": ld, "data_interval_start": ld, "data_interval_end": ld,
        "params": resolve_params(dag, task, conf),
    }
    if ld is not None:
        ctx.update(ds=ld.strftime("%Y-%m-%d"), ds_nodash=ld.strftime("%Y%m%d"), ts=ld.isoformat())
    return ctx


def render_task(dag, task_id, logical_date, conf=None, mapped_values=None):
    """The task, copied, with its templates rendered; mapped-group arguments replaced by ``mapped_values``."""
    task = copy.deepcopy(dag.get_task(task_id))  # rendering mutates nested k8s objects in place
    if mapped_values:
        from airflow.sdk.definitions._internal.expandinput import MappedArgument

        task.arguments = [mapped_values[a._key] if isinstance(a, MappedArgument) else a for a in task.arguments]
    ctx = offline_context(dag, task, logical_date, conf)
    task.render_template_fields(ctx)
    return task, ctx


def render_pod(dag, task_id, logical_date, conf=None, mapped_values=None):
    """(V1Pod, camelCase dict) of a pod task for a logical date and conf."""
    task, ctx = render_task(dag, task_id, logical_date, conf, mapped_values)
    pod = task.build_pod_request_obj(ctx, dry_run=True)
    return pod, ApiClient().sanitize_for_serialization(pod)
