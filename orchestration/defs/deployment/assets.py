"""Deployment: which student is deployable, copied into an immutable deployment, recorded in models/promoted.json.

Promotion is refused in two ways. Within a run, the blocking checks upstream (weights_finite and
validation_metric on every model, candidate_vs_baselines on model_evaluation) fail with ERROR and
Dagster never starts this step. And because this asset can also be materialized on its own, in a
later run where no check ran, it RE-VALIDATES before writing anything: the same functions on the
same files, plus two audit checks (the candidate's card matches its bytes; dvc.lock says the
evaluation saw exactly the trained model). Any finding fails the step and leaves the previous
promoted.json untouched. WARN-level regressions do not block; they are written into the record.
"""

import dagster as dg

from orchestration.pipeline import PROJECT_DIR, DvcPipeline
from orchestration.promotion import (
    best_validation,
    judge,
    promotion_record,
    read_evaluation,
    validation_metric_name,
    weight_scan,
)
from slmrec.config import load_params
from slmrec.lineage import content_hash, git_commit, read_card
from slmrec.serve.deploy import deploy, promote

CANDIDATE = load_params(PROJECT_DIR / "params.yaml").promotion.candidate


def refusal_reasons(pipeline: DvcPipeline) -> tuple[list[str], dict]:
    """Every reason not to promote the candidate now (empty = promote), and what was read on the way."""
    params = pipeline.params()
    name = params.promotion.candidate
    model_dir = pipeline.path(f"models/{name}")
    reasons = []

    scan = weight_scan(model_dir / "model.pt")
    if not scan.ok:
        reasons.append(f"models/{name}/model.pt: non-finite values in {sorted(scan.nonfinite)[:5]}"
                       if scan.nonfinite else f"models/{name}/model.pt holds no tensors")
    try:
        best_validation(model_dir / "train.json", validation_metric_name(params, name))
    except ValueError as err:
        reasons.append(str(err))

    metrics, n_items, dataset_hash = read_evaluation(pipeline.path("results/metrics.json"),
                                                     pipeline.path(params.sequences.out_dir))
    verdict = judge(metrics, n_items, params.promotion, dataset_hash)
    reasons += verdict.errors

    card = read_card(model_dir)
    actual = content_hash(model_dir)
    if card["content_hash"] != actual:
        reasons.append(f"models/{name}/card.json records content hash {card['content_hash'][:12]}…, "
                       f"the files hash to {actual[:12]}… (modified after training)")
    key = f"models/{name}"
    trained, evaluated = pipeline.locked_outs(name).get(key), pipeline.locked_deps("evaluate").get(key)
    if not trained or trained != evaluated:
        reasons.append(f"dvc.lock: the evaluation saw {key} md5 {evaluated}, the trained model is md5 {trained} "
                       "(re-run model_evaluation)")
    return reasons, {"metrics": metrics, "verdict": verdict, "card": card, "dvc_md5": trained, "model_dir": key}


@dg.asset(
    deps=["model_evaluation", CANDIDATE],
    group_name="deployment",
    kinds={"json"},
    description=f"The deployable model ({CANDIDATE}, params promotion.candidate), copied with its splits into the "
    "read-only models/deployed/<hash>/ and recorded in models/promoted.json (deployment, content hash, DVC md5, "
    "test metrics, gate evidence, git commit, time; every promotion appended to models/promotions.jsonl). Refuses — fails, writing nothing — when a "
    "blocking check fails: re-validates weights, validation metric, comparison and hashes itself.",
)
def promoted_model(context: dg.AssetExecutionContext, pipeline: DvcPipeline) -> dg.MaterializeResult:
    params = pipeline.params()
    reasons, seen = refusal_reasons(pipeline)
    if reasons:
        raise dg.Failure(
            description=f"promotion of {params.promotion.candidate} refused: " + "; ".join(reasons),
            metadata={"reasons": dg.MetadataValue.json(reasons)},
        )
    evidence = promotion_record(
        params.promotion.candidate, seen["model_dir"], seen["card"], seen["dvc_md5"], seen["metrics"],
        seen["verdict"], git_commit(pipeline.root), context.run.run_id,
    )
    # an immutable, content-addressed copy (model + the splits it was trained on): what serving loads
    deployment = deploy(pipeline.path(seen["model_dir"]), pipeline.path(params.serve.models_dir), pipeline.root)
    why = "gate passed" + (f" with {len(evidence['warnings'])} warning(s)" if evidence["warnings"] else "")
    record = promote(pipeline.path(params.promotion.record), deployment, params.promotion.candidate,
                     who=f"dagster run {context.run.run_id}", why=why,
                     evidence={k: evidence[k] for k in ("gate", "warnings", "validation_metrics", "dvc_md5")},
                     extra=evidence, root=pipeline.root)
    for warning in record["warnings"]:
        context.log.warning(f"promoted with a warning: {warning}")
    return dg.MaterializeResult(
        metadata={
            "model": dg.MetadataValue.text(record["model"]),
            "path": dg.MetadataValue.path(record["path"]),
            "deployment": dg.MetadataValue.path(record["deployment"]),
            "source_path": dg.MetadataValue.path(record["source_path"]),
            "content_hash": dg.MetadataValue.text(record["content_hash"]),
            "dvc_md5": dg.MetadataValue.text(record["dvc_md5"]),
            "dataset_hash": dg.MetadataValue.text(str(record["dataset_hash"])),
            "metrics": dg.MetadataValue.json(record["metrics"]),
            "comparison": dg.MetadataValue.md(seen["verdict"].markdown()),
            "warnings": dg.MetadataValue.json(record["warnings"]),
            "git_commit": dg.MetadataValue.text(record["git_commit"]),
            "record": dg.MetadataValue.path(str(pipeline.path(params.promotion.record))),
        }
    )
