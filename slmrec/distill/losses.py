"""SLMRec distillation terms as pure functions (DESIGN.md §3).

For block k = 1..B, t_k is the teacher's hidden state after layer k*N_t/B and s_k the student's
after layer k*N_s/B (both the un-normed residual stream), at the same rows (positions):

    L = CE(student) + λ1·mean_k direction_loss(t_k, s_k) + λ2·mean_k norm_loss(t_k, s_k)
        + λ3·multi_supervision_loss([head_k(s_k) scores for k < B], labels)  (+ λ_kl·logit_kl)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def block_layers(n_layers: int, blocks: int) -> list[int]:
    """Layer (1-based) after which each of `blocks` equal blocks ends: k*N/B for k = 1..B.

    block_layers(8, 4) == [2, 4, 6, 8]; block_layers(4, 4) == [1, 2, 3, 4].
    """
    if blocks < 1 or n_layers < 1:
        raise ValueError(f"block_layers: need n_layers >= 1 and blocks >= 1, got n_layers={n_layers}, blocks={blocks}")
    if blocks > n_layers:
        raise ValueError(f"block_layers: {blocks} blocks need at least {blocks} layers, the model has {n_layers}")
    if n_layers % blocks:
        raise ValueError(
            f"block_layers: {n_layers} layers do not split into {blocks} equal blocks "
            f"(choose blocks dividing {n_layers}, or layer counts that {blocks} divides)"
        )
    size = n_layers // blocks
    return [k * size for k in range(1, blocks + 1)]


def direction_loss(t: Tensor, s: Tensor) -> Tensor:
    """Feature direction: mean over rows of 1 - cos(t, s). t, s (N, H) -> scalar."""
    return (1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()


def norm_loss(t: Tensor, s: Tensor) -> Tensor:
    """Feature norm: mean over rows of ||t - s||^2 / H. t, s (N, H) -> scalar.

    Divided by the hidden size H (= mean squared difference per dimension): SmolLM2's raw
    squared distances are ~1,500 against a CE of ~7, so the unscaled term would swamp the
    recommendation loss at the paper's λ2 = 0.1; per dimension it is O(1).
    """
    return (t.float() - s.float()).pow(2).sum(-1).div(t.shape[-1]).mean()


def multi_supervision_loss(head_logits: list[Tensor], labels: Tensor) -> Tensor:
    """Mean over heads of the cross-entropy of each head's item scores. logits k x (N, n_items+1), labels (N,)."""
    if not head_logits:
        raise ValueError("multi_supervision_loss: no heads (blocks = 1 leaves no intermediate block)")
    return sum(F.cross_entropy(logits, labels) for logits in head_logits) / len(head_logits)


def logit_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) of the item distributions at temperature T, times T^2 (Hinton et al.).

    Logits (N, V). Columns that are -inf anywhere (the padding column 0) are dropped first. Mean over rows.
    """
    if temperature <= 0:
        raise ValueError(f"logit_kl: temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit_kl: shapes differ: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    cols = student_logits.isfinite().all(0) & teacher_logits.isfinite().all(0)  # (V,)
    log_p_s = F.log_softmax(student_logits[:, cols].float() / temperature, dim=-1)  # (N, V')
    log_p_t = F.log_softmax(teacher_logits[:, cols].float() / temperature, dim=-1)  # (N, V')
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * temperature**2


__all__ = ["block_layers", "direction_loss", "norm_loss", "multi_supervision_loss", "logit_kl"]
