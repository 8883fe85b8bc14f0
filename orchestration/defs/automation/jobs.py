"""Jobs the schedule and the sensors launch."""

import dagster as dg

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets("raw_interactions", "item_catalog").downstream(),
    description="Rebuild from the raw files and landing folder down to promotion: raw_interactions -> splits -> "
    "SASRec -> teacher -> students -> evaluation -> promoted_model. DVC skips every stage whose inputs did not "
    "change (set the `pipeline` resource's force: true in the launchpad to retrain anyway).",
    # the run worker itself dying (OOM, node loss) restarts the run from the failed step once; step
    # failures are handled by the model assets' RetryPolicy (instance: run_retries in dagster.yaml)
    tags={"dagster/max_retries": "1", "dagster/retry_strategy": "FROM_FAILURE"},
)

daily_recommendations_job = dg.define_asset_job(
    "daily_recommendations_job",
    selection=dg.AssetSelection.assets("recommendations", "recommendation_monitoring"),
    description="One day: the promoted model's batch recommendations, then their monitoring report and drift check.",
)
