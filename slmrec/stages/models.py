"""Pipeline stages for the models: pure-ish functions the CLI, DVC and Dagster all call.

    train_sasrec(splits, params, out)                        -> models/sasrec
    train_llm("teacher", splits, params, out, sasrec)        -> models/teacher
    train_llm("student", ..., teacher=None)                  -> models/student_nokd (no distillation)
    train_llm("student", ..., teacher=models/teacher)        -> models/student (SLMRec distillation)
    evaluate_models(splits, params, {name: dir}, out)        -> results/metrics.json + results/results.md

A model directory holds `model.pt` (a self-describing checkpoint of the deployable model —
for the distilled student, the student alone), `train.json` (fit history, timings, parameter
counts) and `card.json` (lineage). Resumable working checkpoints live in `runs/<name>/<key>/`
(outside the DVC output, which DVC clears before a stage runs), so an interrupted `dvc repro` or
Dagster run resumes where it stopped. The key covers everything that determines the result:
the stage's params, the dataset hash, the content hash of every parent artifact (SASRec's item
table, the teacher), the backbone weights' sha256 and the code version (`hashing.code_version`);
a run whose key differs starts fresh and logs which of these changed (`runs/<name>/<key>/key.json`).

Under torchrun (`torchrun --nproc_per_node N -m slmrec.cli train ...`) every rank calls the same
function; fit() shards the batches, and rank 0 alone writes the model directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from slmrec.config import Params, to_dict
from slmrec.data.sequences import load_splits
from slmrec.eval.evaluator import EvalResult, evaluate, protocol_text, results_table
from slmrec.hashing import code_version
from slmrec.lineage import atomic_write_text, content_hash, write_card
from slmrec.models.backbones import resolve_device
from slmrec.models.base import Recommender, seeded
from slmrec.models.item_side import TextInputs, item_counts, prepare_text, side_needs_text, unseen_in
from slmrec.models.llmrec import LLMRec
from slmrec.models.sasrec import SASRec
from slmrec.models.checkpoint import load_model, model_class_path, save_atomic
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.train.distributed import current
from slmrec.train.loop import FitResult, fit

MODEL_FILE, TRAIN_FILE = "model.pt", "train.json"


KEY_FILE = "key.json"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resume_dir(runs_dir: str | Path, name: str, components: dict, log: Callable = print) -> Path:
    """`runs/<name>/<key>/` for these key components; says whether it resumes or why it starts fresh."""
    folder = Path(runs_dir) / name / _key(components)
    if (folder / "last.pt").exists():
        log(f"{name}: resuming from {folder} (same params, data, parents, backbone and code)")
        return folder
    previous = sorted(
        (p for p in (Path(runs_dir) / name).glob(f"*/{KEY_FILE}") if p.parent != folder),
        key=lambda p: p.stat().st_mtime,
    )
    if previous:
        before = json.loads(previous[-1].read_text())
        changed = sorted(k for k in set(before) | set(components) if before.get(k) != components.get(k))
        log(f"{name}: starting fresh in {folder}: {', '.join(changed)} changed since {previous[-1].parent}")
    else:
        log(f"{name}: starting fresh in {folder}")
    if current().is_main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / KEY_FILE, json.dumps(components, indent=2, sort_keys=True, default=str) + "\n")
    return folder


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
    if not current().is_main:  # torchrun: rank 0 writes the model directory
        return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir / MODEL_FILE, extra)
    atomic_write_text(out_dir / TRAIN_FILE, json.dumps(summary, indent=2) + "\n")
    write_card(out_dir, name, params=params, parents=parents,
               metrics={"valid_best": result.best_metric, "train_seconds": result.train_seconds})
    return summary


def train_sasrec(split_dir: str, params: Params, out_dir: str, runs_dir: str = "runs", log: Callable = print) -> dict:
    splits = load_splits(split_dir)
    cfg, tcfg = params.sasrec, params.train_sasrec
    train = make_train_examples(splits.train, cfg.max_len)
    valid = make_eval_examples(splits.valid, cfg.max_len)
    dist = current()
    device = dist.device if dist.distributed else resolve_device(params.llm.device)
    text, text_key = text_inputs(params, splits.n_items, cfg.item_side, train=splits.train)
    with seeded(tcfg.seed):
        model = SASRec(splits.n_items, cfg, text=text).to(device)
    ckpt = resume_dir(runs_dir, "sasrec", {
        "params": {"sasrec": to_dict(cfg), "train": to_dict(tcfg), "selection": {"exclude_history": params.eval.exclude_history}},
        "dataset": splits.dataset_hash, "code": code_version(), **({"item_text": text_key} if text_key else {}),
    }, log)
    result = fit(model, train, valid, tcfg, ckpt, log=log, eval_cfg=params.eval)
    counts = {"total": model.num_parameters(), "trainable": model.num_parameters(trainable_only=True)}
    parents = [split_dir] + ([params.item_text.out_dir] if text_key else [])
    return _finish("sasrec", model, result, Path(out_dir),
                   {"sasrec": to_dict(cfg), "train": to_dict(tcfg)}, parents, counts)


def text_inputs(
    params: Params, n_items: int, side: str, whiten: bool = False, train: list[list[int]] | None = None
) -> tuple[TextInputs | None, str | None]:
    """The prepared item text table (params.item_text.out_dir) and its content key, for a side that reads
    text; (None, None) for `id`. `train`: the training sequences (items in none of them are read through
    their text alone by id+text: their ID vectors never trained)."""
    if not side_needs_text(side):
        return None, None
    from slmrec.stages.item_text import load_item_text

    found = load_item_text(params.item_text.out_dir, n_items)
    mask = torch.from_numpy(found.mask)
    unseen = unseen_in(train, n_items) if train is not None else None
    counts = item_counts(train, n_items) if train is not None else None
    return TextInputs(prepare_text(torch.from_numpy(found.table), mask, whiten), mask, unseen, counts), found.key


def item_table(sasrec_dir: str) -> torch.Tensor:
    sasrec = load_model(Path(sasrec_dir) / MODEL_FILE, device="cpu")
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
    table = item_table(sasrec_dir)
    text, text_key = text_inputs(params, splits.n_items, cfg.item_side, cfg.text_whiten, train=splits.train)
    dist = current()
    build_cfg = dataclasses.replace(cfg, device=str(dist.device)) if dist.distributed else cfg
    with seeded(tcfg.seed):  # the initial weights depend on the seed only (not on a conversion run before)
        model: Recommender = LLMRec.build(build_cfg, role, table, text=text)
    name = "teacher" if role == "teacher" else ("student" if teacher_dir else "student_nokd")
    # the backbone's weight files are parents too: `slmrec lineage --verify` re-hashes them
    parents: list = [split_dir, sasrec_dir, *model.backbone_files] + ([params.item_text.out_dir] if text_key else [])
    run_params = {"llm": to_dict(cfg), "train": to_dict(tcfg), "selection": {"exclude_history": params.eval.exclude_history}}
    key = {"params": run_params, "dataset": splits.dataset_hash, "code": code_version(),
           "sasrec": content_hash(sasrec_dir), "backbone": model.backbone_source,
           **({"item_text": text_key} if text_key else {})}
    extra = {}
    if teacher_dir is not None:
        teacher_ckpt = str(Path(teacher_dir) / MODEL_FILE)
        teacher = load_model(teacher_ckpt, device=str(dist.device) if dist.distributed else None)
        with seeded(tcfg.seed + 1):  # the supervision heads / projectors: their own seed as well
            model = DistillationModel(model, teacher, params.distill, n_examples=len(train),
                                      data_hash=splits.dataset_hash, teacher_checkpoint=teacher_ckpt)
        log(f"teacher features: {model.cache_mode}")
        parents.insert(0, teacher_dir)
        run_params["distill"] = to_dict(params.distill)
        extra = {"teacher_hash": model.teacher_hash}
        key["teacher"] = content_hash(teacher_dir)
    ckpt = resume_dir(runs_dir, name, key, log)
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
    device: str | None = None,
) -> dict:
    """Test metrics (full ranking + sampled) of every model with paired-bootstrap CIs of differences,
    and the same on the validation split: the promotion gate decides on validation, never on the test
    numbers it reports. `device` overrides the recorded device (never the dtype)."""
    splits = load_splits(split_dir)
    results: dict[str, EvalResult] = {}
    valid_results: dict[str, EvalResult] = {}
    summary: dict = {"models": {}}
    sides: dict[str, str] = {}
    for name, model_dir in models.items():
        model = load_model(Path(model_dir) / MODEL_FILE, device=device)
        sides[name] = item_side_name(model)
        if isinstance(model, LLMRec):
            model.merge_for_inference()  # LoRA merged + constant instruction prefix cached
        test = make_eval_examples(splits.test, model.cfg.max_len)
        t0 = time.perf_counter()
        res = evaluate(model, test, params.eval, batch_size=params.train_llm.eval_batch_size)
        log(f"{name}: ndcg@10 {res.metrics['ndcg@10']:.4f} hr@10 {res.metrics['hr@10']:.4f} "
            f"mrr {res.metrics['mrr']:.4f} ({time.perf_counter() - t0:.1f} s)")
        results[name] = res
        valid_cfg = dataclasses.replace(params.eval, sampled_negatives=0)
        valid_results[name] = evaluate(model, make_eval_examples(splits.valid, model.cfg.max_len), valid_cfg,
                                       batch_size=params.train_llm.eval_batch_size)
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
    table += "\n" + item_side_line(sides, params.eval.item_side_why) + "\n"
    first = next(iter(results.values()))
    summary.update(
        protocol={**first.protocol, "split": "test (last item per user); validation = second-to-last",
                  "text": protocol_text(params.eval)},
        dataset_hash=splits.dataset_hash,
        seed=params.eval.seed,
        n_users=first.n_users,
        item_side={"models": sides, "why": params.eval.item_side_why},
        comparisons=_comparisons(results, comparisons, params),
        validation={
            "models": {n: {k: round(v, 6) for k, v in r.metrics.items()} for n, r in valid_results.items()},
            "comparisons": _comparisons(valid_results, comparisons, params),
            "n_users": next(iter(valid_results.values())).n_users,
        },
    )
    atomic_write_text(out_json, json.dumps(summary, indent=2) + "\n")
    if out_md:
        atomic_write_text(out_md, table)
    if curves_dir:
        write_curves(models, Path(curves_dir), params.train_llm.metric)
    summary["table"] = table
    return summary


def item_side_name(model: Recommender) -> str:
    """What a model reads and scores items by, as its checkpoint says: `id`, `text`, `id+text (sum)`."""
    side = model.cfg.item_side
    fusion = getattr(model.cfg, "item_fusion", "sum")
    return f"{side} ({fusion})" if side == "id+text" else side


def item_side_line(sides: dict[str, str], why: str) -> str:
    """The results table's line on the item side: what each model read (from its checkpoint) and why."""
    read = ", ".join(f"{name} `{side}`" for name, side in sides.items())
    return (f"Item side (what each model reads and scores items by; `sasrec.item_side` / `llm.item_side`): {read}. "
            f"Why: {why or 'not recorded (params.yaml eval.item_side_why)'}.")


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
