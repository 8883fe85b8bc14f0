"""Data contracts: Great Expectations suites built in code, one `validate()` for all of them.

    result = validate(df, "raw_interactions")          # or "items"
    result = validate({"train": ..., "valid": ..., "test": ..., "item_map": ..., "user_map": ...}, "splits")
    require(result)                                      # raises ContractViolation with a readable summary

GX validates pandas frames; a DuckDB table is read into a DataFrame first
(`con.sql("select * from raw_interactions").df()`).
"""

from __future__ import annotations

from data_contracts.engine import ContractResult, ContractViolation, ensure_context, require, run_checks
from data_contracts.suites import SUITES

__all__ = ["SUITES", "ContractResult", "ContractViolation", "require", "validate"]


def validate(data, suite_name: str) -> ContractResult:
    """Validate a frame (or a dict of frames) against the named suite."""
    if suite_name not in SUITES:
        raise ValueError(f"unknown contract suite {suite_name!r}; known: {sorted(SUITES)}")
    ensure_context()  # GX suites can only be built once a context exists
    return run_checks(suite_name, SUITES[suite_name](data))
