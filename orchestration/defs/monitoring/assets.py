"""Monitoring: an Evidently report per daily partition of the recommendations, and the drift verdict.

    recommendations (deployment, per day) -> recommendation_monitoring (per day) + check recommendation_drift
                                           -> retrain_on_drift (sensor) -> retrain_job

The asset is a thin shell over slmrec.monitor.build: it finds the promoted deployment
(promotion.record), builds that model's reference window once (monitoring.reference_dir; the same window
rule over its last training days), monitors the partition's window (monitoring.window_days of lists,
delayed ground truth, inputs; the probe: its reference users re-scored now) and writes report.html /
inputs.html / probe.html / evidently.json / summary.json under
monitoring.out_dir/<partition>. The verdict is our rule set (slmrec/monitor/verdict.py) over the report's
values, thresholds in params.yaml `monitoring:`. It goes into the materialization's metadata (`verdict`:
drift | ok | insufficient data, the failing rules and values: what retrain_on_drift reads) and into the
check, which is not blocking: drift -> failed, ERROR; insufficient data -> failed, WARN; ok -> passed.
"""


from pathlib import Path

import dagster as dg
import pandas as pd

from orchestration.landing import landing_partitions
from orchestration.pipeline import DvcPipeline, git_commit
from slmrec.monitor.build import ensure_reference, load_recommender, monitor_day
from slmrec.serve.deploy import DEPLOYED
from slmrec.serve.sources import read_promoted

DRIFT_CHECK = "recommendation_drift"


def lists_model_dir(recs_dir: Path, day: str, models_dir: Path) -> Path | None:
    """The deployment whose model made `day`'s batch recommendations (None: no lists, or not deployed here)."""
    path = recs_dir / f"{day}.parquet"
    if not path.is_file():
        return None
    models = set(pd.read_parquet(path, columns=["model"])["model"])
    if len(models) != 1:
        return None
    model_dir = models_dir / DEPLOYED / models.pop()[:16] / "model"
    return model_dir if model_dir.is_dir() else None


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
                                   "monitoring:): score drift (the reference users re-scored now) / history-length / "
                                   "recent-popularity drift, unknown-item and cold-start shares, NDCG@k drop once "
                                   "ground truth is in, popularity shift. Drift: ERROR; every rule skipped: WARN "
                                   "(insufficient data).")],
    description="Evidently report of the promoted model's recommendations for this day (the lists of the last "
    "monitoring.window_days days) against its reference window (the same rule over its last training days): NDCG/HitRate/"
    "Recall@k once later interactions arrived, popularity bias (ARP, coverage, Gini), personalization, novelty, "
    "input drift, and the score drift of the reference users re-scored by the model now (probe.html). HTML + JSON "
    "under monitoring.out_dir/<day>.",
)
def recommendation_monitoring(context: dg.AssetExecutionContext, pipeline: DvcPipeline):
    params = pipeline.params()
    mon = params.monitoring
    day = context.partition_key
    recs_dir = pipeline.path(params.serve.recommendations_dir)
    # the model that made this day's lists (a re-run after a promotion judges the day by its own model)
    model_dir = lists_model_dir(recs_dir, day, pipeline.path(params.serve.models_dir)) or promoted_model_dir(pipeline)
    db = pipeline.path(params.data.db)
    rec = load_recommender(model_dir, db=db)  # the deployment's own splits; histories from the warehouse
    reference, built = ensure_reference(model_dir, pipeline.path(mon.reference_dir), mon, rec=rec)
    if built:
        context.log.info(f"built the reference window of {rec.model_hash[:16]}: {reference}")
    summary = monitor_day(day, recs_dir, model_dir, reference, mon,
                          pipeline.path(mon.out_dir) / day, rec=rec)
    verdict = summary["verdict"]
    values = {name: v["current"] for name, v in summary["values"].items()}
    failing = [r for r in verdict["rules"] if r["status"] == "fail"]
    yield dg.MaterializeResult(
        metadata={
            "report_html": dg.MetadataValue.path(summary["files"]["html"]),
            "report_url": dg.MetadataValue.url("file://" + summary["files"]["html"]),
            "probe_html": dg.MetadataValue.path(summary["files"]["probe_html"]),
            "evidently_json": dg.MetadataValue.path(summary["files"]["evidently_json"]),
            "summary_json": dg.MetadataValue.path(summary["files"]["summary"]),
            "verdict": dg.MetadataValue.text(verdict["status"]),
            "rules": dg.MetadataValue.md(summary["verdict_markdown"]),
            "drift": dg.MetadataValue.bool(verdict["drift"]),
            "failing": dg.MetadataValue.json([r["name"] for r in failing]),
            "failing_values": dg.MetadataValue.json({r["name"]: r["value"] for r in failing}),
            "partition": dg.MetadataValue.text(day),
            "values": dg.MetadataValue.json(summary["values"]),
            "counts": dg.MetadataValue.json(summary["counts"]),
            "window": dg.MetadataValue.text(" .. ".join(summary["window"])),
            "model": dg.MetadataValue.text(summary["model"]),
            "reference": dg.MetadataValue.path(str(reference)),
            **{name: dg.MetadataValue.float(float(v)) for name, v in values.items() if v is not None},
            "git_commit": dg.MetadataValue.text(git_commit(pipeline.root)),
        }
    )
    status = verdict["status"]
    yield dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=status == "ok",
        severity=dg.AssetCheckSeverity.ERROR if status == "drift" else dg.AssetCheckSeverity.WARN,
        description=("drift: " + "; ".join(f"{r['name']} ({r['reason']})" for r in failing)) if failing
        else "no drift" if status == "ok" else
        "insufficient data: every rule was skipped (" + "; ".join(sorted({r["reason"] for r in verdict["rules"]})) + ")",
        metadata={
            "verdict": dg.MetadataValue.text(status),
            "failing": dg.MetadataValue.json([r["name"] for r in failing]),
            "failing_values": dg.MetadataValue.json({r["name"]: r["value"] for r in failing}),
            "rules": dg.MetadataValue.md(summary["verdict_markdown"]),
            "partition": dg.MetadataValue.text(day),
            "report_html": dg.MetadataValue.path(summary["files"]["html"]),
        },
    )
