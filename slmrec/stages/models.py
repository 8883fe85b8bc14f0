"""Pipeline stages for the models: pure-ish functions the CLI, DVC and Dagster all call.

    train_sasrec(splits, params, out)                        -> models/sasrec
    train_llm("teacher", splits, params, out, sasrec)        -> models/teacher
    train_llm("student", ..., teacher=None)                  -> models/student_nokd (no distillation)
    train_llm("student", ..., teacher=models/teacher)        -> models/student (SLMRec distillation)
    evaluate_models(splits, params, {name: dir}, out)        -> results/metrics.json + results/results.md

A model directory holds `model.pt` (a self-describing checkpoint of the deployable model —
for the distilled student, the student alone), `train.json` (fit history, timings, parameter
counts) and `card.json` (lineage). Resumable working checkpoints live in `runs/<name>/<key>/`
(outside the DVC output, which DVC clears before a stage runs), keyed by the configuration and
data hash, so an interrupted `dvc repro` or Dagster run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from slmrec.config import Params, to_dict
from slmrec.data.sequences import load_splits
from slmrec.eval.evaluator import EvalResult, evaluate, results_table
from slmrec.lineage import atomic_write_text, write_card
from slmrec.models.backbones import resolve_device
from slmrec.models.base import Recommender
from slmrec.models.llmrec import LLMRec
from slmrec.models.sasrec import SASRec
from slmrec.train.checkpoint import load_model, model_class_path, save_atomic
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.train.loop import FitResult, fit

MODEL_FILE, TRAIN_FILE = "model.pt", "train.json"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_model(model: Recommender, path: Path, extra: dict | None = None) -> None:
    """The deployable checkpoint: class, config, trainable state (frozen weights rebuild from config)."""
    save_atomic(
        {
            "model_class": model_class_path(model),
            "model_config": model.config_dict(),
            "model_state": model.trainable_state_dict(),
            "extra": extra or {},
        },
        path,
    )


def _finish(
    name: str,
    model: Recommender,
    result: FitResult,
    out_dir: Path,
    params: dict,
    parents: list,
    counts: dict,
    extra: dict | None = None,
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir / MODEL_FILE, extra)
    summary = {
        "model": name,
        "best_valid": {"metric": result.best_metric, "epoch": result.best_epoch},
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "parameters": counts,
        "history": result.history,
    }
    atomic_write_text(out_dir / TRAIN_FILE, json.dumps(summary, indent=2) + "\n")
    write_card(out_dir, name, params=params, parents=parents,
               metrics={"valid_best": result.best_metric, "train_seconds": result.train_seconds})
    return summary


def train_sasrec(split_dir: str, params: Params, out_dir: str, runs_dir: str = "runs", log: Callable = print) -> dict:
    splits = load_splits(split_dir)
    cfg, tcfg = params.sasrec, params.train_sasrec
    train = make_train_examples(splits.train, cfg.max_len)
    valid = make_eval_examples(splits.valid, cfg.max_len)
    torch.manual_seed(tcfg.seed)
    model = SASRec(splits.n_items, cfg).to(resolve_device(params.llm.device))
    ckpt = Path(runs_dir) / "sasrec" / _key(to_dict(cfg), to_dict(tcfg), splits.dataset_hash)
    result = fit(model, train, valid, tcfg, ckpt, log=log, eval_cfg=params.eval)
    counts = {"total": model.num_parameters(), "trainable": model.num_parameters(trainable_only=True)}
    return _finish("sasrec", model, result, Path(out_dir),
                   {"sasrec": to_dict(cfg), "train": to_dict(tcfg)}, [split_dir], counts)


def item_table(sasrec_dir: str) -> torch.Tensor:
    sasrec = load_model(Path(sasrec_dir) / MODEL_FILE)
    if not isinstance(sasrec, SASRec):
        raise ValueError(f"{sasrec_dir}: expected a SASRec checkpoint, found {type(sasrec).__name__}")
    return sasrec.item_embeddings()  # (n_items + 1, d_id), row 0 = padding


def train_llm(
    role: str,
    split_dir: str,
    params: Params,
    out_dir: str,
    sasrec_dir: str,
    teacher_dir: str | None = None,
    runs_dir: str = "runs",
    log: Callable = print,
) -> dict:
    """Teacher (role='teacher'), student without KD (role='student', no teacher), or the distilled student."""
    from slmrec.distill.distiller import DistillationModel  # distill imports models: keep it local

    splits = load_splits(split_dir)
    cfg, tcfg = params.llm, params.train_llm
    train = make_train_examples(splits.train, cfg.max_len, cfg.windows_per_user)
    valid = make_eval_examples(splits.valid, cfg.max_len)
    torch.manual_seed(tcfg.seed)
    table = item_table(sasrec_dir)
    model: Recommender = LLMRec.build(cfg, role, table)
    name = "teacher" if role == "teacher" else ("student" if teacher_dir else "student_nokd")
    parents: list = [split_dir, sasrec_dir]
    run_params = {"llm": to_dict(cfg), "train": to_dict(tcfg)}
    extra = {}
    if teacher_dir is not None:
        teacher_ckpt = str(Path(teacher_dir) / MODEL_FILE)
        teacher = load_model(teacher_ckpt)
        model = DistillationModel(model, teacher, params.distill, n_examples=len(train),
                                  data_hash=splits.dataset_hash, teacher_checkpoint=teacher_ckpt)
        log(f"teacher features: {model.cache_mode}")
        parents.insert(0, teacher_dir)
        run_params["distill"] = to_dict(params.distill)
        extra = {"teacher_hash": model.teacher_hash}
    ckpt = Path(runs_dir) / name / _key(run_params, splits.dataset_hash, extra)
    result = fit(model, train, valid, tcfg, ckpt, extra_state=extra or None, log=log, eval_cfg=params.eval)
    deployable = model.student if teacher_dir is not None else model
    return _finish(name, deployable, result, Path(out_dir), run_params, parents, model.parameter_counts(), extra)


def evaluate_models(
    split_dir: str,
    params: Params,
    models: dict[str, str],
    out_json: str,
    out_md: str | None = None,
    curves_dir: str | None = None,
    log: Callable = print,
) -> dict:
    """Full-ranking (+ sampled) test metrics of every model, with paired-bootstrap CIs of differences."""
    splits = load_splits(split_dir)
    results: dict[str, EvalResult] = {}
    summary: dict = {"models": {}}
    for name, model_dir in models.items():
        model = load_model(Path(model_dir) / MODEL_FILE)
        if isinstance(model, LLMRec):
            model.merge_for_inference()  # LoRA merged + constant instruction prefix cached
        test = make_eval_examples(splits.test, model.cfg.max_len)
        t0 = time.perf_counter()
        res = evaluate(model, test, params.eval, batch_size=params.train_llm.eval_batch_size)
        log(f"{name}: ndcg@10 {res.metrics['ndcg@10']:.4f} hr@10 {res.metrics['hr@10']:.4f} "
            f"mrr {res.metrics['mrr']:.4f} ({time.perf_counter() - t0:.1f} s)")
        results[name] = res
        train_info = json.loads((Path(model_dir) / TRAIN_FILE).read_text())
        counts = train_info["parameters"]
        summary["models"][name] = {
            **{k: round(v, 6) for k, v in res.metrics.items()},
            "sampled": {k: round(v, 6) for k, v in (res.sampled_metrics or {}).items()},
            "params_total": counts["total"],
            "params_trainable": counts["trainable"],
            "train_seconds": round(train_info["train_seconds"], 2),
            "seconds_per_epoch": round(train_info["seconds_per_epoch"], 2),
            "inference_users_per_s": round(res.users_per_s, 2),
            "inference_ms_per_batch": round(res.latency_ms, 2),
        }
    comparisons = [(a, b) for a, b in COMPARISONS if a in results and b in results]
    table = results_table(results, comparisons=comparisons, n_boot=params.eval.bootstrap, seed=params.eval.seed,
                          dataset_hash=splits.dataset_hash)
    first = next(iter(results.values()))
    summary.update(
        protocol=first.protocol,
        dataset_hash=splits.dataset_hash,
        seed=params.eval.seed,
        n_users=first.n_users,
        comparisons=_comparisons(results, comparisons, params),
    )
    atomic_write_text(out_json, json.dumps(summary, indent=2) + "\n")
    if out_md:
        atomic_write_text(out_md, table)
    if curves_dir:
        write_curves(models, Path(curves_dir), params.train_llm.metric)
    summary["table"] = table
    return summary


def write_curves(models: dict[str, str], out: Path, metric: str) -> None:
    """One CSV per model: epoch, validation metric, mean training loss (DVC plots draw one line per file)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, model_dir in models.items():
        history = json.loads((Path(model_dir) / TRAIN_FILE).read_text())["history"]
        rows = ["epoch,valid_" + metric + ",train_loss"]
        rows += [f"{h['epoch']},{h.get('valid/' + metric, float('nan')):.6f},{h.get('train/loss', float('nan')):.6f}"
                 for h in history]
        atomic_write_text(out / f"{name}.csv", "\n".join(rows) + "\n")


COMPARISONS = [
    ("student", "student_nokd"),
    ("student", "teacher"),
    ("teacher", "student_nokd"),
    ("student", "sasrec"),
    ("teacher", "sasrec"),
    ("student_nokd", "sasrec"),
]


def _comparisons(results: dict[str, EvalResult], pairs: list[tuple[str, str]], params: Params) -> dict:
    from slmrec.eval.metrics import paired_bootstrap

    out = {}
    for a, b in pairs:
        out[f"{a}-{b}"] = {
            m: paired_bootstrap(results[a].ranks, results[b].ranks, m, n_boot=params.eval.bootstrap, seed=params.eval.seed)
            for m in ("ndcg@10", "hr@10", "mrr")
        }
    return out
