"""Ingestion: daily landing files and whole-file sources into DuckDB, then a versioned snapshot."""

import json

import dagster as dg

from orchestration.landing import landing_files, landing_partitions
from orchestration.pipeline import STAGE_POOL, WAREHOUSE_POOL, DvcPipeline, lock_metadata
from orchestration.runners import StageRunner
from slmrec.data.ingest import ingest


@dg.asset(
    partitions_def=landing_partitions(),
    group_name="ingestion",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    description="One day of event logs dropped into the landing folder (data.landing_dir/YYYY-MM-DD.*), "
    "ingested into DuckDB `raw_interactions`; malformed rows go to `quarantine` with a reason.",
)
def landing_interactions(context: dg.AssetExecutionContext, pipeline: DvcPipeline) -> dg.MaterializeResult:
    cfg = pipeline.params().data
    files = landing_files(pipeline.path(cfg.landing_dir)).get(context.partition_key, [])
    if not files:
        raise FileNotFoundError(f"no landing file for partition {context.partition_key} in {cfg.landing_dir}")
    reports = [
        ingest(cfg.landing_format, str(f), str(pipeline.path(cfg.db)), column_map=cfg.landing_column_map or None)
        for f in files
    ]
    totals = {k: sum(getattr(r, k) for r in reports) for k in ("rows_read", "accepted", "quarantined")}
    reasons: dict[str, int] = {}
    for r in reports:
        for reason, n in r.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in totals.items()},
            "quarantine_reasons": dg.MetadataValue.json(reasons),
            "files": dg.MetadataValue.json([f.name for f in files]),
            "already_ingested": dg.MetadataValue.bool(all(r.already_ingested for r in reports)),
            "batch_ids": dg.MetadataValue.json([r.batch_id for r in reports]),
        }
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "raw_interactions",
            group_name="ingestion",
            kinds={"duckdb", "parquet"},
            deps=[landing_interactions],
            description="Every accepted interaction (canonical table: user_id, item_id, ts, rating, event, "
            "source_file, row_number) rebuilt from the raw files by the DVC `ingest` stage; snapshot in "
            "data/interactions/interactions.parquet.",
        ),
        dg.AssetSpec(
            "item_catalog",
            group_name="ingestion",
            kinds={"duckdb", "parquet"},
            description="Item titles, genres/categories and attributes (DuckDB `items`).",
        ),
    ],
    pool=STAGE_POOL,
)
def ingest_stage(context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage_runner: StageRunner):
    outs = pipeline.run_stage(context, "ingest", stage_runner)
    report = json.loads(pipeline.path("results/ingest.json").read_text())
    yield dg.MaterializeResult(
        asset_key="raw_interactions",
        metadata={
            "rows_read": dg.MetadataValue.int(report["rows_read"]),
            "accepted": dg.MetadataValue.int(report["accepted"]),
            "quarantined": dg.MetadataValue.int(report["quarantined"]),
            "quarantine_reasons": dg.MetadataValue.json(report["quarantine_reasons"]),
            "users": dg.MetadataValue.int(report["users"]),
            "items": dg.MetadataValue.int(report["items"]),
            "sources": dg.MetadataValue.json(report.get("sources", [])),
            **lock_metadata(outs, pipeline.root),
        },
    )
    yield dg.MaterializeResult(
        asset_key="item_catalog",
        metadata={
            "items_with_metadata": dg.MetadataValue.int(report["catalog_items"]),
            **lock_metadata(outs, pipeline.root),
        },
    )
