"""Retrain on drift, without retrain storms.

    recommendation_monitoring (per day; metadata `verdict`) -> retrain_on_drift -> retrain_job
                                                            -> promoted_model's champion/challenger gate

The sensor reads completed `recommendation_monitoring` materializations only (public
`fetch_materializations`; the verdict and the failing rules are in their metadata): a materialization
exists only once its step finished, so no evaluation can be seen half-done (the PLANNED -> FAILED race of
issue 17 cannot happen). On a `drift` verdict:

- a retrain it requested earlier is still pending or running -> wait;
- that retrain ended without promoting (the gate refused the candidate: not non-inferior to the champion,
  or the run failed) -> alert and stop;
- `monitoring.max_drift_retrains` drift retrains in a row did not end the drift (no `ok` window since)
  -> alert and stop;
- no new data since the champion was promoted or since the last drift retrain (landing materializations
  that brought new rows; retraining would reproduce the same model) -> alert and stop;
- inside `monitoring.retrain_cooldown_hours` of the last request -> wait;
- else request one `retrain_job` run (tags: the partition, failing rules and values, the request id).

A day is monitored again when its ground truth completes (the daily schedule): that evaluation is news
only for a rule that had not failed on that day before (the cursor keeps each day's failing rules).

Stopped, it stays stopped (one alert, then skips that say why) until the world or a person acts: a stop
for no new data or a refused retrain ends when new data lands after it; every drift retrain counts
toward `max_drift_retrains` until a window later than the last drift is judged `ok` (an old day judged
again does not count), so new data arriving daily cannot turn
a drift that retraining does not fix into a retrain storm (at most max_drift_retrains per drift episode);
the stop for the streak ends only with an `ok` window. A person resets the sensor's cursor in the UI
(Automation -> retrain_on_drift -> Reset cursor) to start afresh. Alerts go to the log and to
automation.alerts_file (one JSON line each).
"""

import json
import time

import dagster as dg

from orchestration.alerts import append_alert
from orchestration.defs.automation import jobs
from orchestration.pipeline import DvcPipeline

MONITORING = dg.AssetKey("recommendation_monitoring")
PROMOTED = dg.AssetKey("promoted_model")
LANDING = dg.AssetKey("landing_interactions")
REQUEST_TAG = "slmrec/drift_request"
START = {"after_id": 0, "last_request": None, "request": None, "data_mark": None, "streak": 0, "halted": None,
         "halted_kind": None, "judged": {}, "last_drift_day": None}
KEEP_PARTITIONS = 90  # how many partitions' failing rules the cursor remembers


def now() -> float:
    return time.time()  # a function, so tests can move the clock


def _meta(record: dg.EventLogRecord, name: str, default=None):
    metadata = record.asset_materialization.metadata
    return metadata[name].value if name in metadata else default


def _records(instance: dg.DagsterInstance, key: dg.AssetKey, after: int | None = None, limit: int = 1000) -> list:
    return instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, after_storage_id=after),
                                           limit=limit, ascending=True).records


def champion_mark(instance: dg.DagsterInstance) -> int | None:
    """The storage id of the latest promotion this instance saw: landing data after it is new to the champion."""
    latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=PROMOTED), limit=1,
                                             ascending=False).records
    return latest[0].storage_id if latest else None


def new_landing(instance: dg.DagsterInstance, after: int | None) -> list:
    """Landing materializations after storage id `after` that brought new rows (a re-ingested file did not)."""
    return [r for r in _records(instance, LANDING, after) if not _meta(r, "already_ingested", False)]


def request_outcome(instance: dg.DagsterInstance, request_id: str) -> str:
    """pending (not launched yet) | running | promoted | not promoted (the gate refused, or the run failed)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request_id}), limit=5)
    if not runs:
        return "pending"
    run = runs[0]  # newest first: a retried run replaces the first attempt
    if not run.is_finished:
        return "running"
    return "promoted" if run.status == dg.DagsterRunStatus.SUCCESS else "not promoted"


@dg.sensor(
    job=jobs.retrain_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="On a drift verdict of recommendation_monitoring, request retrain_job (its candidate meets the "
    "champion/challenger gate) when new data arrived since the champion; alert and stop instead when there is "
    "no new data, when the last drift retrain did not replace the champion, or after monitoring.max_drift_"
    "retrains retrains that did not end the drift. At most one request per monitoring.retrain_cooldown_hours.",
)
def retrain_on_drift(context: dg.SensorEvaluationContext, pipeline: DvcPipeline):
    state = {**json.loads(json.dumps(START)), **(json.loads(context.cursor) if context.cursor else {})}  # a fresh copy
    params = pipeline.params()
    mon = params.monitoring
    instance = context.instance

    def save():
        context.update_cursor(json.dumps(state, sort_keys=True))

    def halt(reason: str, kind: str, **details):
        state["halted"], state["halted_kind"] = reason, kind
        landed = _records(instance, LANDING, state["data_mark"])
        if landed:
            state["data_mark"] = landed[-1].storage_id  # only data landing after the stop resumes the loop
        save()
        append_alert(pipeline.path(params.automation.alerts_file),
                     {"alert": "drift retraining stopped", "reason": reason, **details})
        context.log.error(f"drift retraining stopped: {reason} (alert in {params.automation.alerts_file})")
        return dg.SkipReason(f"stopped: {reason}; waiting for new data or a person (reset the cursor)")

    records = _records(instance, MONITORING, state["after_id"] or None)
    if records:
        state["after_id"] = records[-1].storage_id
    verdicts = [_meta(r, "verdict") for r in records]
    # a day is monitored again when its ground truth completes: only a rule that newly fails there is news
    drift = []
    for record, verdict in zip(records, verdicts):
        day = _meta(record, "partition", record.partition_key or "")
        if verdict == "ok" and day > (state["last_drift_day"] or ""):
            state["streak"] = 0  # a window later than the last drift judged ok: the drift ended
            if state["halted_kind"] == "streak":
                state["halted"] = state["halted_kind"] = None
        if verdict != "drift":
            continue
        state["last_drift_day"] = max(day, state["last_drift_day"] or "")
        failing = set(_meta(record, "failing", []))
        if failing - set(state["judged"].get(day, [])):
            drift.append(record)
        state["judged"][day] = sorted(failing | set(state["judged"].get(day, [])))
    state["judged"] = dict(sorted(state["judged"].items())[-KEEP_PARTITIONS:])

    if state["request"]:
        outcome = request_outcome(instance, state["request"])
        if outcome in ("pending", "running"):
            save()
            return dg.SkipReason(f"the drift retrain {state['request']} is {outcome}")
        request, state["request"] = state["request"], None
        if outcome == "not promoted" and not state["halted"]:
            return halt(f"the drift retrain {request} did not replace the champion (refused by the "
                        "champion/challenger gate, or failed)", "refused", request=request)
    if not drift:
        save()
        if not records:
            return dg.SkipReason("no monitoring evaluation since the last tick")
        again = sum(v == "drift" for v in verdicts)
        return dg.SkipReason(f"{len(records)} new monitoring evaluation(s), no drift" if not again else
                             f"{len(records)} new monitoring evaluation(s), no new drift ({again} day(s) judged again "
                             "with rules that had failed there before)")
    latest = drift[-1]
    partition = _meta(latest, "partition", latest.partition_key or "")
    mark = state["data_mark"] if state["data_mark"] is not None else champion_mark(instance)
    fresh = new_landing(instance, mark)
    if state["halted"]:
        if not fresh or state["halted_kind"] == "streak":
            save()
            waiting = "a window judged ok" if state["halted_kind"] == "streak" else "new data"
            return dg.SkipReason(f"drift on {partition}, but stopped: {state['halted']}; waiting for {waiting} or a "
                                 "person (reset the cursor)")
        context.log.info(f"new data since the stop ({len(fresh)} landing materialization(s)): drift retraining resumes")
        state["halted"] = state["halted_kind"] = None
    if state["streak"] >= mon.max_drift_retrains:
        return halt(f"{state['streak']} drift retrain(s) since the last window judged ok did not end the drift "
                    f"(latest on {partition}: {', '.join(_meta(latest, 'failing', []))})", "streak", partition=partition)
    if not fresh:
        return halt(f"drift on {partition} ({', '.join(_meta(latest, 'failing', []))}) with no new data since the "
                    "champion was trained: a retrain would reproduce it", "no_data", partition=partition)
    cooldown_s = mon.retrain_cooldown_hours * 3600
    t = now()
    if state["last_request"] is not None and t - state["last_request"] < cooldown_s:
        save()
        left = (cooldown_s - (t - state["last_request"])) / 3600
        return dg.SkipReason(f"drift in {len(drift)} evaluation(s), but a retraining was requested "
                             f"{(t - state['last_request']) / 3600:.1f} h ago (cooldown: {left:.1f} h left)")
    request = f"drift-{latest.storage_id}"
    values = _meta(latest, "failing_values", {})
    state.update(request=request, last_request=t, data_mark=fresh[-1].storage_id, streak=state["streak"] + 1)
    save()
    return dg.RunRequest(
        run_key=request,
        tags={
            "slmrec/trigger": "drift",
            REQUEST_TAG: request,
            "slmrec/drift_partition": str(partition),
            "slmrec/drift_failing": ",".join(_meta(latest, "failing", [])),
            "slmrec/drift_values": json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in values.items()}, sort_keys=True),
            "slmrec/drift_check_run": latest.run_id,
        },
    )
