"""Retrain after new landing data; report every failed run.

    landing file -> landing_folder_sensor -> landing_ingest_job (landing_interactions, one day)
                 -> retrain_after_landing -> retrain_job (raw_interactions ... promoted_model)
    any failed run -> alert_on_run_failure -> log + one JSON line in automation.alerts_file
"""

import dagster as dg

from orchestration.alerts import append_alert
from orchestration.defs.automation import jobs
from orchestration.pipeline import DvcPipeline

LANDING = dg.AssetKey("landing_interactions")


def _brought_new_rows(record: dg.EventLogRecord) -> bool:
    """False for a landing materialization that re-ingested an already ingested file (nothing changed)."""
    already = record.asset_materialization.metadata.get("already_ingested")
    return not (already is not None and already.value)


@dg.sensor(
    job=jobs.retrain_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After landing partitions materialize with new rows, request one retrain_job run for all of them.",
)
def retrain_after_landing(context: dg.SensorEvaluationContext):
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=LANDING, after_storage_id=after), limit=1000, ascending=True
    ).records
    if not records:
        return dg.SkipReason("no landing partition materialized since the last request")
    context.update_cursor(str(records[-1].storage_id))
    new = [r for r in records if _brought_new_rows(r)]
    if not new:
        return dg.SkipReason(f"{len(records)} landing materialization(s), all re-ingested files: nothing to retrain on")
    days = sorted({r.partition_key for r in new})
    return dg.RunRequest(
        run_key=f"landing-{records[-1].storage_id}",
        tags={"slmrec/trigger": "landing", "slmrec/landing_days": f"{days[0]}..{days[-1]} ({len(days)} days)"},
    )


def _user_error(error):
    """The user's exception inside Dagster's wrappers (DagsterExecutionStepExecutionError -> cause)."""
    while error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    return error


def failure_alert(context: dg.RunFailureSensorContext) -> dict:
    """One alert: which run and job, which step failed and why (the first line a user needs)."""
    run = context.dagster_run
    steps = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        user = data.user_failure_data  # set by dg.Failure (stage failures, refused promotions)
        error = _user_error(data.error) if data.error else None
        steps.append({
            "step": event.step_key,
            "error": user.description if user and user.description else (error.message.strip() if error else ""),
            "error_class": error.cls_name if error else None,
        })
    return {
        "alert": "run failed",
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_steps": steps,
        "message": context.failure_event.message,
        "tags": {k: v for k, v in run.tags.items() if k.startswith(("slmrec/", "dagster/partition", "dagster/schedule",
                                                                     "dagster/sensor", "dagster/retry"))},
    }


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run of this code location: an error log line and a JSON line in "
    "automation.alerts_file (run id, job, failing step, error).",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, pipeline: DvcPipeline) -> None:
    path = pipeline.path(pipeline.params().automation.alerts_file)
    alert = append_alert(path, failure_alert(context))
    where = ", ".join(f"{s['step']}: {s['error']}" for s in alert["failed_steps"]) or alert["message"]
    context.log.error(f"run {alert['run_id']} of {alert['job']} failed — {where} (alert in {path})")
