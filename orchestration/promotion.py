"""The promotion gate as pure functions over the files the model and evaluation stages wrote.

The model asset checks (defs/models/checks.py), the comparison check on `model_evaluation`
(defs/evaluation/checks.py) and the `promoted_model` asset (defs/deployment/assets.py) all call
these, so a promotion re-validates exactly what the blocking checks validated:

    weight_scan(models/<m>/model.pt)                 every tensor finite?
    best_validation(models/<m>/train.json, metric)   a finite validation score for the selected epoch?
    judge(metrics.json, n_items, cfg.promotion)      on validation, with paired-bootstrap CIs:
                                                     ERROR (broken or significantly worse) / WARN (CI spans
                                                     the allowed drop) / pass
"""

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmrec.config import Params, PromotionConfig
from slmrec.models.checkpoint import load_checkpoint

MODELS = ("sasrec", "teacher", "student_nokd", "student")


@dataclass
class WeightScan:
    tensors: int  # tensors found anywhere in the checkpoint
    values: int  # their total number of elements
    nonfinite: dict[str, int]  # tensor path -> count of NaN/inf entries (empty = all finite)

    @property
    def ok(self) -> bool:
        return self.tensors > 0 and not self.nonfinite


def _tensors(obj, prefix: str = ""):
    """(path, tensor) for every tensor in nested dicts/lists (model_state, extra, ...)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def weight_scan(model_pt: str | Path) -> WeightScan:
    """Count non-finite values in every tensor of a slmrec checkpoint (weights_only load)."""
    ckpt = load_checkpoint(model_pt)
    tensors, values, bad = 0, 0, {}
    for name, t in _tensors(ckpt):
        tensors += 1
        values += t.numel()
        if t.is_floating_point() or t.is_complex():
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                bad[name] = n_bad
    return WeightScan(tensors, values, bad)


def validation_metric_name(params: Params, model: str) -> str:
    """The metric a model's training selected its checkpoint on (train_sasrec or train_llm .metric)."""
    return (params.train_sasrec if model == "sasrec" else params.train_llm).metric


def best_validation(train_json: str | Path, metric: str) -> dict:
    """{metric, value, epoch} of the selected checkpoint; ValueError when it is missing or not finite.

    The value must also appear in that epoch's history row (`valid/<metric>`): a best score the
    history does not back is a broken record.
    """
    path = Path(train_json)
    if not path.is_file():
        raise ValueError(f"{path} missing: the stage wrote no training record")
    info = json.loads(path.read_text())
    best = info.get("best_valid") or {}
    value, epoch = best.get("metric"), best.get("epoch")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: best_valid.metric is {value!r}, not a finite number")
    rows = [h for h in info.get("history", []) if h.get("epoch") == epoch]
    if not rows or f"valid/{metric}" not in rows[0]:
        raise ValueError(f"{path}: no history row with valid/{metric} for the selected epoch {epoch!r}")
    recorded = rows[0][f"valid/{metric}"]
    if not math.isclose(recorded, value, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"{path}: best_valid.metric {value} differs from epoch {epoch}'s valid/{metric} {recorded}")
    return {"metric": metric, "value": float(value), "epoch": epoch}


# Expected score of a uniformly random full ranking: the target's rank is uniform on 1..n.
def _random_hr(k: int, n: int) -> float:
    return min(k, n) / n


def _random_ndcg(k: int, n: int) -> float:
    return sum(1.0 / math.log2(r + 1) for r in range(1, min(k, n) + 1)) / n


def _random_mrr(k: int | None, n: int) -> float:  # MRR has no cut-off: k is unused
    return sum(1.0 / r for r in range(1, n + 1)) / n


RANDOM_EXPECTATION = {"hr": _random_hr, "ndcg": _random_ndcg, "mrr": _random_mrr}


def random_expectation(metric: str, n_items: int) -> float:
    name, _, k = metric.partition("@")
    if name not in RANDOM_EXPECTATION or (name != "mrr" and not k.isdigit()):
        raise ValueError(f"promotion: no random baseline for metric {metric!r}; known: hr@k, ndcg@k, mrr")
    if n_items < 1:
        raise ValueError(f"promotion: n_items must be >= 1, got {n_items}")
    return RANDOM_EXPECTATION[name](int(k) if k else None, n_items)


@dataclass
class Verdict:
    """The candidate against its baselines. errors block promotion; warnings are recorded with it."""

    candidate: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # one per (baseline, metric): the comparison table

    @property
    def severity(self) -> str | None:
        return "ERROR" if self.errors else ("WARN" if self.warnings else None)

    def markdown(self) -> str:
        lines = ["Validation split, paired bootstrap 95% CI of candidate − baseline; threshold = −allowed drop × baseline.",
                 "",
                 "| baseline | metric | candidate | baseline | diff [95% CI] | threshold | decision |",
                 "| --- | --- | ---: | ---: | --- | ---: | --- |"]
        for r in self.rows:
            lines.append(f"| {r['baseline']} | {r['metric']} | {r['candidate_value']:.4f} | {r['baseline_value']:.4f} | "
                         f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] | {r['threshold']:+.4f} | {r['decision']} |")
        return "\n".join(lines)


def _metric(models: dict, model: str, metric: str) -> float | None:
    value = models.get(model, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def comparison(comparisons: dict, a: str, b: str, metric: str) -> dict | None:
    """The paired CI of a − b from metrics.json (stored for one order of each pair: b − a is flipped)."""
    ci = comparisons.get(f"{a}-{b}", {}).get(metric)
    if ci is not None:
        return ci
    ci = comparisons.get(f"{b}-{a}", {}).get(metric)
    return None if ci is None else {"diff": -ci["diff"], "lo": -ci["hi"], "hi": -ci["lo"]}


def fixed_candidate(metrics: dict, cfg: PromotionConfig) -> tuple[str, str]:
    return cfg.candidate, f"promotion.candidate is {cfg.candidate} (policy fixed)"


def cheapest_not_worse(metrics: dict, cfg: PromotionConfig) -> tuple[str, str]:
    """The cheapest model per served user (1 / evaluation users/s) among those whose validation metrics[0] is not
    significantly below the best model's (the paired 95% CI of model − best reaches 0 or above)."""
    metric = cfg.metrics[0]
    validation = metrics.get("validation") or {}
    models, comparisons = validation.get("models") or {}, validation.get("comparisons") or {}
    scored = {m: _metric(models, m, metric) for m in MODELS if _metric(models, m, metric) is not None}
    if not scored:
        raise ValueError(f"policy cheapest_not_worse: no model has a finite validation {metric}")
    best = max(scored, key=scored.get)
    eligible = {}
    for m in scored:
        ci = {"diff": 0.0, "lo": 0.0, "hi": 0.0} if m == best else comparison(comparisons, m, best, metric)
        speed = (metrics.get("models", {}).get(m) or {}).get("inference_users_per_s")
        if ci is not None and ci["hi"] >= 0 and isinstance(speed, (int, float)) and speed > 0:
            eligible[m] = (1.0 / speed, ci)
    if not eligible:
        raise ValueError(f"policy cheapest_not_worse: no model with a paired CI against the best ({best}) and a "
                         "measured users/s in metrics.json")
    choice = min(eligible, key=lambda m: eligible[m][0])
    cost, ci = eligible[choice]
    return choice, (f"policy cheapest_not_worse: {choice} costs {1000 * cost:.2f} ms per user (evaluation users/s), "
                    f"the cheapest of {sorted(eligible)} whose validation {metric} is not significantly below the best "
                    f"({best}, {scored[best]:.4f}): {choice} − {best} {ci['diff']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]")


POLICIES = {"fixed": fixed_candidate, "cheapest_not_worse": cheapest_not_worse}


def choose_candidate(metrics: dict, cfg: PromotionConfig) -> tuple[str, str]:
    """(the model to promote, why) by promotion.policy."""
    if cfg.policy not in POLICIES:
        raise ValueError(f"promotion.policy {cfg.policy!r}: choose one of {sorted(POLICIES)}")
    return POLICIES[cfg.policy](metrics, cfg)


def judge(metrics: dict, n_items: int, cfg: PromotionConfig, dataset_hash: str | None = None) -> Verdict:
    """Compare cfg.candidate with each baseline of cfg.max_regression on cfg.metrics, on the VALIDATION
    split (metrics.json `validation`): the gate never decides on the test numbers it reports.

    For each (baseline, metric) the threshold is −max_regression[baseline] × the baseline's value and
    the evidence is the paired-bootstrap 95% CI [lo, hi] of candidate − baseline over users:
      hi < threshold           -> refused: significantly worse than allowed (ERROR, no promotion)
      lo < threshold <= hi     -> warned: the CI spans the threshold (WARN, promoted, recorded)
      threshold <= lo          -> passed
    Also ERROR: a model, metric or comparison missing or not finite, the evaluation made on another
    dataset, or the candidate not beating a random ranking by cfg.min_lift_over_random.
    """
    v = Verdict(cfg.candidate)
    validation = metrics.get("validation") or {}
    models, comparisons = validation.get("models") or {}, validation.get("comparisons") or {}
    if not models:
        v.errors.append("metrics.json has no validation metrics: re-run the evaluation stage")
    if dataset_hash is not None and metrics.get("dataset_hash") != dataset_hash:
        v.errors.append(f"metrics.json evaluates dataset {metrics.get('dataset_hash')!r}, "
                        f"the splits are {dataset_hash!r}")
    for metric in cfg.metrics:
        cand = _metric(models, cfg.candidate, metric)
        if cand is None:
            raw = models.get(cfg.candidate, {}).get(metric)
            v.errors.append(f"{cfg.candidate} validation {metric} missing or not finite ({raw!r})")
            continue
        floor = cfg.min_lift_over_random * random_expectation(metric, n_items)
        if cand <= floor:
            v.errors.append(f"{cfg.candidate} validation {metric} {cand:.4f} <= {cfg.min_lift_over_random}x random "
                            f"ranking ({floor:.4f} over {n_items} items)")
        for baseline, allowed in cfg.max_regression.items():
            if baseline == cfg.candidate:
                continue  # a policy may choose a baseline as the candidate: not compared with itself
            base = _metric(models, baseline, metric)
            ci = comparison(comparisons, cfg.candidate, baseline, metric)
            if base is None or not ci or not all(math.isfinite(ci.get(k, math.nan)) for k in ("diff", "lo", "hi")):
                v.errors.append(f"baseline {baseline} {metric}: validation value or paired CI missing or not finite")
                continue
            threshold = -allowed * base
            if ci["hi"] < threshold:
                decision = "refused"
                v.errors.append(f"{cfg.candidate} is significantly worse than {baseline} on validation {metric}: "
                                f"diff {ci['diff']:+.4f}, 95% CI [{ci['lo']:+.4f}, {ci['hi']:+.4f}] entirely below "
                                f"the allowed {threshold:+.4f} ({allowed:.0%} of {base:.4f})")
            elif ci["lo"] < threshold:
                decision = "warned"
                v.warnings.append(f"{cfg.candidate} vs {baseline} on validation {metric}: diff {ci['diff']:+.4f}, "
                                  f"95% CI [{ci['lo']:+.4f}, {ci['hi']:+.4f}] spans the allowed {threshold:+.4f}")
            else:
                decision = "passed"
            v.rows.append({"baseline": baseline, "metric": metric, "candidate_value": cand, "baseline_value": base,
                           "diff": ci["diff"], "lo": ci["lo"], "hi": ci["hi"], "threshold": threshold,
                           "allowed_drop": allowed, "decision": decision})
    return v


def read_evaluation(metrics_json: Path, split_dir: Path) -> tuple[dict, int, str]:
    """(metrics.json, n_items and dataset_hash of the splits) for `judge`; ValueError when a file is missing."""
    stats_json = split_dir / "stats.json"
    for path in (metrics_json, stats_json):
        if not path.is_file():
            raise ValueError(f"{path} missing: run the pipeline up to the evaluation first")
    stats = json.loads(stats_json.read_text())
    return json.loads(metrics_json.read_text()), int(stats["n_items"]), stats["dataset_hash"]


def promotion_record(
    candidate: str,
    model_dir: Path,
    card: dict,
    dvc_md5: str,
    metrics: dict,
    verdict: Verdict,
    git_commit: str,
    run_id: str,
) -> dict:
    """What deployment reads from models/promoted.json."""
    return {
        "model": candidate,
        "source_path": str(model_dir),  # where it was trained; serving reads the deployment (slmrec/serve/deploy.py)
        "content_hash": card["content_hash"],
        "dvc_md5": dvc_md5,
        "dataset_hash": metrics.get("dataset_hash"),
        "metrics": {k: v for k, v in metrics["models"][candidate].items() if isinstance(v, (int, float))},
        "validation_metrics": metrics.get("validation", {}).get("models", {}).get(candidate, {}),
        # the gate's evidence, per baseline and metric: validation CI of the difference and the decision
        "gate": [{k: r[k] for k in ("baseline", "metric", "diff", "lo", "hi", "threshold", "decision")}
                 for r in verdict.rows],
        "warnings": verdict.warnings,
        "protocol": metrics.get("protocol"),
        "git_commit": git_commit,
        "dagster_run_id": run_id,
        "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
