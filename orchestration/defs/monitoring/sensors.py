"""Retrain on drift: a failed `recommendation_drift` check requests one `retrain_job` run, at most one per
monitoring.retrain_cooldown_hours, with the failing rules in the run tags."""

import json
import time

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from orchestration.defs.automation import jobs
from orchestration.defs.monitoring.assets import DRIFT_CHECK
from orchestration.pipeline import DvcPipeline

CHECK_KEY = dg.AssetCheckKey(dg.AssetKey("recommendation_monitoring"), DRIFT_CHECK)


def now() -> float:
    return time.time()  # a function, so tests can move the clock


def _evaluation(record):
    """The AssetCheckEvaluation of an execution record (None while only planned)."""
    event = record.event.dagster_event if record.event else None
    return event.event_specific_data if event is not None else None


def completed_prefix(instance: dg.DagsterInstance, records: list) -> list:
    """The records up to the first one still PLANNED (its check has not finished), in id order.

    An execution record is created PLANNED and later updated in place to SUCCEEDED / FAILED: a cursor that
    passed a planned row would never see it fail (the race of issue 17). So the cursor stops before the first
    planned row and the next tick looks again; a row left PLANNED by a run that has ended (a crash) is
    passed over, so it cannot hold the cursor forever."""
    out = []
    for record in records:
        if record.status == AssetCheckExecutionRecordStatus.PLANNED:
            run = instance.get_run_by_id(record.run_id)
            if run is None or not run.is_finished:
                break
        out.append(record)
    return out


@dg.sensor(
    job=jobs.retrain_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When the recommendation_drift check fails, request retrain_job (at most once per "
    "monitoring.retrain_cooldown_hours); the failing rules and the partition are in the run tags.",
)
def retrain_on_drift(context: dg.SensorEvaluationContext, pipeline: DvcPipeline):
    state = json.loads(context.cursor) if context.cursor else {"after_id": 0, "last_request": None}
    records = context.instance.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=1000)
    new = completed_prefix(context.instance, sorted((r for r in records if r.id > state["after_id"]),
                                                    key=lambda r: r.id))
    if not new:
        return dg.SkipReason("no completed recommendation_drift evaluation since the last tick")
    state["after_id"] = new[-1].id
    failed = [r for r in new if r.status == AssetCheckExecutionRecordStatus.FAILED]
    if not failed:
        context.update_cursor(json.dumps(state))
        return dg.SkipReason(f"{len(new)} drift check evaluation(s), none failed")
    cooldown_s = pipeline.params().monitoring.retrain_cooldown_hours * 3600
    t = now()
    if state["last_request"] is not None and t - state["last_request"] < cooldown_s:
        context.update_cursor(json.dumps(state))
        left = (cooldown_s - (t - state["last_request"])) / 3600
        return dg.SkipReason(f"drift in {len(failed)} evaluation(s), but a retraining was requested "
                             f"{(t - state['last_request']) / 3600:.1f} h ago (cooldown: {left:.1f} h left)")
    latest = failed[-1]
    evaluation = _evaluation(latest)
    metadata = evaluation.metadata if evaluation is not None else {}
    failing = metadata["failing"].value if "failing" in metadata else []
    values = metadata["failing_values"].value if "failing_values" in metadata else {}
    partition = metadata["partition"].value if "partition" in metadata else (latest.partition or "")
    state["last_request"] = t
    context.update_cursor(json.dumps(state))
    return dg.RunRequest(
        run_key=f"drift-{latest.id}",
        tags={
            "slmrec/trigger": "drift",
            "slmrec/drift_partition": str(partition),
            "slmrec/drift_failing": ",".join(failing),
            "slmrec/drift_values": json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in values.items()}, sort_keys=True),
            "slmrec/drift_check_run": latest.run_id,
        },
    )
