"""Blocking checks on every model asset: finite weights and a recorded validation score.

A failure (ERROR) stops everything downstream in the run (teacher -> student -> evaluation ->
promotion); `promoted_model` re-runs the same functions before it promotes anything.
"""

import dagster as dg

from orchestration.pipeline import DvcPipeline
from orchestration.promotion import MODELS, best_validation, validation_metric_name, weight_scan


def _checks(model: str) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=model,
        name="weights_finite",
        blocking=True,
        description=f"Every tensor in models/{model}/model.pt is finite (no NaN/inf).",
    )
    def weights_finite(pipeline: DvcPipeline) -> dg.AssetCheckResult:
        scan = weight_scan(pipeline.path(f"models/{model}/model.pt"))
        return dg.AssetCheckResult(
            passed=scan.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if scan.ok else (
                f"{sum(scan.nonfinite.values())} non-finite values in {len(scan.nonfinite)} tensors"
                if scan.nonfinite else "the checkpoint holds no tensors"
            ),
            metadata={
                "tensors": dg.MetadataValue.int(scan.tensors),
                "values": dg.MetadataValue.int(scan.values),
                "nonfinite": dg.MetadataValue.json(dict(list(scan.nonfinite.items())[:20])),
            },
        )

    @dg.asset_check(
        asset=model,
        name="validation_metric",
        blocking=True,
        description=f"models/{model}/train.json records a finite validation score for the selected epoch.",
    )
    def validation_metric(pipeline: DvcPipeline) -> dg.AssetCheckResult:
        metric = validation_metric_name(pipeline.params(), model)
        try:
            best = best_validation(pipeline.path(f"models/{model}/train.json"), metric)
        except ValueError as err:  # the check's finding, shown in the UI; not a crash of the check
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(err))
        return dg.AssetCheckResult(
            passed=True,
            metadata={
                f"valid/{metric}": dg.MetadataValue.float(best["value"]),
                "epoch": dg.MetadataValue.int(best["epoch"]),
            },
        )

    return [weights_finite, validation_metric]


model_checks = [check for model in MODELS for check in _checks(model)]
