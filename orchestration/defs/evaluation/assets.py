"""Test-set evaluation of every model: full ranking (+ labelled sampled protocol) with bootstrap CIs."""

import json

import dagster as dg

from orchestration.pipeline import STAGE_POOL, DvcPipeline, lock_metadata
from orchestration.runners import StageRunner


@dg.asset(
    deps=["sasrec", "teacher", "student_nokd", "student"],
    group_name="evaluation",
    kinds={"pytorch"},
    pool=STAGE_POOL,
    description="Full-ranking HR/NDCG/MRR on the test split for SASRec, teacher, student_nokd and the "
    "distilled student, with paired-bootstrap 95% CIs of their differences (results/metrics.json).",
)
def model_evaluation(
    context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage_runner: StageRunner
) -> dg.MaterializeResult:
    pipeline.run_stage(context, "evaluate", stage_runner)
    metrics = json.loads(pipeline.path("results/metrics.json").read_text())
    table = pipeline.path("results/results.md").read_text()
    flat = {
        f"{name}/{m}": dg.MetadataValue.float(round(v[m], 4))
        for name, v in metrics["models"].items()
        for m in ("ndcg@10", "hr@10", "mrr")
    }
    # the DVC hashes of the model directories these metrics were computed on
    evaluated = {path: md5 for path, md5 in pipeline.locked_deps("evaluate").items() if path.startswith("models/")}
    return dg.MaterializeResult(
        metadata={
            "results": dg.MetadataValue.md(table),
            "dataset_hash": dg.MetadataValue.text(metrics["dataset_hash"]),
            "protocol": dg.MetadataValue.json(metrics["protocol"]),
            "comparisons": dg.MetadataValue.json(metrics["comparisons"]),
            **flat,
            **lock_metadata(evaluated, pipeline.root),
        }
    )
