"""Deployment: which student is deployable, copied into an immutable deployment, recorded in models/promoted.json.

Promotion is refused in two ways. Within a run, the blocking checks upstream (weights_finite and
validation_metric on every model, candidate_vs_baselines on model_evaluation) fail with ERROR and
Dagster never starts this step. And because this asset can also be materialized on its own, in a
later run where no check ran, it RE-VALIDATES before writing anything: the same functions on the
same files, plus two audit checks (the candidate's card matches its bytes; dvc.lock says the
evaluation saw exactly the trained model). Any finding fails the step and leaves the previous
promoted.json untouched. WARN-level regressions do not block; they are written into the record.
"""

import dataclasses
from pathlib import Path

import dagster as dg

from orchestration.pipeline import PROJECT_DIR, DvcPipeline
from orchestration.promotion import (
    best_validation,
    choose_candidate,
    judge,
    promotion_record,
    read_evaluation,
    validation_metric_name,
    weight_scan,
)
from slmrec.config import load_params
from slmrec.lineage import content_hash, git_commit, read_card
from slmrec.data.sequences import load_splits
from slmrec.serve.challenge import challenge, served_precision, validation_examples
from slmrec.serve.deploy import deploy, promote, refuse
from slmrec.serve.recommender import Recommender
from slmrec.serve.sources import read_promoted

CANDIDATE = load_params(PROJECT_DIR / "params.yaml").promotion.candidate


def refusal_reasons(pipeline: DvcPipeline) -> tuple[list[str], dict]:
    """Every reason not to promote the candidate now (empty = promote), and what was read on the way."""
    params = pipeline.params()
    evaluation = lambda: read_evaluation(pipeline.path("results/metrics.json"),  # noqa: E731
                                         pipeline.path(params.sequences.out_dir))
    try:  # the fixed policy needs no metrics: the model's own files are checked first, as before policies
        name, why = choose_candidate(None if params.promotion.policy == "fixed" else evaluation()[0], params.promotion)
    except ValueError as err:
        return [str(err)], {}
    cfg = dataclasses.replace(params.promotion, candidate=name)
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

    metrics, n_items, dataset_hash = evaluation()
    verdict = judge(metrics, n_items, cfg, dataset_hash)
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
    return reasons, {"metrics": metrics, "verdict": verdict, "card": card, "dvc_md5": trained, "model_dir": key,
                     "candidate": name, "policy": why}


def champion_challenger(pipeline: DvcPipeline, candidate_dir: Path) -> dict | None:
    """The candidate against the deployment serving now (None: nothing deployed, or the same bytes)."""
    params = pipeline.params()
    record = pipeline.path(params.promotion.record)
    if not record.is_file():
        return None
    champion_dir, current = read_promoted(record, pipeline.root, pipeline.path(params.serve.models_dir))
    if current["content_hash"] == read_card(candidate_dir)["content_hash"]:
        return None
    load = lambda d: Recommender.load(d, root=pipeline.root, eval_cfg=params.eval,  # noqa: E731
                                      precision=served_precision(d, params.serve.precision))
    examples = validation_examples(load_splits(pipeline.path(params.sequences.out_dir)))
    return challenge(load(candidate_dir), load(champion_dir), examples, params.promotion.metrics,
                     params.promotion.non_inferiority_margin, n_boot=params.eval.bootstrap)


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
    name = seen.get("candidate", params.promotion.candidate)
    if reasons:
        raise dg.Failure(
            description=f"promotion of {name} refused: " + "; ".join(reasons),
            metadata={"reasons": dg.MetadataValue.json(reasons)},
        )
    context.log.info(f"candidate: {seen['policy']}")
    evidence = promotion_record(
        name, seen["model_dir"], seen["card"], seen["dvc_md5"], seen["metrics"],
        seen["verdict"], git_commit(pipeline.root), context.run.run_id,
    )
    evidence["policy"] = seen["policy"]
    record_path = pipeline.path(params.promotion.record)
    duel = champion_challenger(pipeline, pipeline.path(seen["model_dir"]))
    evidence["champion_challenger"] = duel
    if duel is not None and not duel["promote"]:
        worse = [f"{r['metric']} {r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] vs threshold {r['threshold']:+.4f}"
                 for r in duel["rows"] if not r["non_inferior"]]
        refuse(record_path, name, seen["card"]["content_hash"], who=f"dagster run {context.run.run_id}",
               why="not non-inferior to the deployed champion", evidence=evidence)
        raise dg.Failure(
            description=f"promotion of {name} refused: not non-inferior to the champion {duel['champion'][:12]} on "
            f"the validation split as served ({'; '.join(worse)}); the champion keeps serving",
            metadata={"champion_challenger": dg.MetadataValue.json(duel)},
        )
    # an immutable, content-addressed copy (model + the splits it was trained on): what serving loads
    deployment = deploy(pipeline.path(seen["model_dir"]), pipeline.path(params.serve.models_dir), pipeline.root)
    why = "gate passed" + (f" with {len(evidence['warnings'])} warning(s)" if evidence["warnings"] else "")
    record = promote(record_path, deployment, name, who=f"dagster run {context.run.run_id}", why=why,
                     evidence={k: evidence[k] for k in ("gate", "warnings", "validation_metrics", "dvc_md5", "policy",
                                                        "champion_challenger")},
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
            "policy": dg.MetadataValue.text(seen["policy"]),
            "champion_challenger": dg.MetadataValue.json(record["champion_challenger"]),
            "warnings": dg.MetadataValue.json(record["warnings"]),
            "git_commit": dg.MetadataValue.text(record["git_commit"]),
            "record": dg.MetadataValue.path(str(pipeline.path(params.promotion.record))),
        }
    )
