"""The Dagster definitions load and are wired as documented; the instance config is valid for 1.13."""

from pathlib import Path

import dagster as dg

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
    assert {s.name for s in repo.schedule_defs} == {"weekly_retrain"}
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


def test_instance_config_limits_the_stage_pool_to_one(tmp_path):
    # the file `make ui` copies into $DAGSTER_HOME: Dagster validates it against its 1.13 schema on load
    (tmp_path / "dagster.yaml").write_text((REPO / "orchestration/dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        pool_config = instance.get_concurrency_config().pool_config
        assert pool_config.default_pool_limit == 1
        assert pool_config.pool_granularity.value == "op"
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure
