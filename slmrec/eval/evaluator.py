"""Evaluate any Recommender on (history, target) examples: full ranking + the labelled sampled variant.

`evaluate()` keeps the per-user target ranks (example order), so any two models evaluated on
the same examples can be compared with a paired bootstrap (`results_table`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from slmrec.config import EvalConfig
from slmrec.eval.metrics import compute_metrics, full_ranks, paired_bootstrap, sampled_ranks
from slmrec.models.base import Recommender
from slmrec.data.examples import Examples, iter_batches, to_device

TIE_RULE = "pessimistic (rank = 1 + #other candidates with score >= target's)"


@dataclass
class EvalResult:
    metrics: dict[str, float]  # full ranking over items 1..N
    ranks: np.ndarray  # (U,) 1-based full-ranking ranks, in example order
    sampled_metrics: dict[str, float] | None  # the "sampled" protocol (None when disabled)
    sampled_ranks: np.ndarray | None
    n_users: int
    users_per_s: float  # examples / seconds spent in full_sort_predict
    latency_ms: float  # mean full_sort_predict time per batch
    batch_size: int
    protocol: dict = field(default_factory=dict)

    def to_dict(self, with_ranks: bool = False) -> dict:
        out = {
            "metrics": self.metrics,
            "sampled_metrics": self.sampled_metrics,
            "n_users": self.n_users,
            "users_per_s": self.users_per_s,
            "latency_ms": self.latency_ms,
            "batch_size": self.batch_size,
            "protocol": self.protocol,
        }
        if with_ranks:
            out["ranks"] = self.ranks.tolist()
            out["sampled_ranks"] = None if self.sampled_ranks is None else self.sampled_ranks.tolist()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def history_mask(history: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(B, N+1) bool: True for the item ids present in `history (B, H)` (padding column included).

    The one exclusion rule of the protocol: evaluation, validation and serving all call it with
    the user's *whole* history (every item before the target), not the model's input window.
    """
    mask = torch.zeros(history.shape[0], n_cols, dtype=torch.bool, device=history.device)
    return mask.scatter_(1, history, True)


def excluded_items(batch: dict[str, torch.Tensor], cfg: EvalConfig) -> torch.Tensor | None:
    """The batch's whole histories when the protocol excludes them, else None (loud if they are missing)."""
    if not cfg.exclude_history:
        return None
    if "history" not in batch:
        raise ValueError(
            "evaluate: eval.exclude_history is on but the batch has no 'history' (build evaluation sets with "
            "slmrec.data.examples.make_eval_examples, which keeps each user's whole history)"
        )
    return batch["history"]


def protocol_text(cfg: EvalConfig) -> str:
    """The protocol in words, for every table, metrics file and metadata entry."""
    excluded = "history excluded (every item before the target)" if cfg.exclude_history else "history not excluded"
    return f"full ranking over all items, {excluded}"


def _rank_batches(model: Recommender, examples: Examples, cfg: EvalConfig, batch_size: int, device: torch.device):
    """Per-batch full ranks, sampled ranks and full_sort_predict seconds."""
    generator = torch.Generator().manual_seed(cfg.seed)
    full, sampled, seconds = [], [], []
    with torch.inference_mode():
        for batch in iter_batches(examples, batch_size):
            batch = to_device(batch, device)
            _sync(device)
            t0 = time.perf_counter()
            scores = model.full_sort_predict(batch)  # (B, N+1)
            _sync(device)
            seconds.append(time.perf_counter() - t0)
            expected = (len(batch["target"]), model.n_items + 1)
            if tuple(scores.shape) != expected:
                raise ValueError(f"{type(model).__name__}.full_sort_predict returned {tuple(scores.shape)}, expected {expected}")
            scores = scores.float()
            history = excluded_items(batch, cfg)  # (B, H) or None
            exclude = history_mask(history, scores.shape[1]) if history is not None else None
            full.append(full_ranks(scores, batch["target"], exclude).cpu())
            if cfg.sampled_negatives > 0:
                sampled.append(
                    sampled_ranks(scores, batch["target"], cfg.sampled_negatives, generator=generator, history=history).cpu()
                )
    return full, sampled, seconds


def evaluate(
    model: Recommender,
    examples: Examples,
    cfg: EvalConfig,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Rank every example's `target` with `model.full_sort_predict` (eval mode, inference_mode).

    cfg.exclude_history removes the user's whole history (the batch's `history`, every item before
    the target) from the candidates; the target itself is never removed. cfg.sampled_negatives = 0 skips the sampled protocol (validation does); its negatives
    come from one generator seeded with cfg.seed and drawn batch after batch, so they are fixed by
    (seed, example order, batch_size).
    Ties count against the target (metrics.py), so models should return float32 scores: bf16
    dot products over thousands of items tie often and would be ranked pessimistically.
    """
    if len(examples) == 0:
        raise ValueError("evaluate: no examples")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        full, sampled, seconds = _rank_batches(model, examples, cfg, batch_size, device)
    finally:
        model.train(was_training)
    ranks = torch.cat(full).numpy()
    s_ranks = torch.cat(sampled).numpy() if sampled else None
    n_neg_used = min(cfg.sampled_negatives, model.n_items - 1)
    return EvalResult(
        metrics=compute_metrics(ranks, cfg.ks),
        ranks=ranks,
        sampled_metrics=compute_metrics(s_ranks, cfg.ks) if s_ranks is not None else None,
        sampled_ranks=s_ranks,
        n_users=len(ranks),
        users_per_s=len(ranks) / sum(seconds),
        latency_ms=1000.0 * float(np.mean(seconds)),
        batch_size=batch_size,
        protocol={
            "full": f"{protocol_text(cfg)}; items 1..{model.n_items} (padding excluded)",
            "sampled": (
                f"sampled: target vs {n_neg_used} uniform negatives without replacement, seed {cfg.seed}"
                if s_ranks is not None
                else None
            ),
            "exclude_history": cfg.exclude_history,
            "ties": TIE_RULE,
            "seed": cfg.seed,
        },
    )


def _fmt_diff(ci: dict[str, float]) -> str:
    mark = "" if ci["lo"] <= 0.0 <= ci["hi"] else " *"
    return f"{ci['diff']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]{mark}"


def results_table(
    results: dict[str, EvalResult],
    metrics: tuple[str, ...] = ("hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"),
    comparisons: list[tuple[str, str]] | None = None,
    compare_metrics: tuple[str, ...] = ("ndcg@10", "hr@10", "mrr"),
    n_boot: int = 1000,
    seed: int = 2025,
    dataset_hash: str | None = None,
    split: str = "test (leave-one-out: each user's last item; tuned on the second-to-last)",
) -> str:
    """Markdown: protocol line, one row per model (full + sampled metrics, speed), and paired-bootstrap
    95% CIs of the differences `a - b` for each (a, b) in `comparisons` (default: each model - the first).
    """
    if not results:
        raise ValueError("results_table: no results")
    names = list(results)
    first = results[names[0]]
    for name in names:
        if results[name].n_users != first.n_users:
            raise ValueError(f"results_table: {name} has {results[name].n_users} users, {names[0]} {first.n_users}")
    lines = [
        f"Protocol: {first.protocol.get('full')}; split {split}; ties {first.protocol.get('ties')}; "
        f"{first.n_users} users; dataset hash {dataset_hash or 'n/a'}; seed {first.protocol.get('seed')}.",
        "",
    ]
    sampled_cols = ["hr@10", "ndcg@10", "mrr"] if first.sampled_metrics else []
    header = ["model", *metrics, *[f"sampled {m}" for m in sampled_cols], "users/s", "ms/batch"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        r = results[name]
        cells = [name, *[f"{r.metrics[m]:.4f}" for m in metrics]]
        cells += [f"{r.sampled_metrics[m]:.4f}" for m in sampled_cols] if r.sampled_metrics else ["-"] * len(sampled_cols)
        cells += [f"{r.users_per_s:.1f}", f"{r.latency_ms:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if first.sampled_metrics:
        lines += ["", f"Sampled columns: {first.protocol.get('sampled')}."]
    comparisons = comparisons if comparisons is not None else [(n, names[0]) for n in names[1:]]
    if comparisons:
        lines += [
            "",
            f"Differences (full ranking), paired bootstrap 95% CI over users, {n_boot} resamples, seed {seed}; "
            "* = CI excludes 0.",
            "",
            "| comparison | " + " | ".join(compare_metrics) + " |",
            "|" + "---|" * (len(compare_metrics) + 1),
        ]
        for a, b in comparisons:
            for name in (a, b):
                if name not in results:
                    raise ValueError(f"results_table: comparison names unknown model {name!r} (have {names})")
            cells = [
                _fmt_diff(paired_bootstrap(results[a].ranks, results[b].ranks, m, n_boot=n_boot, seed=seed))
                for m in compare_metrics
            ]
            lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
