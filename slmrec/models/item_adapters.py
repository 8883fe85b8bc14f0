"""Item-side adapters: what the LLM recommender makes of the frozen SASRec item table (`llm.item_adapter`).

The table (n_items + 1, d_id) stays a frozen buffer; an adapter maps it to the vectors the model both reads
(through `input_map`) and scores against (u . e_item). Trainable adapters start as the identity (their
last layer / offsets are zero), so a run begins exactly where the frozen table would.

    none          the table as it is (the paper's and E4SRec's setup; no parameters)
    residual_mlp  e + W2 GELU(W1 e): one shared correction for every item (2 d_id h + h + d_id parameters)
    offset        e + o_item: a free vector per item, zero at start ((n_items + 1) d_id parameters)

`residual_mlp` can only re-map what the table already separates; `offset` can move each item on its own
(it learns items the table cannot tell apart), at the price of parameters per item.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NoAdapter(nn.Module):
    """The frozen table, unchanged."""

    def forward(self, table: Tensor) -> Tensor:
        return table  # (n_items + 1, d_id)

    def extend(self, m: int) -> None:
        """Items added after training: nothing per item to grow."""


class ResidualMLP(nn.Module):
    """e + W2 GELU(W1 e), W2 and its bias zero at start."""

    def __init__(self, d_id: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(d_id, hidden)
        self.down = nn.Linear(hidden, d_id)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, table: Tensor) -> Tensor:
        return table + self.down(F.gelu(self.up(table)))  # (n_items + 1, d_id)

    def extend(self, m: int) -> None:
        """Items added after training: one shared map, nothing per item to grow."""


class ItemOffset(nn.Module):
    """e + o_item, one trainable d_id vector per item (row 0, the padding item, included; never scored)."""

    def __init__(self, n_rows: int, d_id: int):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(n_rows, d_id))

    def forward(self, table: Tensor) -> Tensor:
        return table + self.offset  # (n_items + 1, d_id)

    def extend(self, m: int) -> None:
        """Items added after training get a zero offset (they never trained one)."""
        self.offset = nn.Parameter(torch.cat([self.offset.detach(), self.offset.new_zeros(m, self.offset.shape[1])]))


# name -> builder(n_rows, d_id, hidden)
ITEM_ADAPTERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "none": lambda n_rows, d_id, hidden: NoAdapter(),
    "residual_mlp": lambda n_rows, d_id, hidden: ResidualMLP(d_id, hidden),
    "offset": lambda n_rows, d_id, hidden: ItemOffset(n_rows, d_id),
}


def build_item_adapter(name: str, n_rows: int, d_id: int, hidden: int) -> nn.Module:
    if name not in ITEM_ADAPTERS:
        raise ValueError(f"llm.item_adapter: unknown adapter {name!r}; known: {sorted(ITEM_ADAPTERS)}")
    if hidden < 1:
        raise ValueError(f"llm.item_adapter_hidden must be >= 1, got {hidden}")
    return ITEM_ADAPTERS[name](n_rows, d_id, hidden)


__all__ = ["ITEM_ADAPTERS", "build_item_adapter", "NoAdapter", "ResidualMLP", "ItemOffset"]
