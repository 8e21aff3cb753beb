"""
### vlm_failure_pipeline — where does our VLM fail, and why?

Every night at 02:00 UTC, for the day that just ended:

1. **probe** — after a cheap preflight on the Airflow side (conf keys, input holds parquet files,
   output writable), one pod with `nproc_per_node` GPUs runs the torchrun ranks; each asks the
   target VLM the dataset's questions, and for each wrong answer Gemini completes a
   probing-factor template and verifies it against the image → `probe/rank-*.jsonl`.
2. **sample_keys** — keeps up to `samples_per_key` verified failures per failure key
   (`category:value`) → `sample/failures.jsonl`, `sample/shards.json`.
3. **qa** — per shard: **qa.generate**, one pod that asks Gemini for QA pairs that probe each
   failure's factor → `qa/shard-*.jsonl`. With `qa_mode=batch` the shard's requests go into one
   Batch API job at half price: **qa.submit** (a CPU pod) submits it, **qa.wait** waits for it in
   the triggerer (no pod, no worker slot), then **qa.generate** collects, checks and writes the
   shard as online; what the job did not answer by `batch_deadline_h` goes online. In online mode
   qa.submit and qa.wait are skipped (no pod).
4. **publish** — checks every output, writes `manifest.json` and the run report `report.html`
   (the task's "Run report" link opens it), and emits the `vlmprobe_qa_dataset` Asset event
   with the manifest's counts.

**Dates.** The schedule is a data interval at 02:00 UTC: the run starting at 02:00 on day D
covers [D−1 02:00, D 02:00) and its **run date is D−1**, the start of its data interval.
Catchup is off: unpausing runs at most the latest interval; past days are processed with
`airflow backfill create`. A manual run with a logical date gets the last complete interval
before it (logical date 2026-11-26T02:00 → run date 2026-11-25); a manual run without one gets
the last complete interval before it was triggered (2026-11-26 09:30 → 2026-11-25).
`input_uri` may contain `{run_date}` so each run reads its own day.

Outputs live under `{output_uri}/{run_date}/`; rows that could not be processed are in
`errors/` with their reason. Trigger with config to override any param, or pick a `preset`
(the seed's `8gpu`, `4gpu`, `1gpu`; a key the conf gives still wins); a conf that fails
validation is refused at trigger time, and a conf key that is not a param fails the first task
(no retry) naming the closest valid key. Safe to rerun: each step replaces its outputs.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task, task_group

from operators import BatchSubmitPodOperator, BatchWaitOperator, DeploymentSettings, GpuPodOperator
from vlmprobe.alerts import FailureWebhook, deadline_alert
from vlmprobe.config import ProbeConfig, QAConfig
from vlmprobe.lineage import QA_DATASET, report_linked_task
from vlmprobe.params import DEFAULTS_ENV, PARAM_SPECS, default_overrides, resolve_params, run_params
from vlmprobe.preflight import preflight
from vlmprobe.rundate import NIGHTLY_CRON, run_date_of_dag_run

SETTINGS = DeploymentSettings.from_env()
# One rule for every run (vlmprobe.rundate): the data interval's start, else the interval Airflow
# would infer for a manual run. The light tasks call the same function.
RUN_DATE = "{{ vlmprobe_run_date(dag_run) }}"


def _param(name: str) -> str:
    """A param as the run uses it: the conf's value, else its preset's, else the default (vlmprobe.params)."""
    return f"{{{{ vlmprobe_params(params, dag_run).{name} }}}}"


def _params() -> dict[str, Param]:
    specs = {name: dict(spec) for name, spec in PARAM_SPECS.items()}
    for name, value in (("input_uri", SETTINGS.input_uri), ("output_uri", SETTINGS.output_uri)):
        if value:
            specs[name]["default"] = value
    for name, value in default_overrides(os.environ.get(DEFAULTS_ENV)).items():
        specs[name]["default"] = value
    return {name: Param(**spec) for name, spec in specs.items()}


PARAMS = _params()


def _cli_args(step_config: type) -> list[str]:
    """``--name value`` pairs for the ``vlmprobe`` CLI: every param the step's config takes, rendered.

    Derived from the config, not listed by hand, so a param can never silently not apply to its pod.
    """
    args = ["--run-date", RUN_DATE]
    for name in step_config.model_fields:
        if name in PARAM_SPECS:
            args += [f"--{name.replace('_', '-')}", _param(name)]
    return args


@dag(
    dag_id="vlm_failure_pipeline",
    schedule=CronDataIntervalTimetable(NIGHTLY_CRON, timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["vlmprobe", "gpu"],
    user_defined_macros={"vlmprobe_run_date": run_date_of_dag_run, "vlmprobe_params": run_params},
    default_args={
        "owner": "vlmprobe",
        "retries": 1,
        "retry_delay": pendulum.duration(minutes=5),
        "on_failure_callback": FailureWebhook(),
    },
    deadline=deadline_alert(),
    dagrun_timeout=pendulum.duration(hours=20),
)
def vlm_failure_pipeline():
    probe = GpuPodOperator(
        task_id="probe",
        settings=SETTINGS,
        step="probe",  # CPU and memory per GPU (VLMPROBE_PROBE_*_PER_GPU)
        gpus=_param("nproc_per_node"),
        # GPUs at the deployment's default (VLMPROBE_PARAM_DEFAULTS and its preset included); pool slots
        # are fixed at parse
        pool_slots=resolve_params({name: p.value for name, p in PARAMS.items()})["nproc_per_node"],
        cmds=["vlmprobe"],
        # `vlmprobe probe --nproc_per_node N` starts the torchrun ranks and exits with the failing
        # rank's own code (2 = bad input: not retried), where torchrun would exit 1.
        arguments=[
            "probe", f"--nproc_per_node={_param('nproc_per_node')}", *_cli_args(ProbeConfig),
        ],
        execution_timeout=pendulum.duration(hours=12),
        preflight=preflight,  # cheap checks on the Airflow side before the pod (and its GPUs) exists
    )

    @task
    def sample_keys(params=None, dag_run=None) -> list[str]:
        from vlmprobe.tasks import sample_keys_task

        return sample_keys_task(params, dag_run)

    @task_group(group_id="qa")
    def qa(shard_index: str):
        # qa_mode=batch: submit the shard's Batch API job from a CPU pod (skipped in online mode)
        submit = BatchSubmitPodOperator(
            task_id="submit",
            settings=SETTINGS,
            step="qa",
            gpus=0,
            cpu=SETTINGS.qa_submit_cpu,  # VLMPROBE_QA_SUBMIT_CPU, VLMPROBE_QA_SUBMIT_MEMORY
            memory=SETTINGS.qa_submit_memory,
            pool="default_pool",  # no GPU: not the GPU pool
            cmds=["vlmprobe"],
            arguments=["qa", "--shard-index", shard_index, "--qa-phase", "submit", *_cli_args(QAConfig)],
            execution_timeout=pendulum.duration(hours=2),
        )
        # wait for the job in the triggerer: no pod, no worker slot (skipped in online mode)
        wait = BatchWaitOperator(
            task_id="wait",
            settings=SETTINGS,
            output_uri="{{ params.output_uri }}",
            run_date=RUN_DATE,
            shard_index=shard_index,
            qa_mode="{{ params.qa_mode }}",
            deadline_h="{{ params.batch_deadline_h }}",
            poll_s="{{ params.batch_poll_s }}",
        )
        generate = GpuPodOperator(
            task_id="generate",
            settings=SETTINGS,
            step="qa",  # CPU and memory per pod (VLMPROBE_QA_CPU, VLMPROBE_QA_MEMORY)
            gpus=SETTINGS.qa_gpus,
            cmds=["vlmprobe"],
            # batch mode: answers from the shard's job; online mode: the shard as it always ran
            arguments=["qa", "--shard-index", shard_index, "--qa-phase", "collect", *_cli_args(QAConfig)],
            execution_timeout=pendulum.duration(hours=6),
            trigger_rule="none_failed",  # runs after the skipped submit and wait of online mode
        )
        submit >> wait >> generate

    # none_failed: a run with no verified failures maps zero shards and still publishes.
    # report_linked_task: @task with a "Run report" link on the task (vlmprobe.lineage).
    @report_linked_task(trigger_rule="none_failed", outlets=[QA_DATASET])
    def publish(params=None, dag_run=None, outlet_events=None) -> dict:
        from vlmprobe.tasks import publish_task

        return publish_task(params, dag_run, outlet_events)

    shard_indexes = sample_keys()
    probe >> shard_indexes
    qa.expand(shard_index=shard_indexes) >> publish()


vlm_failure_pipeline()
