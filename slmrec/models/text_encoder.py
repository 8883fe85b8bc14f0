"""Item texts -> vectors with the frozen pretrained trunk (issue 19): the item text table's encoder.

    vectors = encode_texts(backbone, texts, pooling="mean", max_tokens=64, batch_size=32)  # (N, H) float32

The trunk (`load_backbone(cfg, n_layers)`: the same converted SmolLM2 weights the recommenders use,
its first `n_layers` decoder layers and the final norm) runs each text once, without gradients;
the texts of a batch are right-padded and masked. Poolings (registered, one interface):

    mean   mean of the final normed states over the text's tokens (DESIGN.md §5's probe)
    last   the state of the text's last token (what a causal model has read the whole text into)

An empty text gives a zero vector; the caller flags it (the model gives it a learned fallback).

Encoders (`load_text_encoder(profile, layers, llm)`): an LLM backbone profile (`smol`, `tiny`, `hf`: the
recommenders' trunk) or a sentence encoder (`minilm`: slmrec.models.sentence_encoder, the control).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from slmrec.config import LLMRecConfig
from slmrec.models.backbones import Backbone


def _mean(states: Tensor, keep: Tensor) -> Tensor:
    w = keep.to(states.dtype)[..., None]  # (B, T, 1)
    return (states * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, H)


def _last(states: Tensor, keep: Tensor) -> Tensor:
    last = (keep.long().sum(1) - 1).clamp_min(0)  # (B,) right padding: the last real token
    return states[torch.arange(states.shape[0], device=states.device), last]  # (B, H)


POOLINGS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mean": _mean, "last": _last}


def load_text_encoder(profile: str, n_layers: int, llm: LLMRecConfig | None = None) -> Backbone:
    """The frozen encoder of an item text table: a sentence encoder by name, else the LLM backbone profile
    (`llm` gives its path/device; float32 always: the table is encoded once)."""
    import dataclasses

    from slmrec.models.backbones import load_backbone
    from slmrec.models.sentence_encoder import SENTENCE_ENCODERS, load_sentence_encoder

    if profile in SENTENCE_ENCODERS:
        return load_sentence_encoder(profile, n_layers)
    llm = llm or LLMRecConfig(device="cpu")
    return load_backbone(dataclasses.replace(llm, profile=profile, dtype="float32"), n_layers)


def check_pooling(name: str) -> None:
    if name not in POOLINGS:
        raise ValueError(f"item_text.pooling: unknown pooling {name!r}; known: {sorted(POOLINGS)}")


def token_ids(backbone: Backbone, texts: list[str], max_tokens: int) -> list[list[int]]:
    if max_tokens < 1:
        raise ValueError(f"item_text.max_tokens must be >= 1, got {max_tokens}")
    return [backbone.encode(t)[:max_tokens] if t else [] for t in texts]


@torch.no_grad()
def encode_ids(backbone: Backbone, ids: list[list[int]], pooling: str) -> Tensor:
    """One batch of token id lists -> (B, H) float32; an empty list gives zeros."""
    check_pooling(pooling)
    model = backbone.model
    width = max(1, max(len(x) for x in ids))
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    keep = torch.zeros(len(ids), width, dtype=torch.bool)
    for row, x in enumerate(ids):
        batch[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        keep[row, : len(x)] = True
    batch, keep = batch.to(backbone.device), keep.to(backbone.device)
    out = model(input_ids=batch, attention_mask=keep.long()).last_hidden_state  # (B, T, H) after the final norm
    pooled = POOLINGS[pooling](out.float(), keep)  # (B, H)
    return pooled * keep.any(1, keepdim=True).float()  # empty text -> zeros


def encode_texts(
    backbone: Backbone, texts: list[str], pooling: str = "mean", max_tokens: int = 64, batch_size: int = 32
) -> Tensor:
    """(N, H) float32, rows in the order of `texts`. Batches hold texts of similar length (sorted), so
    little padding runs; the result does not depend on the batching up to float rounding."""
    ids = token_ids(backbone, texts, max_tokens)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out = torch.zeros(len(ids), backbone.hidden)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = encode_ids(backbone, [ids[i] for i in rows], pooling).cpu()
    return out


__all__ = ["POOLINGS", "check_pooling", "load_text_encoder", "token_ids", "encode_ids", "encode_texts"]
