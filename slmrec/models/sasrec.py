"""SASRec (Kang & McAuley, 2018): causal self-attention over item ids (RecBole's sasrec.py layout).

    input_ids (B, L) -> item embedding + learned position embedding -> dropout
    -> `layers` pre-LN Transformer blocks (causal attention, GELU MLP) -> final LayerNorm
    -> state h (B, L, H) at every position -> scores h @ E^T against the same item table E.

Pre-LN (LayerNorm before attention and MLP, plus a final LayerNorm), as in the original SASRec
code; RecBole's port uses post-LN. Positions are counted from the end of the window (the most
recent item always has position max_len - 1), which is what left padding needs.

Padding: a query attends to the non-padding keys at or before it, and always to itself, so
padding positions (and all-padding rows) never see an all-masked softmax: no NaN. Padding
positions carry no target and are ignored by the losses.

Training uses every position (each state predicts the next item). Losses, chosen by
`SASRecConfig.loss` from the LOSSES registry:
  ce  — softmax cross-entropy over all items 1..n (default; the padding column is excluded);
  bce — binary cross-entropy of the target vs one negative per position, drawn uniformly from
        the items other than the target with torch's global RNG (seeded and checkpointed by fit()).
`item_embeddings()` is the table the LLM models freeze.

Item side (`sasrec.item_side`, issue 19; slmrec/models/item_side.py): `id` (the ID embedding, as above),
`id+text` (ID embedding + a trainable map of the frozen item text vector, fused by sum: DESIGN.md §5's
probe) or `text` (the mapped text vector alone). The same vectors are read at the input and scored
against; `items()` gives them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slmrec.config import SASRecConfig
from slmrec.models.base import LossOutput, Recommender, mask_padding_column
from slmrec.models.item_side import TextInputs, build_item_side, exclude_unseen, extend_side, side_needs_text, unseen_items


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"SASRec: hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)  # (B, L, H) each
        q, k, v = (t.view(B, L, self.heads, H // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, L, hs)
        y = y.transpose(1, 2).reshape(B, L, H)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg.hidden, cfg.heads, cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.hidden)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.inner_size),
            nn.GELU(),
            nn.Linear(cfg.inner_size, cfg.hidden),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        return x + self.mlp(self.ln_2(x))


# ---- losses: (states (M, H) at positions with a target, targets (M,), item table (N+1, H)) -> scalar ----


def ce_loss(states: Tensor, targets: Tensor, table: Tensor, side: nn.Module | None = None) -> Tensor:
    logits = states @ table.T  # (M, N+1)
    logits[:, 0] = float("-inf")  # padding is never a candidate
    if side is not None:
        logits = exclude_unseen(logits, side)  # text sides: items in no training sequence are no negatives
    return F.cross_entropy(logits, targets)


def bce_loss(states: Tensor, targets: Tensor, table: Tensor, side: nn.Module | None = None) -> Tensor:
    n_items = table.shape[0] - 1
    if n_items < 2:
        raise ValueError("SASRec bce loss needs at least 2 items to draw a negative")
    draw = torch.randint(1, n_items, targets.shape, device=targets.device)  # uniform over 1..n-1
    negatives = draw + (draw >= targets).long()  # skip the target: uniform over items != target
    pos = (states * table[targets]).sum(-1)  # (M,)
    neg = (states * table[negatives]).sum(-1)  # (M,)
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


LOSSES: dict[str, Callable[..., Tensor]] = {"ce": ce_loss, "bce": bce_loss}  # (states, targets, table, item side)


def attention_mask(input_ids: Tensor) -> Tensor:
    """(B, 1, L, L) bool, True = may attend: causal, non-padding keys, and always the query itself."""
    B, L = input_ids.shape
    causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()  # (L, L)
    real_key = (input_ids != 0)[:, None, None, :]  # (B, 1, 1, L)
    self_key = torch.eye(L, dtype=torch.bool, device=input_ids.device)  # (L, L)
    return causal & (real_key | self_key)  # (B, 1, L, L)


class SASRec(Recommender):
    def __init__(self, n_items: int, cfg: SASRecConfig, text: TextInputs | None = None):
        super().__init__()
        if n_items < 1:
            raise ValueError(f"SASRec: n_items must be >= 1, got {n_items}")
        if cfg.loss not in LOSSES:
            raise ValueError(f"SASRec: unknown loss {cfg.loss!r}; known: {sorted(LOSSES)}")
        self.n_items, self.cfg = n_items, cfg
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.apply(self._init_weights)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()  # padding row
        if text is not None and text.table.shape[0] != n_items + 1:
            raise ValueError(f"SASRec: text table has {text.table.shape[0]} rows, expected {n_items + 1}")
        # built after the weight init: `id` adds nothing and draws no random numbers (results as before)
        self.item_side = build_item_side(cfg.item_side, cfg.hidden, text, cfg.item_fusion, cfg.item_id_dropout)
        self.d_text = text.table.shape[1] if text is not None else None

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- the Recommender interface ----

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """States at every position -> (B, L, H); the state at position i predicts the item after it."""
        ids = batch["input_ids"]  # (B, L)
        B, L = ids.shape
        if L > self.cfg.max_len:
            raise ValueError(f"SASRec: input length {L} > max_len {self.cfg.max_len}")
        positions = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=ids.device)  # (L,)
        table = self.items()  # (N+1, H)
        x = F.embedding(ids, table, padding_idx=0) * math.sqrt(self.cfg.hidden) + self.pos_emb(positions)  # (B, L, H)
        x = self.emb_dropout(x)
        allowed = attention_mask(ids)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)  # (B, L, H)

    def user_state(self, batch: dict[str, Tensor]) -> Tensor:
        return self.forward(batch)[:, -1]  # (B, H): after the most recent item

    def calculate_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        states = self.forward(batch)  # (B, L, H)
        targets = batch["targets"]  # (B, L)
        has_target = targets != 0
        if not has_target.any():
            raise ValueError("SASRec.calculate_loss: batch has no target")
        loss = LOSSES[self.cfg.loss](states[has_target], targets[has_target], self.items(), self.item_side)
        return LossOutput(loss, {self.cfg.loss: loss.item()})

    def predict(self, batch: dict[str, Tensor], items: Tensor) -> Tensor:
        u = self.user_state(batch)  # (B, H)
        return (self.items()[items] * u[:, None, :]).sum(-1)  # (B, K)

    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        u = self.user_state(batch)  # (B, H)
        return mask_padding_column(u @ self.items().T)  # (B, N+1)

    def items(self) -> Tensor:
        """The item vectors read and scored against (n_items + 1, H): the item side over the ID embedding."""
        return self.item_side(self.item_emb.weight)

    def item_embeddings(self) -> Tensor:
        """The item table (n_items + 1, H), row 0 = padding; detached (for `id`, shares storage: clone to keep)."""
        return self.items().detach()

    def add_items(self, rows: Tensor) -> None:
        """Items added to the catalogue after training, read through their text alone (rows: their prepared
        text vectors, (m, d_text)); the ID table grows by m zero rows, which the side never reads."""
        extend_side(self.item_side, rows)  # first: an `id` side refuses before anything changes
        old = self.item_emb.weight.detach()  # (n_items + 1, H)
        grown = nn.Embedding(len(old) + len(rows), old.shape[1], padding_idx=0).to(old)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[: len(old)] = old
        self.item_emb = grown
        self.n_items += len(rows)

    def config_dict(self) -> dict:
        return {"n_items": self.n_items, "sasrec": dataclasses.asdict(self.cfg),
                **({"d_text": self.d_text} if self.d_text is not None else {}),
                **({"unseen_items": n} if (n := unseen_items(self.item_side)) else {})}  # fmt: skip

    @classmethod
    def from_config_dict(cls, config: dict) -> "SASRec":
        cfg = SASRecConfig(**config["sasrec"])
        text = (TextInputs.empty(config["n_items"] + 1, config["d_text"], unseen="unseen_items" in config)
                if side_needs_text(cfg.item_side) else None)  # fmt: skip
        return cls(config["n_items"], cfg, text=text)
