"""Ranking metrics from per-user target ranks (DESIGN.md §4).

Ranks are 1-based. **Tie rule (pessimistic):** the target's rank is 1 + the number of other
candidates whose score is >= the target's, so a model cannot gain from ties (a constant scorer
ranks every target last). Padding (item 0) is never a candidate.

Full ranking (the primary protocol): candidates are all items 1..N. Sampled (secondary, always
labelled "sampled"): candidates are the target and `n_neg` negatives drawn uniformly without
replacement from the other items, with a seeded torch.Generator.

Metrics are small registered classes computed from ranks: hr@k, ndcg@k, mrr.
"""

from __future__ import annotations

import abc
import re

import numpy as np
import torch
from torch import Tensor


def _check_scores(scores: Tensor, targets: Tensor) -> None:
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"ranks: scores must be (U, N+1) and targets (U,), got {tuple(scores.shape)}, {tuple(targets.shape)}")
    if scores.shape[1] < 2:
        raise ValueError("ranks: scores need at least one item column besides padding")
    if ((targets < 1) | (targets >= scores.shape[1])).any():
        raise ValueError(f"ranks: targets must be item ids in 1..{scores.shape[1] - 1}")
    if torch.isnan(scores[:, 1:]).any():
        raise ValueError("ranks: scores contain NaN")


def full_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """1-based rank of each target among items 1..N -> (U,) long.

    scores (U, N+1); targets (U,); exclude (U, N+1) bool: items removed from the candidates
    (e.g. the user's history); the target itself is never excluded.
    """
    _check_scores(scores, targets)
    rows = torch.arange(len(targets), device=scores.device)
    target_score = scores[rows, targets][:, None]  # (U, 1)
    beats = scores >= target_score  # (U, N+1)
    beats[:, 0] = False  # padding is not a candidate
    beats[rows, targets] = False  # the target does not beat itself
    if exclude is not None:
        beats &= ~exclude
    return beats.sum(1) + 1  # (U,)


def sampled_ranks(
    scores: Tensor,
    targets: Tensor,
    n_neg: int = 999,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    history: Tensor | None = None,
) -> Tensor:
    """1-based rank of each target among itself + `n_neg` sampled negatives -> (U,) long ("sampled").

    Negatives are drawn uniformly without replacement from items 1..N other than the target (and
    other than `history (U, L)` item ids when given; 0 entries are ignored). A row with fewer
    candidates than n_neg uses all of them. Pass `generator` to continue one stream over batches,
    else `seed` starts a fresh one (CPU generator: the draw does not depend on the device).
    """
    _check_scores(scores, targets)
    if n_neg < 1:
        raise ValueError(f"sampled_ranks: n_neg must be >= 1, got {n_neg}")
    if generator is None:
        if seed is None:
            raise ValueError("sampled_ranks: pass a seed or a generator (the sampled protocol is always seeded)")
        generator = torch.Generator().manual_seed(seed)
    U, n_cols = scores.shape
    rows = torch.arange(U)
    targets_cpu = targets.cpu()
    noise = torch.rand(U, n_cols, generator=generator)  # (U, N+1): random keys, top-n_neg = the sample
    forbidden = torch.zeros(U, n_cols, dtype=torch.bool)
    forbidden[:, 0] = True
    forbidden[rows, targets_cpu] = True
    if history is not None:
        forbidden.scatter_(1, history.cpu().long(), True)
        forbidden[:, 0] = True
    noise[forbidden] = -1.0
    k = min(n_neg, n_cols - 1)
    keys, negatives = noise.topk(k, dim=1)  # (U, k)
    valid = (keys >= 0).to(scores.device)  # rows with fewer candidates than k
    negatives = negatives.to(scores.device)
    target_score = scores[rows.to(scores.device), targets][:, None]  # (U, 1)
    beats = (scores.gather(1, negatives) >= target_score) & valid  # (U, k)
    return beats.sum(1) + 1


# ---- metrics: small registered classes; per-user values from ranks ----


class Metric(abc.ABC):
    name: str

    def __init__(self, k: int | None = None):
        self.k = k

    @property
    def key(self) -> str:
        return f"{self.name}@{self.k}" if self.k is not None else self.name

    @abc.abstractmethod
    def per_user(self, ranks: np.ndarray) -> np.ndarray:
        """Per-user values (U,) from 1-based ranks (U,)."""


class HitRate(Metric):
    name = "hr"

    def per_user(self, ranks):
        return (ranks <= self.k).astype(np.float64)


class NDCG(Metric):
    name = "ndcg"  # one relevant item: 1 / log2(rank + 1) inside the cut-off

    def per_user(self, ranks):
        return np.where(ranks <= self.k, 1.0 / np.log2(ranks + 1.0), 0.0)


class MRR(Metric):
    name = "mrr"  # over the whole ranking (no cut-off)

    def per_user(self, ranks):
        return 1.0 / ranks.astype(np.float64)


METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (HitRate, NDCG, MRR)}
CUTOFF_METRICS = {"hr", "ndcg"}


def get_metric(key: str) -> Metric:
    """'ndcg@10' -> NDCG(10); 'mrr' -> MRR()."""
    match = re.fullmatch(r"([a-z]+)(?:@(\d+))?", key)
    if not match or match.group(1) not in METRICS:
        raise ValueError(f"unknown metric {key!r}; known: {sorted(METRICS)} (with @k for {sorted(CUTOFF_METRICS)})")
    name, k = match.group(1), match.group(2)
    if (name in CUTOFF_METRICS) != (k is not None):
        raise ValueError(f"metric {key!r}: {name} {'needs' if name in CUTOFF_METRICS else 'takes no'} a cut-off @k")
    return METRICS[name](int(k) if k else None)


def _as_ranks(ranks) -> np.ndarray:
    ranks = ranks.cpu().numpy() if isinstance(ranks, Tensor) else np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0 or (ranks < 1).any():
        raise ValueError("ranks must be a non-empty 1-D array of 1-based ranks")
    return ranks


def per_user_metric(ranks, key: str) -> np.ndarray:
    return get_metric(key).per_user(_as_ranks(ranks))


def metric_keys(ks=(1, 5, 10, 20)) -> list[str]:
    """hr@k for every k, ndcg@k for k > 1 (ndcg@1 = hr@1), mrr."""
    return [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1] + ["mrr"]


def compute_metrics(ranks, ks=(1, 5, 10, 20)) -> dict[str, float]:
    """Mean over users of each metric of `metric_keys(ks)`."""
    ranks = _as_ranks(ranks)
    return {key: float(get_metric(key).per_user(ranks).mean()) for key in metric_keys(ks)}


def paired_bootstrap(ranks_a, ranks_b, metric_name: str, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """95% percentile CI of mean(metric_a - metric_b) over users, resampling users (paired).

    ranks_a / ranks_b hold the same users in the same order. Returns {diff, lo, hi}.
    """
    a, b = per_user_metric(ranks_a, metric_name), per_user_metric(ranks_b, metric_name)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: rank arrays differ in length ({len(a)} vs {len(b)}): not paired")
    if n_boot < 1:
        raise ValueError(f"paired_bootstrap: n_boot must be >= 1, got {n_boot}")
    return bootstrap_mean_ci(a - b, n_boot, seed)


def bootstrap_mean_ci(d: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """{diff, lo, hi}: the mean of per-user differences d (U,) and its 95% percentile CI, users resampled."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(d))  # bound the (chunk, U) index matrix
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi)}
