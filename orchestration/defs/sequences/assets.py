"""User sequences and leave-one-out splits (DVC stage `sequences`)."""

from __future__ import annotations

import json

import dagster as dg

from orchestration.pipeline import DvcPipeline, lock_metadata
from orchestration.plots import bar_chart


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
    pool="dvc",
)
def sequences_stage(
    context: dg.AssetExecutionContext, pipeline: DvcPipeline, pipes_subprocess_client: dg.PipesSubprocessClient
):
    outs = pipeline.run_stage(context, "sequences", pipes_subprocess_client)
    stats = json.loads(pipeline.path("results/data_stats.json").read_text())
    lengths = stats.get("length_histogram", {})
    yield dg.MaterializeResult(
        asset_key="user_sequences",
        metadata={
            "users": dg.MetadataValue.int(stats["n_users"]),
            "items": dg.MetadataValue.int(stats["n_items"]),
            "interactions": dg.MetadataValue.int(stats["n_interactions"]),
            "length_quantiles": dg.MetadataValue.json(stats.get("length_quantiles", {})),
            "length_distribution": dg.MetadataValue.md(
                bar_chart(list(lengths.items()), "sequence length (items per user)")
            ),
            **lock_metadata(outs),
        },
    )
    yield dg.MaterializeResult(
        asset_key="dataset_splits",
        metadata={
            "dataset_hash": dg.MetadataValue.text(stats["dataset_hash"]),
            "train_interactions": dg.MetadataValue.int(stats.get("n_train_interactions", 0)),
            "valid_users": dg.MetadataValue.int(stats["n_users"]),
            "test_users": dg.MetadataValue.int(stats["n_users"]),
            **lock_metadata(outs),
        },
    )
