"""Monitoring: an Evidently report per daily partition of the recommendations, and the drift verdict.

    recommendations (deployment, per day) -> recommendation_monitoring (per day) + check recommendation_drift
                                           -> retrain_on_drift (sensor) -> retrain_job

The asset is a thin shell over slmrec.monitor.build: it finds the promoted model
(promotion.record), builds that model's reference window once (monitoring.reference_dir), monitors
the partition's window (monitoring.window_days of lists, delayed ground truth, inputs) and writes
report.html / evidently.json / summary.json under monitoring.out_dir/<partition>. The check's
verdict is our rule set (slmrec/monitor/verdict.py) over the report's values, thresholds in
params.yaml `monitoring:`; it is not blocking (drift is news for the sensor, not a reason to stop a run).
"""


import dagster as dg

from orchestration.landing import landing_partitions
from orchestration.pipeline import DvcPipeline, git_commit
from slmrec.monitor.build import ensure_reference, monitor_day
from slmrec.serve.sources import read_promoted

DRIFT_CHECK = "recommendation_drift"


def promoted_model_dir(pipeline: DvcPipeline):
    """The promoted deployment's model folder (the one reader of the promotion record: serve.sources)."""
    params = pipeline.params()
    model_dir, _ = read_promoted(pipeline.path(params.promotion.record), pipeline.root,
                                 pipeline.path(params.serve.models_dir))
    return model_dir


@dg.asset(
    partitions_def=landing_partitions(),
    deps=[dg.AssetDep("recommendations")],
    group_name="deployment",
    kinds={"evidently", "html"},
    check_specs=[dg.AssetCheckSpec(DRIFT_CHECK, asset="recommendation_monitoring",
                                   description="Drift verdict over the report's values (thresholds in params.yaml "
                                   "monitoring:): score / history-length drift, unknown-item and cold-start shares, "
                                   "NDCG@k drop once ground truth is in, popularity shift.")],
    description="Evidently report of the promoted model's recommendations for this day (the lists of the last "
    "monitoring.window_days days) against its reference window (its lists on its test period): NDCG/HitRate/"
    "Recall@k once later interactions arrived, popularity bias (ARP, coverage, Gini), personalization, novelty, "
    "score drift and input drift. HTML + JSON under monitoring.out_dir/<day>.",
)
def recommendation_monitoring(context: dg.AssetExecutionContext, pipeline: DvcPipeline):
    params = pipeline.params()
    mon = params.monitoring
    day = context.partition_key
    model_dir = promoted_model_dir(pipeline)
    db, splits = pipeline.path(params.data.db), pipeline.path(params.sequences.out_dir)
    reference, built = ensure_reference(model_dir, pipeline.path(mon.reference_dir), mon.k, splits, db)
    if built:
        context.log.info(f"built the reference window of {model_dir.name}: {reference}")
    summary = monitor_day(day, pipeline.path(params.serve.recommendations_dir), db, splits, reference, mon,
                          pipeline.path(mon.out_dir) / day)
    verdict = summary["verdict"]
    values = {name: v["current"] for name, v in summary["values"].items()}
    yield dg.MaterializeResult(
        metadata={
            "report_html": dg.MetadataValue.path(summary["files"]["html"]),
            "report_url": dg.MetadataValue.url("file://" + summary["files"]["html"]),
            "evidently_json": dg.MetadataValue.path(summary["files"]["evidently_json"]),
            "summary_json": dg.MetadataValue.path(summary["files"]["summary"]),
            "verdict": dg.MetadataValue.md(summary["verdict_markdown"]),
            "drift": dg.MetadataValue.bool(verdict["drift"]),
            "values": dg.MetadataValue.json(summary["values"]),
            "counts": dg.MetadataValue.json(summary["counts"]),
            "window": dg.MetadataValue.text(" .. ".join(summary["window"])),
            "model": dg.MetadataValue.text(summary["model"]),
            "reference": dg.MetadataValue.path(str(reference)),
            **{name: dg.MetadataValue.float(float(v)) for name, v in values.items() if v is not None},
            "git_commit": dg.MetadataValue.text(git_commit(pipeline.root)),
        }
    )
    failing = [r for r in verdict["rules"] if r["status"] == "fail"]
    yield dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not verdict["drift"],
        severity=dg.AssetCheckSeverity.WARN,
        description=("drift: " + "; ".join(f"{r['name']} ({r['reason']})" for r in failing)) if failing
        else "no drift",
        metadata={
            "failing": dg.MetadataValue.json([r["name"] for r in failing]),
            "failing_values": dg.MetadataValue.json({r["name"]: r["value"] for r in failing}),
            "rules": dg.MetadataValue.md(summary["verdict_markdown"]),
            "partition": dg.MetadataValue.text(day),
            "report_html": dg.MetadataValue.path(summary["files"]["html"]),
        },
    )
