"""User sequences and leave-one-out splits (DVC stage `sequences`)."""

import json

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestration.pipeline import STAGE_POOL, DvcPipeline, lock_metadata
from orchestration.plots import bar_chart, histogram
from orchestration.runners import StageRunner


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "user_sequences",
            group_name="sequences",
            kinds={"parquet"},
            deps=["raw_interactions", "item_catalog"],
            description="Per-user, time-ordered item sequences after filters and iterative k-core; "
            "contiguous ids with 0 reserved for padding (data/splits/*_map.parquet).",
        ),
        dg.AssetSpec(
            "dataset_splits",
            group_name="sequences",
            kinds={"parquet"},
            deps=["user_sequences"],
            description="Leave-one-out splits: train (all but last two), valid (second-to-last), test (last). "
            "Hash-locked by DVC (data/splits).",
        ),
    ],
    pool=STAGE_POOL,
)
def sequences_stage(context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage_runner: StageRunner):
    outs = pipeline.run_stage(context, "sequences", stage_runner)
    stats = json.loads(pipeline.path("results/data_stats.json").read_text())
    train = pq.read_table(pipeline.path(pipeline.params().sequences.out_dir) / "train.parquet", columns=["items"])
    train_lengths = pc.list_value_length(train["items"]).to_numpy()  # (U,)
    yield dg.MaterializeResult(
        asset_key="user_sequences",
        metadata={
            "users": dg.MetadataValue.int(stats["n_users"]),
            "items": dg.MetadataValue.int(stats["n_items"]),
            "interactions": dg.MetadataValue.int(stats["n_interactions"]),
            "length_quantiles": dg.MetadataValue.json(stats["length"]),
            "dropped": dg.MetadataValue.json(stats["dropped"]),
            "length_distribution": dg.MetadataValue.md(
                bar_chart(histogram(train_lengths + 2), "sequence length (items per user, after filters)")
            ),
            **lock_metadata(outs, pipeline.root),
        },
    )
    yield dg.MaterializeResult(
        asset_key="dataset_splits",
        metadata={
            "dataset_hash": dg.MetadataValue.text(stats["dataset_hash"]),
            "train_interactions": dg.MetadataValue.int(int(train_lengths.sum())),
            "valid_users": dg.MetadataValue.int(stats["n_users"]),
            "test_users": dg.MetadataValue.int(stats["n_users"]),
            "files_sha256": dg.MetadataValue.json(stats["files"]),
            **lock_metadata(outs, pipeline.root),
        },
    )
