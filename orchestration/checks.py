"""Turn a data-contract result into a Dagster asset-check result (ERROR severity: blocking checks stop
downstream assets)."""

from __future__ import annotations

import dagster as dg

from data_contracts import ContractResult


def contract_check_result(result: ContractResult, asset_key: str | None = None) -> dg.AssetCheckResult:
    failures = [
        {k: f.get(k) for k in ("frame", "expectation", "column", "unexpected_count", "examples")}
        for f in result.failures
    ]
    return dg.AssetCheckResult(
        asset_key=asset_key,
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "summary": dg.MetadataValue.md(f"```\n{result.summary()}\n```"),
            "evaluated_expectations": dg.MetadataValue.int(result.statistics.get("evaluated_expectations", 0)),
            "failed_expectations": dg.MetadataValue.int(len(failures)),
            "failures": dg.MetadataValue.json(failures),
        },
    )
