"""
### vlm_failure_pipeline — where does our VLM fail, and why?

Every night (02:00 UTC) for the previous day's data:

1. **probe** — one pod with `nproc_per_node` GPUs runs `torchrun`; each rank asks the target
   VLM the dataset's questions, and for each wrong answer Gemini completes a probing-factor
   template and verifies it against the image → `probe/rank-*.jsonl`.
2. **sample_keys** — keeps up to `samples_per_key` verified failures per failure key
   (`category:value`) → `sample/failures.jsonl`, `sample/shards.json`.
3. **qa.generate** — one pod per shard asks Gemini for QA pairs that probe each failure's
   factor → `qa/shard-*.jsonl`.
4. **publish** — checks every output and writes `manifest.json`.

Outputs live under `{output_uri}/{run_date}/`; rows that could not be processed are in
`errors/` with their reason. Trigger with config to override any param; a conf that fails
validation is refused before anything runs. Safe to rerun: each step replaces its outputs.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task, task_group

from operators import DeploymentSettings, GpuPodOperator
from vlmprobe.params import PARAM_SPECS

SETTINGS = DeploymentSettings.from_env()
# A manual run may have no logical date: then the run date is when it was triggered.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"


def _params() -> dict[str, Param]:
    specs = {name: dict(spec) for name, spec in PARAM_SPECS.items()}
    for name, value in (("input_uri", SETTINGS.input_uri), ("output_uri", SETTINGS.output_uri)):
        if value:
            specs[name]["default"] = value
    return {name: Param(**spec) for name, spec in specs.items()}


def _cli_args(*names: str) -> list[str]:
    """``--name value`` pairs for the ``vlmprobe`` CLI, the values rendered from params."""
    args = ["--run-date", RUN_DATE]
    for name in names:
        args += [f"--{name.replace('_', '-')}", f"{{{{ params.{name} }}}}"]
    return args


@dag(
    dag_id="vlm_failure_pipeline",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=True,
    max_active_runs=1,
    params=_params(),
    doc_md=__doc__,
    tags=["vlmprobe", "gpu"],
    default_args={
        "owner": "vlmprobe",
        "retries": 1,
        "retry_delay": pendulum.duration(minutes=5),
    },
    dagrun_timeout=pendulum.duration(hours=20),
)
def vlm_failure_pipeline():
    probe = GpuPodOperator(
        task_id="probe",
        settings=SETTINGS,
        step="probe",  # CPU and memory per GPU (VLMPROBE_PROBE_*_PER_GPU)
        gpus="{{ params.nproc_per_node }}",
        pool_slots=PARAM_SPECS["nproc_per_node"]["default"],  # GPUs at the default; pool slots are fixed at parse
        cmds=["torchrun"],
        arguments=[
            "--standalone", "--nproc_per_node={{ params.nproc_per_node }}", "--no-python", "vlmprobe", "probe",
            *_cli_args("input_uri", "output_uri", "target_model", "gemini_model", "seed",
                       "failure_batch_size", "parquet_sample_size", "concurrency", "request_delay"),
        ],
        execution_timeout=pendulum.duration(hours=12),
    )

    @task
    def sample_keys(params=None, dag_run=None) -> list[str]:
        from vlmprobe.tasks import sample_keys_task

        return sample_keys_task(params, dag_run)

    @task_group(group_id="qa")
    def qa(shard_index: str):
        GpuPodOperator(
            task_id="generate",
            settings=SETTINGS,
            step="qa",  # CPU and memory per pod (VLMPROBE_QA_CPU, VLMPROBE_QA_MEMORY)
            gpus=SETTINGS.qa_gpus,
            cmds=["vlmprobe"],
            arguments=[
                "qa", "--shard-index", shard_index,
                *_cli_args("output_uri", "gemini_model", "concurrency", "batch_size", "request_delay",
                           "no_async"),
            ],
            execution_timeout=pendulum.duration(hours=6),
        )

    # none_failed: a run with no verified failures maps zero shards and still publishes.
    @task(trigger_rule="none_failed")
    def publish(params=None, dag_run=None) -> dict:
        from vlmprobe.tasks import publish_task

        return publish_task(params, dag_run)

    shard_indexes = sample_keys()
    probe >> shard_indexes
    qa.expand(shard_index=shard_indexes) >> publish()


vlm_failure_pipeline()
