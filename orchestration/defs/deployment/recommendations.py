"""Daily batch recommendations of the promoted model: `recommendations` and its check.

A thin shell over slmrec.serve (the one inference path): load the model models/promoted.json
names, score the users active that day (or every user: config all_users) with their histories as
of the end of that day (point in time: a backfill or a late run never sees later days), check the
table (well-formed, no item of a user's own history) before anything is published, then write
serve.recommendations_dir/<day>.parquet and replace that day in the DuckDB table `recommendations`
(serve.recommendations_dir/recommendations.duckdb; not the warehouse, which the ingest stage rebuilds).
"""

import dagster as dg
import pyarrow.parquet as pq

from orchestration.landing import landing_partitions
from orchestration.pipeline import WAREHOUSE_POOL, DvcPipeline
from slmrec.serve.batch import DB_FILE, problems, run_batch
from slmrec.days import day_bounds
from slmrec.serve.recommender import Recommender
from slmrec.serve.sources import read_promoted


class RecommendationsConfig(dg.Config):
    all_users: bool = False  # score every user in the store, not only those active on the partition's day


@dg.asset(
    partitions_def=landing_partitions(),
    # reads models/promoted.json at run time. Not a declared dep on `promoted_model`: retrain_job selects
    # everything downstream of raw_interactions, and a daily-partitioned asset in it would partition the job
    deps=["landing_interactions"],
    group_name="deployment",
    pool=WAREHOUSE_POOL,  # reads the warehouse: never while a landing ingestion holds its write lock
    kinds={"duckdb", "parquet", "pytorch"},
    check_specs=[dg.AssetCheckSpec(
        "recommendations_well_formed", asset="recommendations", blocking=True,
        description="Ranks 1..n (n <= serve.k) per user, no item twice, finite scores decreasing with rank, one "
        "model: computed on the written Parquet file, each partition.")],
    description="Top-K recommendations (serve.k) of the promoted model for the users active that day (UTC) — "
    "or all users — with histories from DuckDB raw_interactions and the evaluation's history exclusion. "
    "Columns: user_id, rank, item_id, score, model (content hash), partition. Parquet per day under "
    "serve.recommendations_dir and the DuckDB table `recommendations` there.",
)
def recommendations(
    context: dg.AssetExecutionContext, config: RecommendationsConfig, pipeline: DvcPipeline
) -> dg.MaterializeResult:
    params = pipeline.params()
    day = context.partition_key
    model_dir, record = read_promoted(pipeline.path(params.promotion.record), pipeline.root, params.serve.models_dir)
    rec = Recommender.load(model_dir, root=pipeline.root, eval_cfg=params.eval, cold_start=params.serve.cold_start,
                           precision=params.serve.precision, new_items=params.serve.new_items)
    if rec.model_hash != record["content_hash"]:
        raise dg.Failure(f"{model_dir} hashes to {rec.model_hash[:12]}…, promoted.json records "
                         f"{record['content_hash'][:12]}…: refusing to score with an unpromoted model")
    out_dir = pipeline.path(params.serve.recommendations_dir)
    # histories as of the end of the partition's day (a backfill does not see, nor consume, the days after it);
    # run_batch checks the table before anything is published and raises naming the problems otherwise
    try:
        summary = run_batch(rec, params.serve.k, out_dir / f"{day}.parquet", day,
                            day=None if config.all_users else day, duckdb_file=out_dir / DB_FILE,
                            as_of=day_bounds(day)[1])
    except ValueError as err:
        raise dg.Failure(description=str(err)) from err
    if summary["users_skipped"]:
        context.log.warning(f"{len(summary['users_skipped'])} user(s) without a history the model knows were left "
                            f"out (serve.cold_start: error): {summary['users_skipped'][:10]}")
    written = pq.read_table(summary["out"]).to_pandas()
    found = problems(written, params.serve.k)
    preview = written.head(10)
    return dg.MaterializeResult(
        check_results=[dg.AssetCheckResult(
            check_name="recommendations_well_formed", passed=not found,
            metadata={"rows": len(written), "problems": dg.MetadataValue.json(found)})],
        metadata={
            "rows": dg.MetadataValue.int(summary["rows"]),
            "users_selected": dg.MetadataValue.int(summary["users_selected"]),
            "users_scored": dg.MetadataValue.int(summary["users_scored"]),
            "users_skipped": dg.MetadataValue.int(len(summary["users_skipped"])),
            "users_fallback": dg.MetadataValue.int(summary["users_fallback"]),
            "k": dg.MetadataValue.int(summary["k"]),
            "model": dg.MetadataValue.text(rec.model_hash),
            "model_dir": dg.MetadataValue.path(str(model_dir)),
            "scope": dg.MetadataValue.text("all users" if config.all_users else f"users active on {day}"),
            "parquet": dg.MetadataValue.path(summary["out"]),
            "duckdb": dg.MetadataValue.path(summary["duckdb"]),
            "preview": dg.MetadataValue.md(preview.to_markdown(index=False) if len(preview) else "(no rows)"),
        }
    )
