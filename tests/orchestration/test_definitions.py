"""The Dagster definitions load and are wired as documented; the instance config is valid for 1.13."""

from pathlib import Path

import dagster as dg

from slmrec.config import load_params

from orchestration.pipeline import STAGE_POOL, WAREHOUSE_POOL
from orchestration.promotion import MODELS

REPO = Path(__file__).resolve().parents[2]
STAGE_ASSETS = {"raw_interactions", "item_catalog", "user_sequences", "dataset_splits", "item_text", *MODELS,
                "model_evaluation"}


def test_definitions_load_and_resolve(definitions):
    dg.Definitions.validate_loadable(definitions)
    repo = definitions.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"landing_interactions", "promoted_model", "recommendations", "recommendation_monitoring",
                    *STAGE_ASSETS}
    assert {j.name for j in repo.get_all_jobs()} >= {"landing_ingest_job", "retrain_job", "rollback_job"}
    sensors = {"landing_folder_sensor", "retrain_after_landing", "alert_on_run_failure", "retrain_on_drift"}
    assert {s.name for s in repo.sensor_defs} == sensors
    assert {s.name for s in repo.schedule_defs} == {"weekly_retrain", "daily_recommendations"}
    assert set(definitions.resources) == {"pipeline", "stage_runner"}


def test_every_model_has_blocking_weight_and_metric_checks(definitions):
    graph = definitions.get_repository_def().asset_graph
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    for model in MODELS:
        assert {(model, "weights_finite"), (model, "validation_metric")} <= checks
    assert ("model_evaluation", "candidate_vs_baselines") in checks
    for contract in ("raw_interactions", "item_catalog", "user_sequences", "dataset_splits"):
        assert any(asset == contract and name.endswith("_contract") for asset, name in checks)
    for check_def in definitions.asset_checks:
        for spec in check_def.check_specs:
            assert spec.blocking, f"{spec.key} should block downstream assets when it fails with ERROR"


def test_stage_assets_share_one_pool_and_landing_writes_take_turns(definitions):
    pools = {}
    for assets_def in definitions.assets:
        for key in assets_def.keys:
            pools[key.to_user_string()] = assets_def.op.pool
    assert {name for name, pool in pools.items() if pool == STAGE_POOL} == STAGE_ASSETS
    assert pools["landing_interactions"] == WAREHOUSE_POOL  # one DuckDB writer at a time
    assert pools["promoted_model"] is None


def test_retrain_job_runs_raw_data_to_promotion(definitions):
    job = definitions.resolve_job_def("retrain_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys == STAGE_ASSETS | {"promoted_model"}
    assert job.tags["dagster/max_retries"] == "1"


def test_weekly_schedule_targets_retrain_job_and_starts_stopped(definitions):
    schedule = definitions.resolve_schedule_def("weekly_retrain")
    assert schedule.job_name == "retrain_job"
    assert schedule.cron_schedule == "0 3 * * 1"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_daily_schedule_runs_yesterday_and_re_monitors_the_day_whose_truth_completed(definitions):
    """The loop runs on its own: each tick materializes yesterday's recommendations + monitoring, and the
    monitoring of the day monitoring.truth_days + 1 earlier again (its ground truth is complete now)."""
    import datetime as dt

    schedule = definitions.resolve_schedule_def("daily_recommendations")
    assert schedule.job_name == "daily_recommendations_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    job = definitions.resolve_job_def("daily_recommendations_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "recommendations", "recommendation_monitoring"}
    tick = dg.build_schedule_context(scheduled_execution_time=dt.datetime(1998, 3, 10, 2, tzinfo=dt.timezone.utc),
                                     repository_def=definitions.get_repository_def())
    daily, again = schedule.evaluate_tick(tick).run_requests
    assert (daily.partition_key, daily.asset_selection) == ("1998-03-09", None)  # the job's two assets
    truth_days = load_params(REPO / "params.yaml").monitoring.truth_days
    assert again.partition_key == (dt.date(1998, 3, 9) - dt.timedelta(days=truth_days + 1)).isoformat()
    assert again.asset_selection == [dg.AssetKey("recommendation_monitoring")]


def test_instance_config_limits_the_stage_pool_to_one(tmp_path):
    # the file `make ui` copies into $DAGSTER_HOME: Dagster validates it against its 1.13 schema on load
    (tmp_path / "dagster.yaml").write_text((REPO / "orchestration/dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        pool_config = instance.get_concurrency_config().pool_config
        assert pool_config.default_pool_limit == 1
        assert pool_config.pool_granularity.value == "op"
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure
