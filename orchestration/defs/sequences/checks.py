"""Blocking contracts on the sequences and splits, re-validated from the Parquet files DVC hashed."""

import dagster as dg
import pyarrow.parquet as pq

from data_contracts import validate
from orchestration.checks import contract_check_result
from orchestration.pipeline import DvcPipeline
from slmrec.data.sequences import SEQUENCES_FILE, read_split_tables


def _tables(pipeline: DvcPipeline):
    split_dir = pipeline.path(pipeline.params().sequences.out_dir)
    tables, _ = read_split_tables(split_dir)  # raises if a file's sha256 differs from stats.json
    return split_dir, tables


@dg.asset_check(
    asset="user_sequences",
    blocking=True,
    description="Sequences strictly ordered, ids in 1..n_items, padding id never an item, maps bijective.",
)
def user_sequences_contract(pipeline: DvcPipeline) -> dg.AssetCheckResult:
    split_dir, tables = _tables(pipeline)
    frames = {"sequences": pq.read_table(split_dir / SEQUENCES_FILE),
              "item_map": tables["item_map"], "user_map": tables["user_map"]}
    return contract_check_result(validate(frames, "sequences"))


@dg.asset_check(
    asset="dataset_splits",
    blocking=True,
    description="Exactly one validation and one test target per user; histories consistent with train.",
)
def dataset_splits_contract(pipeline: DvcPipeline) -> dg.AssetCheckResult:
    _, tables = _tables(pipeline)
    return contract_check_result(validate(tables, "splits"))
