"""Periodic retraining (starts stopped: turn it on in the UI under Automation)."""

import dagster as dg

from orchestration.defs.automation import jobs
from orchestration.pipeline import PROJECT_DIR
from slmrec.config import load_params

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=jobs.retrain_job,
    cron_schedule=load_params(PROJECT_DIR / "params.yaml").automation.retrain_cron,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain on whatever the raw files and landing folder hold now (automation.retrain_cron).",
)
