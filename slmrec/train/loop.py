"""One training loop for every model: `fit()`.

The loop knows nothing about the model beyond the `Recommender` interface
(slmrec/models/base.py): `calculate_loss(batch) -> LossOutput`, `trainable_state_dict()`,
`load_trainable_state_dict()`, `config_dict()`. A wrapper module with frozen submodules (the
distiller's teacher) works as is: only parameters with requires_grad are optimised and only
the trainable state is checkpointed.

    AdamW -> linear warm-up + cosine decay (per optimizer step) -> grad accumulation + clipping
    -> validation each epoch on `cfg.metric` (full ranking) -> best.pt on improvement
    -> early stopping after `cfg.patience` epochs without improvement (0 disables it)
    -> last.pt at the end of every epoch and every `cfg.checkpoint_every` optimizer steps.

Calling fit() on a directory that holds last.pt resumes from it, mid-epoch too: the epoch's
shuffled order is a function of (seed, epoch), the batches already done are skipped, and the
RNG, optimizer and scheduler states are restored, so the resumed run ends with the same
weights as an uninterrupted one. A finished run (last.pt marked stopped) returns at once.

Under torchrun (a process group of W > 1 ranks, see slmrec/train/distributed.py) every rank
walks the same global batch order and trains on rows rank::W of each global batch; its loss is
weighted by its share of the batch's rows and the gradients are summed over the ranks before
each optimizer step, so one step sees the single-process batch (exactly so when the loss is a
mean over rows with equal target counts; otherwise with the same per-part weighting that grad
accumulation uses). Rank 0 alone validates, logs and writes checkpoints and broadcasts its
decisions (best epoch, stop) so all ranks stop together; only rank 0 touches ckpt_dir.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from slmrec.config import EvalConfig, TrainConfig
from slmrec.eval.evaluator import evaluate
from slmrec.models.base import Recommender
from slmrec.train.checkpoint import (
    BEST,
    LAST,
    get_rng_state,
    load_checkpoint,
    model_class_path,
    save_atomic,
    set_rng_state,
)
from slmrec.data.examples import (
    Examples,
    bucket_order,
    epoch_order,
    iter_batch_rows,
    lengths,
    num_batches,
    shard_rows,
    to_device,
)
from slmrec.train.distributed import (
    all_gather_object,
    all_reduce_grads,
    barrier,
    broadcast_object,
    current,
    rank_seed,
    sync_module,
)

EvaluateFn = Callable[[Recommender, Examples], dict[str, float]]
# TrainConfig fields that may change between a run and its resumption (they don't change the trajectory)
RESUMABLE_CHANGES = {"max_train_seconds", "eval_batch_size", "patience", "checkpoint_every"}


@dataclass
class FitResult:
    best_metric: float  # best validation value of cfg.metric
    best_epoch: int  # 1-based epoch that reached it
    history: list[dict[str, float]]  # one row per epoch: train/<term> means, valid/<metric>, lr, seconds
    train_seconds: float  # time spent in training steps (validation excluded), over all resumptions
    seconds_per_epoch: float  # train_seconds per epoch (mean over the epochs run)
    steps: int  # optimizer steps
    eval_seconds: float = 0.0  # time spent in validation
    stop_reason: str = ""  # epochs | early_stopping | time_budget
    resumed: bool = False


@dataclass
class _TrainerState:
    """The loop's bookkeeping: stored in last.pt so a run can resume anywhere."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    step: int = 0  # optimizer steps
    best_metric: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    epoch_start_seconds: float = 0.0  # train_seconds when the current epoch began
    term_sums: dict[str, float] = field(default_factory=dict)  # current epoch, over micro-batches
    term_count: int = 0
    stop_reason: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the base lr, then cosine decay to 0 (= transformers' schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return LambdaLR(optimizer, factor)


def constant_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up, then the base lr until the run stops (RecBole's SASRec): for runs that early
    stopping ends at an epoch nobody knows in advance, where a cosine sized for `epochs` would not fit."""
    return LambdaLR(optimizer, lambda step: step / max(1, warmup_steps) if step < warmup_steps else 1.0)


SCHEDULES = {"cosine": cosine_with_warmup, "constant": constant_with_warmup}


def default_evaluate_fn(batch_size: int, device: torch.device, eval_cfg: EvalConfig | None = None) -> EvaluateFn:
    """Validation metrics under the test protocol (`eval_cfg`: full ranking, the same history exclusion);
    the sampled variant is skipped: it is not used for selection."""
    cfg = dataclasses.replace(eval_cfg or EvalConfig(), sampled_negatives=0)

    def evaluate_fn(model: Recommender, examples: Examples) -> dict[str, float]:
        return evaluate(model, examples, cfg, batch_size=batch_size, device=device).metrics

    return evaluate_fn


HEARTBEAT_SECONDS = 30.0  # without a progress bar, log the running loss this often


def _progress_disabled() -> bool:
    return bool(os.environ.get("SLMREC_NO_TQDM")) or not sys.stderr.isatty()


def _check_config(cfg: TrainConfig, n_train: int, world_size: int = 1) -> None:
    problems = []
    if n_train == 0:
        problems.append("no training examples")
    if cfg.batch_size < world_size:
        problems.append(f"batch_size (the global batch) {cfg.batch_size} < {world_size} processes: some would idle")
    for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.patience < 0:
        problems.append(f"patience must be >= 0 (got {cfg.patience}; 0 disables early stopping)")
    if cfg.schedule not in SCHEDULES:
        problems.append(f"schedule must be one of {sorted(SCHEDULES)} (got {cfg.schedule!r})")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        problems.append(f"warmup_ratio must be in [0, 1) (got {cfg.warmup_ratio})")
    if problems:
        raise ValueError("fit: bad TrainConfig / data: " + "; ".join(problems))


def _check_resumable(ckpt: dict[str, Any], model: Recommender, cfg: TrainConfig, data_hash: str, extra, path) -> None:
    problems = []
    if ckpt["model_class"] != model_class_path(model):
        problems.append(f"model class {ckpt['model_class']} != {model_class_path(model)}")
    if ckpt["model_config"] != model.config_dict():
        problems.append(f"model config {ckpt['model_config']} != {model.config_dict()}")
    if ckpt["data_hash"] != data_hash:
        problems.append("training/validation data differ from the checkpoint's (data_hash)")
    changed = {
        k for k, v in dataclasses.asdict(cfg).items() if ckpt["train_config"].get(k) != v and k not in RESUMABLE_CHANGES
    }
    if changed:
        problems.append(f"TrainConfig fields changed: {sorted(changed)}")
    if ckpt.get("extra") != extra:
        problems.append(f"extra state differs: {ckpt.get('extra')} != {extra}")
    if problems:
        raise ValueError(
            f"cannot resume from {path}: " + "; ".join(problems) + " (use a fresh ckpt_dir to start over)"
        )


def fit(
    model: Recommender,
    train_examples: Examples,
    valid_examples: Examples,
    cfg: TrainConfig,
    ckpt_dir: str | Path,
    evaluate_fn: EvaluateFn | None = None,
    device: str | torch.device | None = None,
    extra_state: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int], None] | None = None,
    restore_best: bool = True,
    eval_cfg: EvalConfig | None = None,
) -> FitResult:
    """Train `model` on `train_examples`, select on `valid_examples`; checkpoints in `ckpt_dir`.

    evaluate_fn(model, valid_examples) -> metrics dict containing cfg.metric (higher is better);
      default: full-ranking metrics of slmrec.eval.evaluator.
    device: default the device of the model's parameters.
    extra_state: JSON-like dict stored in every checkpoint (e.g. the teacher's hash); a resume
      with different extra_state is refused.
    on_step(step): called after every optimizer step (and its checkpoint); tests raise from it
      to simulate a killed run.
    restore_best: on return the model holds best.pt's weights (else the last weights).
    eval_cfg: the protocol of the default evaluate_fn (params.eval; default EvalConfig()), so that
      validation masks the history exactly as the test table does.

    Under torchrun, call it on every rank with the model on that rank's device (DistInfo.device)
    and the same arguments; every rank returns the same FitResult and weights.
    """
    dist_info = current()  # rank 0 of 1 unless torchrun started a process group
    main = dist_info.is_main
    if not main:
        log = _silent
    _check_config(cfg, len(train_examples), dist_info.world_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    sync_module(model)  # W > 1: same architecture on every rank, rank 0's weights everywhere (as DDP)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"fit: {type(model).__name__} has no parameter with requires_grad")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = num_batches(len(train_examples), cfg.batch_size)
    example_lengths = lengths(train_examples) if cfg.length_buckets else None  # (N,) for bucket_order
    total_steps = math.ceil(n_batches / cfg.grad_accum) * cfg.epochs
    scheduler = SCHEDULES[cfg.schedule](optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    evaluate_fn = evaluate_fn or default_evaluate_fn(cfg.eval_batch_size, device, eval_cfg)
    data_hash = f"{train_examples.content_hash()}:{valid_examples.content_hash()}"
    extra_state = extra_state or {}
    ckpt_dir = Path(ckpt_dir)

    def checkpoint(st: _TrainerState, full: bool) -> dict[str, Any]:
        ckpt = {
            "model_class": model_class_path(model),
            "model_config": model.config_dict(),
            "model_state": model.trainable_state_dict(),
            "train_config": dataclasses.asdict(cfg),
            "step": st.step,
            "epoch": st.epoch,
            "batch_in_epoch": st.batch_in_epoch,
            "best_metric": st.best_metric,
            "best_epoch": st.best_epoch,
            "metric": cfg.metric,
            "history": st.history,
            "data_hash": data_hash,
            "extra": extra_state,
            "world_size": dist_info.world_size,
        }
        if full:
            ckpt |= {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": get_rng_state(),
                "trainer": dataclasses.asdict(st),
            }
        return ckpt

    def save(st: _TrainerState, name: str, full: bool) -> None:
        """Called by every rank at the same points (the RNG states are gathered); rank 0 writes."""
        rng_by_rank = all_gather_object(get_rng_state()) if full and dist_info.distributed else None
        if main:
            ckpt = checkpoint(st, full)
            if rng_by_rank is not None:
                ckpt["rng_by_rank"] = rng_by_rank
            save_atomic(ckpt, ckpt_dir / name)

    def reduce_terms(st: _TrainerState) -> None:
        """Sum the ranks' loss-term sums into rank 0's (the others restart from zero)."""
        if dist_info.distributed:
            total: dict[str, float] = {}
            for part in all_gather_object(st.term_sums):
                for name, value in part.items():
                    total[name] = total.get(name, 0.0) + value
            st.term_sums = total if main else {}

    st = _TrainerState()
    ckpt = load_checkpoint(ckpt_dir / LAST) if main and (ckpt_dir / LAST).exists() else None
    ckpt = broadcast_object(ckpt)  # on CPU: the optimizer/model loaders move tensors to the device
    resumed = ckpt is not None
    if resumed:
        _check_resumable(ckpt, model, cfg, data_hash, extra_state, ckpt_dir / LAST)
        model.load_trainable_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        st = _TrainerState(**ckpt["trainer"])
        if not main:
            st.term_sums = {}  # rank 0's sums already include every rank's share
        _restore_rng(ckpt, dist_info.rank, dist_info.world_size, cfg.seed, st.step, log)
        log(f"resumed {ckpt_dir / LAST}: epoch {st.epoch + 1}, batch {st.batch_in_epoch}/{n_batches}, step {st.step}")
    else:
        seed_everything(rank_seed(cfg.seed, dist_info.rank))

    def over_budget() -> bool:
        return cfg.max_train_seconds is not None and st.train_seconds + st.eval_seconds >= cfg.max_train_seconds

    def stop_for_budget() -> bool:  # rank 0's clock decides: every rank stops after the same step
        return cfg.max_train_seconds is not None and bool(broadcast_object(over_budget()))

    while not st.stop_reason:
        # ---- train one epoch (or what is left of it) ----
        model.train()
        order = epoch_order(len(train_examples), cfg.seed, st.epoch)  # the same on every rank
        if cfg.length_buckets:
            order = bucket_order(order, example_lengths, cfg.batch_size, cfg.length_buckets, cfg.seed, st.epoch)
        first = st.batch_in_epoch  # > 0 when resuming mid-epoch: those batches are done
        quiet = _progress_disabled() or not main
        bar = tqdm(total=n_batches, initial=first, desc=f"epoch {st.epoch + 1}", disable=quiet)
        tick = heartbeat = time.perf_counter()
        for b, rows in enumerate(iter_batch_rows(order, cfg.batch_size, first), first):
            group_start = b - b % cfg.grad_accum
            group_size = min(cfg.grad_accum, n_batches - group_start)  # the epoch's last group may be short
            mine = shard_rows(rows, dist_info.rank, dist_info.world_size)  # all rows in one process
            if len(mine):  # a short last batch can leave a rank without rows: it only joins the all-reduce
                share = len(mine) / len(rows)  # 1.0 in one process
                model.set_progress(st.step / total_steps)
                out = model.calculate_loss(to_device(train_examples.batch(mine), device))
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(
                        f"fit: non-finite loss {out.loss.item()} at epoch {st.epoch + 1}, batch {b}"
                    )
                (out.loss * share / group_size).backward()
                for name, value in {"loss": out.loss.item(), **out.terms}.items():
                    st.term_sums[name] = st.term_sums.get(name, 0.0) + float(value) * share
            st.term_count += 1
            st.batch_in_epoch = b + 1
            bar.update(1)
            if b + 1 - group_start < group_size:
                continue  # keep accumulating
            all_reduce_grads(params)  # sum of the ranks' weighted gradients (nothing to do in one process)
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if main:  # the same on every rank: count it once
                    st.term_sums["grad_norm"] = st.term_sums.get("grad_norm", 0.0) + float(grad_norm) * group_size
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            now = time.perf_counter()
            st.train_seconds += now - tick
            tick = now
            if main:
                bar.set_postfix(loss=f"{out.loss.item():.4f}")
                if quiet and now - heartbeat >= HEARTBEAT_SECONDS:  # no progress bar (DVC, Dagster): a log line
                    heartbeat = now
                    log(f"epoch {st.epoch + 1} batch {b + 1}/{n_batches} step {st.step} "
                        f"loss {st.term_sums.get('loss', 0.0) / max(1, st.term_count):.4f} "
                        f"({st.train_seconds - st.epoch_start_seconds:.0f} s this epoch)")
            if st.step % cfg.checkpoint_every == 0 and st.batch_in_epoch < n_batches:
                reduce_terms(st)
                save(st, LAST, full=True)
            if on_step is not None:
                on_step(st.step)
            if stop_for_budget():
                st.stop_reason = "time_budget"
                break
        bar.close()

        # ---- validate, select, stop (rank 0 decides, every rank follows) ----
        reduce_terms(st)
        improved = False
        if main:
            t0 = time.perf_counter()
            metrics = evaluate_fn(model, valid_examples)
            st.eval_seconds += time.perf_counter() - t0
            if cfg.metric not in metrics:
                raise ValueError(f"fit: evaluate_fn returned no {cfg.metric!r} (got {sorted(metrics)})")
            value = float(metrics[cfg.metric])
            if not math.isfinite(value):
                raise FloatingPointError(f"fit: validation {cfg.metric} is {value} at epoch {st.epoch + 1}")
            row = {
                "epoch": st.epoch + 1,
                "step": st.step,
                "lr": scheduler.get_last_lr()[0],
                "train_seconds": st.train_seconds - st.epoch_start_seconds,
                **{f"train/{k}": v / max(1, st.term_count) for k, v in st.term_sums.items()},
                **{f"valid/{k}": float(v) for k, v in metrics.items()},
            }
            st.history.append(row)
            improved = value > st.best_metric
            if improved:
                st.best_metric, st.best_epoch, st.bad_epochs = value, st.epoch + 1, 0
            else:
                st.bad_epochs += 1
            terms = " ".join(f"{k[6:]}={v:.4f}" for k, v in row.items() if k.startswith("train/"))
            log(
                f"epoch {st.epoch + 1}/{cfg.epochs} step {st.step} {terms} | valid {cfg.metric}={value:.4f}"
                f"{' *' if improved else ''} | {row['train_seconds']:.1f}s"
            )
            if not st.stop_reason:  # the epoch was completed
                st.epoch += 1
                st.batch_in_epoch, st.term_sums, st.term_count = 0, {}, 0
                st.epoch_start_seconds = st.train_seconds
                if cfg.patience > 0 and st.bad_epochs >= cfg.patience:
                    st.stop_reason = "early_stopping"
                elif st.epoch >= cfg.epochs:
                    st.stop_reason = "epochs"
                elif over_budget():
                    st.stop_reason = "time_budget"
        if dist_info.distributed:  # the others wait here while rank 0 validates
            main_st, improved = broadcast_object((st if main else None, improved))
            if not main:
                st = dataclasses.replace(main_st, term_sums={})
        if improved:
            save(st, BEST, full=False)
        save(st, LAST, full=True)
        if st.stop_reason:
            log(f"stopped ({st.stop_reason}): best {cfg.metric}={st.best_metric:.4f} at epoch {st.best_epoch}")

    if restore_best:
        where = "cpu" if dist_info.distributed else device  # pickled CUDA tensors would land on rank 0's GPU
        best = load_checkpoint(ckpt_dir / BEST, map_location=where)["model_state"] if main else None
        model.load_trainable_state_dict(broadcast_object(best))
    barrier()  # W > 1: rank 0 has written its last checkpoint when fit() returns on any rank
    epochs_run = max(1, len(st.history))
    return FitResult(
        best_metric=st.best_metric,
        best_epoch=st.best_epoch,
        history=st.history,
        train_seconds=st.train_seconds,
        seconds_per_epoch=st.train_seconds / epochs_run,
        steps=st.step,
        eval_seconds=st.eval_seconds,
        stop_reason=st.stop_reason,
        resumed=resumed,
    )


def _silent(_: str) -> None:
    """The log of ranks other than 0."""


def _restore_rng(ckpt: dict[str, Any], rank: int, world_size: int, seed: int, step: int, log) -> None:
    """Each rank continues its own saved RNG stream; a run resumed with another number of processes
    cannot, so rank 0 continues the saved main stream and the others reseed (and it is logged)."""
    by_rank = ckpt.get("rng_by_rank")
    saved_world = len(by_rank) if by_rank is not None else 1
    if saved_world == world_size:
        set_rng_state(by_rank[rank] if by_rank is not None else ckpt["rng"])
        return
    log(
        f"resuming a {saved_world}-process run with {world_size} process(es): rank 0 continues the saved RNG "
        "stream, other ranks reseed (dropout and sampled negatives differ from an uninterrupted run; the "
        "batch order does not)"
    )
    if rank == 0:
        set_rng_state(ckpt["rng"])
    else:
        seed_everything(rank_seed(seed, rank) + step)
