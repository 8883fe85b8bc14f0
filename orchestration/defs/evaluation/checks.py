"""The promotion comparison: the distilled student against student_nokd, the teacher and SASRec.

One blocking check, decided on the validation split with paired-bootstrap CIs (orchestration/promotion.py):
ERROR when the candidate is significantly worse than `promotion.max_regression` allows (the CI's upper
bound below the threshold) or the evaluation is broken (missing or NaN metrics, another dataset, no
better than random ranking) — that blocks `promoted_model`; WARN (recorded, does not block) when the
CI spans the threshold.
"""

import dagster as dg

from orchestration.pipeline import DvcPipeline
from orchestration.promotion import judge, read_evaluation


@dg.asset_check(
    asset="model_evaluation",
    name="candidate_vs_baselines",
    blocking=True,
    description="The promotion candidate (params promotion.candidate) against student_nokd, the teacher and SASRec "
    "on VALIDATION NDCG@10 / MRR with paired-bootstrap CIs: ERROR (blocks) when significantly worse than "
    "promotion.max_regression allows or when broken, WARN when the CI spans the allowed drop.",
)
def candidate_vs_baselines(pipeline: DvcPipeline) -> dg.AssetCheckResult:
    params = pipeline.params()
    metrics, n_items, dataset_hash = read_evaluation(pipeline.path("results/metrics.json"),
                                                     pipeline.path(params.sequences.out_dir))
    verdict = judge(metrics, n_items, params.promotion, dataset_hash)
    severity = dg.AssetCheckSeverity.ERROR if verdict.errors else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=verdict.severity is None,
        severity=severity,
        description="; ".join(verdict.errors + verdict.warnings) or f"{verdict.candidate} passes the promotion gate",
        metadata={
            "comparison": dg.MetadataValue.md(verdict.markdown()),
            "errors": dg.MetadataValue.json(verdict.errors),
            "warnings": dg.MetadataValue.json(verdict.warnings),
            "candidate": dg.MetadataValue.text(verdict.candidate),
        },
    )
