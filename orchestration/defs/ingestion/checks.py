"""Blocking data contracts on the ingested store (Great Expectations over DataFrames read from DuckDB)."""

import dagster as dg
import duckdb

from data_contracts import validate
from orchestration.checks import contract_check_result
from orchestration.pipeline import DvcPipeline


def _read(pipeline: DvcPipeline, query: str):
    with duckdb.connect(str(pipeline.path(pipeline.params().data.db)), read_only=True) as con:
        return con.sql(query).df()


@dg.asset_check(asset="raw_interactions", blocking=True, description="Non-null keys, sane timestamps, no duplicate events.")
def raw_interactions_contract(pipeline: DvcPipeline) -> dg.AssetCheckResult:
    df = _read(pipeline, "SELECT user_id, item_id, ts, rating, event FROM raw_interactions")
    return contract_check_result(validate(df, "raw_interactions"))


@dg.asset_check(asset="item_catalog", blocking=True, description="Every catalog item has a unique, non-null id.")
def item_catalog_contract(pipeline: DvcPipeline) -> dg.AssetCheckResult:
    return contract_check_result(validate(_read(pipeline, "SELECT * FROM items"), "items"))
