"""Schedules: periodic retraining (starts stopped) and the daily recommendation + monitoring loop (running).

    daily_recommendations (every day, 02:00 UTC) -> yesterday: recommendations + recommendation_monitoring
                                                 -> the day truth_days + 1 before: recommendation_monitoring
                                                    again, with its delayed ground truth now in
"""

import dagster as dg

from orchestration.defs.automation import jobs
from orchestration.pipeline import PROJECT_DIR
from slmrec.config import load_params
from slmrec.days import day_name, shift_day

PARAMS = load_params(PROJECT_DIR / "params.yaml")

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=jobs.retrain_job,
    cron_schedule=PARAMS.automation.retrain_cron,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain on whatever the raw files and landing folder hold now (automation.retrain_cron).",
)


def daily_requests(tick_time: float, truth_days: int, first_day: str) -> list[dg.RunRequest]:
    """The runs of one tick: yesterday's lists + monitoring, and the day whose ground truth is now complete."""
    yesterday = shift_day(day_name(tick_time), -1)
    requests = []
    if yesterday >= first_day:
        requests.append(dg.RunRequest(run_key=f"daily-{yesterday}", partition_key=yesterday))
    complete = shift_day(yesterday, -(truth_days + 1))
    if complete >= first_day:
        requests.append(dg.RunRequest(run_key=f"remonitor-{complete}", partition_key=complete,
                                      asset_selection=[dg.AssetKey("recommendation_monitoring")],
                                      tags={"slmrec/remonitor": "ground truth complete"}))
    return requests


@dg.schedule(
    cron_schedule=PARAMS.automation.daily_cron,
    job=jobs.daily_recommendations_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day: yesterday's batch recommendations and their monitoring (drift check -> "
    "retrain_on_drift), and the monitoring of the day monitoring.truth_days + 1 earlier again, with its ground "
    "truth complete (automation.daily_cron).",
)
def daily_recommendations(context: dg.ScheduleEvaluationContext):
    params = load_params(PROJECT_DIR / "params.yaml")
    return daily_requests(context.scheduled_execution_time.timestamp(), params.monitoring.truth_days,
                          params.data.landing_start)
