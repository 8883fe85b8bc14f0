"""The item side (issue 19): which item views a recommender reads and scores against (`llm.item_side`).

    side = build_item_side("id+text", id_dim=64, text=TextInputs(table, mask), fusion="gated")
    E = side(id_table)        # (n_items + 1, d_id): the vectors the model reads (input map) and scores (u . e)

Sides (registered; one interface, no flag branches):

    id        the (adapted) frozen SASRec table as it is (the paper's setup; no parameters)
    text      the item text table -> a trainable linear map into d_id; items without text get a learned
              fallback vector (TextView)
    id+text   both, fused by a registered fusion:
                sum      e_id + T(text)                      (T starts at zero: the run starts at `id`)
                gated    e_id + g * T(text), g = sigmoid(W [e_id; T(text)] + b) per dimension (T starts at 0)
                concat   W [e_id; T(text)] (concat-project; W starts as [I, 0]: the run starts at `id`;
                         T starts random, else W's text half and T would both get zero gradients)
                count    e_id + g_i * T(text), g_i = sigmoid(w c_i + b) per dimension, c_i = the item's
                         standardised log(1 + training count): how much text an item gets depends on how
                         often it was seen (w, b start at 0: g = 0.5; T starts at 0)

An id+text side can also carry a registered alignment of its two views, an auxiliary loss the model adds to
its own (`auxiliary(ids, targets)`; `llm.item_align`):
                none     nothing (the default)
                infonce  symmetric InfoNCE between T(text_i) and the frozen e_id,i over the step's target items
and a text-only warm-up (`llm.text_warmup`): the first share of training reads every item by its text alone.

The text table is the `item_text` stage's output, prepared once by `prepare_text` (mean-centred over the
items with text, then unit-norm rows — DESIGN.md §5's probe — or, with whitening, PCA-whitened as UniSRec
does) and held as a persistent buffer, so a checkpoint is self-contained. The score space stays d_id:
the rest of the model (input map, score head, distillation heads, the KL term) is the same for every side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TextInputs:
    """The prepared text table and its mask, as the item side holds them."""

    table: Tensor  # (n_items + 1, d_text) float32, prepared (prepare_text)
    mask: Tensor  # (n_items + 1,) bool: True = the item has text
    # (n_items + 1,) bool: True = the item never occurs in the training sequences, so its ID vector was never
    # trained as a target (a cold item): id+text reads only its text view, and text sides leave it out of the
    # training softmax (exclude_unseen). None or all False: every item seen
    unseen: Tensor | None = None
    # (n_items + 1,) long: how many training sequences hold each item (the `count` fusion reads it); None: unknown
    counts: Tensor | None = None

    @classmethod
    def empty(cls, n_rows: int, d_text: int, unseen: bool = False) -> "TextInputs":
        """Placeholders of the right shape (a checkpoint's buffers replace them when it loads)."""
        flags = torch.ones(n_rows, dtype=torch.bool) if unseen else None
        return cls(torch.zeros(n_rows, d_text), torch.zeros(n_rows, dtype=torch.bool), flags)


WHITEN_EPS = 1e-5  # added to the covariance eigenvalues: directions with ~no variance are not blown up


def prepare_text(table: Tensor, mask: Tensor, whiten: bool = False, new: Tensor | None = None) -> Tensor:
    """Centre on the mean of the rows with text; then unit-norm rows, or PCA-whiten (unit variance in every
    direction, then unit-norm). Rows without text (and row 0) become zeros: the fallback replaces them.

    new: (m, d) raw vectors of items added after training; they are prepared with the centre (and whitening)
    fitted on `table` and returned instead, (m, d): the items the model trained on keep their vectors."""
    table, mask = table.double(), mask.bool()
    if not bool(mask.any()):
        raise ValueError("item text table: no item has text; use item_side id")
    centre = table[mask].mean(0)
    x = table - centre
    basis = None
    if whiten:
        cov = x[mask].T @ x[mask] / max(1, int(mask.sum()) - 1)  # (d, d)
        values, vectors = torch.linalg.eigh(cov)
        basis = vectors / (values.clamp_min(0) + WHITEN_EPS).sqrt()
    if new is not None:
        y = new.double() - centre  # (m, d)
        return F.normalize(y @ basis if basis is not None else y, dim=1).float()
    x = F.normalize(x @ basis if basis is not None else x, dim=1)
    return (x * mask[:, None]).float()


class TextView(nn.Module):
    """T(text) = W t (no bias), or a learned fallback vector for an item without text."""

    def __init__(self, text: TextInputs, d_out: int, zero_init: bool):
        super().__init__()
        self.register_buffer("text", text.table.detach().float().clone())  # (n_items + 1, d_text)
        self.register_buffer("has_text", text.mask.detach().bool().clone())  # (n_items + 1,)
        self.map = nn.Linear(text.table.shape[1], d_out, bias=False)
        if zero_init:
            nn.init.zeros_(self.map.weight)
        else:  # rows of t are unit-norm: mapped vectors start with norm ~1
            nn.init.normal_(self.map.weight, std=d_out**-0.5)
        self.fallback = nn.Parameter(torch.zeros(d_out))

    def forward(self) -> Tensor:
        mapped = self.map(self.text)  # (n_items + 1, d_out)
        return torch.where(self.has_text[:, None], mapped, self.fallback.expand_as(mapped))

    def extend(self, rows: Tensor) -> None:
        """Append prepared text rows (m, d_text) of items added to the catalogue after training."""
        self.text = torch.cat([self.text, rows.to(self.text)])  # (n_items + 1 + m, d_text)
        self.has_text = torch.cat([self.has_text, torch.ones(len(rows), dtype=torch.bool, device=rows.device)])


class IdSide(nn.Module):
    def forward(self, ids: Tensor) -> Tensor:
        return ids  # (n_items + 1, d_id)

    def auxiliary(self, ids: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {}  # one view: nothing to align

    def set_progress(self, fraction: float) -> None:
        pass  # no schedule


def _keep_unseen(side: nn.Module, text: TextInputs) -> None:
    """Store the unseen-item flags (only when there are such items: other checkpoints stay as they were)."""
    if text.unseen is not None and bool(text.unseen.any()):
        side.register_buffer("id_unseen", text.unseen.detach().bool().clone())  # (n_items + 1,)


class TextSide(nn.Module):
    def __init__(self, d_id: int, text: TextInputs):
        super().__init__()
        self.text = TextView(text, d_id, zero_init=False)
        _keep_unseen(self, text)

    def forward(self, ids: Tensor) -> Tensor:
        return self.text()  # (n_items + 1, d_id); the id table only fixed d_id

    def auxiliary(self, ids: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {}  # one view: nothing to align

    def set_progress(self, fraction: float) -> None:
        pass  # no schedule


class SumFusion(nn.Module):
    text_starts_at_zero = True

    def __init__(self, d_id: int, text: TextInputs):
        super().__init__()

    def forward(self, e: Tensor, t: Tensor) -> Tensor:
        return e + t


class GatedFusion(nn.Module):
    text_starts_at_zero = True

    def __init__(self, d_id: int, text: TextInputs):
        super().__init__()
        self.gate = nn.Linear(2 * d_id, d_id)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # g = 0.5 everywhere at start

    def forward(self, e: Tensor, t: Tensor) -> Tensor:
        return e + torch.sigmoid(self.gate(torch.cat([e, t], -1))) * t


class ConcatFusion(nn.Module):
    text_starts_at_zero = False

    def __init__(self, d_id: int, text: TextInputs):
        super().__init__()
        self.proj = nn.Linear(2 * d_id, d_id, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, :d_id] = torch.eye(d_id)  # [I, 0]: starts at the id vectors

    def forward(self, e: Tensor, t: Tensor) -> Tensor:
        return self.proj(torch.cat([e, t], -1))


class CountGatedFusion(nn.Module):
    """e_id + g * T(text), g = sigmoid(c w + b), c = (log(1 + count) - mean) / std over the items (row 0 and
    items added after training: count 0). Issue 19's buckets: the text view lifted popular targets and hurt
    rare ones; this gate lets the model learn how much text an item gets from how often it was seen."""

    text_starts_at_zero = True

    def __init__(self, d_id: int, text: TextInputs):
        super().__init__()
        rows = text.table.shape[0]
        counts = text.counts if text.counts is not None else torch.zeros(rows, dtype=torch.long)
        if counts.shape != (rows,):
            raise ValueError(f"item counts must be ({rows},), got {tuple(counts.shape)}")
        logs = torch.log1p(counts.double()[1:])  # (n_items,)
        mean, std = logs.mean(), logs.std(unbiased=False).clamp_min(1e-6)
        self.register_buffer("count_feature", ((torch.log1p(counts.double()) - mean) / std).float())  # (rows,)
        self.register_buffer("unseen_feature", (-mean / std).float().reshape(()))  # c of an item never seen
        self.w = nn.Parameter(torch.zeros(d_id))
        self.b = nn.Parameter(torch.zeros(d_id))

    def gate(self) -> Tensor:
        return torch.sigmoid(self.count_feature[:, None] * self.w + self.b)  # (n_items + 1, d_id)

    def forward(self, e: Tensor, t: Tensor) -> Tensor:
        return e + self.gate() * t

    def extend(self, m: int) -> None:
        """m items added after training: never seen, count 0."""
        self.count_feature = torch.cat([self.count_feature, self.unseen_feature.expand(m)])


FUSIONS: dict[str, Callable[[int, TextInputs], nn.Module]] = {
    "sum": SumFusion, "gated": GatedFusion, "concat": ConcatFusion, "count": CountGatedFusion}


class IdTextSide(nn.Module):
    """id_dropout: in training, each call reads a random share of the items through their text alone (their
    ID vector zeroed, not rescaled: an item read by its text alone is what a cold item is at evaluation), so
    the text map has to carry those items; evaluation reads every ID vector. The mask is drawn per call, not
    per step: an LLM step reads the table twice (input side, scoring side), so an item can be dropped on one
    side and kept on the other within a step (every committed ID-dropout run trained so). text_warmup: the
    first share of the training steps (`set_progress`, from fit) reads every item by its text alone."""

    def __init__(self, d_id: int, text: TextInputs, fusion: str, id_dropout: float = 0.0, align: str = "none",
                 align_weight: float = 0.0, text_warmup: float = 0.0):  # fmt: skip
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"item_fusion: unknown fusion {fusion!r}; known: {sorted(FUSIONS)}")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"item_id_dropout must be in [0, 1), got {id_dropout}")
        if align not in ALIGNMENTS:
            raise ValueError(f"item_align: unknown alignment {align!r}; known: {sorted(ALIGNMENTS)}")
        self.text = TextView(text, d_id, zero_init=FUSIONS[fusion].text_starts_at_zero)
        self.fusion = FUSIONS[fusion](d_id, text)
        self.id_dropout = id_dropout
        if not 0.0 <= text_warmup < 1.0:
            raise ValueError(f"text_warmup must be in [0, 1), got {text_warmup}")
        self.align = ALIGNMENTS[align](align_weight)  # no parameters: checkpoints are unchanged
        self.text_warmup, self.progress = text_warmup, 1.0  # progress: set by training (fit), else past the warm-up
        _keep_unseen(self, text)

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction

    def id_drop_share(self) -> float:
        """The share of items whose ID vector a training step zeroes: all of them in the text-only warm-up."""
        return 1.0 if self.progress < self.text_warmup else self.id_dropout

    def auxiliary(self, ids: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The alignment's weighted loss terms for these target items (N,) over the frozen table ids
        (n_items + 1, d_id); {} without one."""
        return self.align(ids, self.text(), self.text.has_text, targets)

    def forward(self, ids: Tensor) -> Tensor:
        if hasattr(self, "id_unseen"):  # a cold item's ID vector is untrained noise: its text alone speaks
            ids = ids.masked_fill(self.id_unseen[:, None], 0.0)
        share = self.id_drop_share() if self.training else 0.0
        if share >= 1.0:  # the text-only warm-up
            ids = torch.zeros_like(ids)
        elif share > 0:
            dropped = torch.rand(ids.shape[0], device=ids.device) < share  # (n_items + 1,)
            ids = ids.masked_fill(dropped[:, None], 0.0)
        return self.fusion(ids, self.text())  # (n_items + 1, d_id)


class NoAlignment(nn.Module):
    def forward(self, e: Tensor, t: Tensor, has_text: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {}


class InfoNCEAlignment(nn.Module):
    """Contrastive alignment of the two views (issue 19's lever; LLM-ESR / UniSRec-style): over the step's
    distinct target items that have text, the text view T(t_i) has to pick out the item's own frozen ID vector
    e_i among the others' by dot product (the score the model ranks by), and e_i its own T(t_i): symmetric
    InfoNCE, times `weight`. e is the frozen table, never the ID-dropped copy, so the text map learns to say
    what the ID vector says — which is what an item read through its text alone (dropped, cold) needs."""

    def __init__(self, weight: float):
        super().__init__()
        if weight <= 0:
            raise ValueError(f"item_align_weight must be > 0 for an alignment, got {weight}")
        self.weight = weight

    def forward(self, e: Tensor, t: Tensor, has_text: Tensor, targets: Tensor) -> dict[str, Tensor]:
        rows = torch.unique(targets)  # (M,) sorted
        rows = rows[(rows > 0) & has_text[rows]]
        if len(rows) < 2:  # InfoNCE over one candidate is log 1 = 0 (and over none, undefined)
            return {"align": t.new_zeros(())}
        logits = t[rows] @ e[rows].T  # (M, M): text i against every ID vector
        labels = torch.arange(len(rows), device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        return {"align": self.weight * loss}


ALIGNMENTS: dict[str, Callable[[float], nn.Module]] = {
    "none": lambda weight: NoAlignment(), "infonce": InfoNCEAlignment}


# name -> (builder(d_id, text, fusion, id_dropout, align, align_weight, text_warmup), needs text)
ITEM_SIDES: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "id": (lambda d_id, text, fusion, id_dropout, align, weight, warmup: IdSide(), False),
    "text": (lambda d_id, text, fusion, id_dropout, align, weight, warmup: TextSide(d_id, text), True),
    "id+text": (lambda d_id, text, fusion, id_dropout, align, weight, warmup:
                IdTextSide(d_id, text, fusion, id_dropout, align, weight, warmup), True),
}


def extend_side(side: nn.Module, rows: Tensor) -> None:
    """Items added to the catalogue after training (rows: their prepared text vectors, (m, d_text)), read
    through their text alone like the unseen items of training: the side's tables grow by m rows. The caller
    grows its ID table by m zero rows. An `id` side has nothing to read a new item by: ValueError."""
    view = getattr(side, "text", None)
    if not isinstance(view, TextView):
        raise ValueError("item side `id` cannot score an item it never saw: only text sides (text, id+text) can "
                         "take items added after training")
    if rows.dim() != 2 or rows.shape[1] != view.text.shape[1]:
        raise ValueError(f"new item text rows must be (m, {view.text.shape[1]}), got {tuple(rows.shape)}")
    n_before = view.text.shape[0]
    view.extend(rows)
    fusion = getattr(side, "fusion", None)
    if hasattr(fusion, "extend"):  # a fusion with per-item state (count) grows too
        fusion.extend(len(rows))
    flags = getattr(side, "id_unseen", None)
    if flags is None:
        flags = torch.zeros(n_before, dtype=torch.bool, device=view.text.device)
    grown = torch.cat([flags, torch.ones(len(rows), dtype=torch.bool, device=flags.device)])
    if hasattr(side, "id_unseen"):
        side.id_unseen = grown
    else:
        side.register_buffer("id_unseen", grown)  # (n_items + 1 + m,)


def unseen_items(side: nn.Module) -> int:
    """How many items the side reads through their text alone (never seen in training); 0 for most runs."""
    flags = getattr(side, "id_unseen", None)
    return int(flags.sum()) if flags is not None else 0


def exclude_unseen(logits: Tensor, side: nn.Module) -> Tensor:
    """Training logits without the items no training sequence holds (text sides): a cold item is not in the
    catalogue while the model trains, so it is no negative either (else the shared text map learns to push
    every cold text down). Evaluation scores every item."""
    flags = getattr(side, "id_unseen", None)
    return logits if flags is None else logits.masked_fill(flags, float("-inf"))  # (N, n_items + 1)


def item_counts(train: list[list[int]], n_items: int) -> Tensor:
    """(n_items + 1,) long: how many training sequences hold each item (row 0, padding, is 0)."""
    counts = torch.zeros(n_items + 1, dtype=torch.long)
    for seq in train:
        if seq:
            counts[torch.as_tensor(sorted(set(seq)))] += 1
    counts[0] = 0
    return counts


def unseen_in(train: list[list[int]], n_items: int) -> Tensor:
    """(n_items + 1,) bool: items that occur in no training sequence (row 0, padding, is False)."""
    unseen = item_counts(train, n_items) == 0
    unseen[0] = False
    return unseen


def side_needs_text(name: str) -> bool:
    if name not in ITEM_SIDES:
        raise ValueError(f"item_side: unknown item side {name!r}; known: {sorted(ITEM_SIDES)}")
    return ITEM_SIDES[name][1]


def build_item_side(name: str, d_id: int, text: TextInputs | None = None, fusion: str = "sum",
                    id_dropout: float = 0.0, align: str = "none", align_weight: float = 0.0,
                    text_warmup: float = 0.0) -> nn.Module:
    if side_needs_text(name) and text is None:
        raise ValueError(f"item_side {name!r} reads the item text table: give it (slmrec item-text, --item-text)")
    if not side_needs_text(name) and text is not None:
        raise ValueError(f"item_side {name!r} reads no text, but a text table was given")
    if id_dropout and name != "id+text":
        raise ValueError(f"item_id_dropout drops the ID view of id+text; item_side {name!r} has none to drop")
    if align != "none" and name != "id+text":
        raise ValueError(f"item_align aligns the two views of id+text; item_side {name!r} has one")
    if text_warmup and name != "id+text":
        raise ValueError(f"text_warmup reads id+text by its text first; item_side {name!r} has one view")
    builder, _ = ITEM_SIDES[name]
    return builder(d_id, text, fusion, id_dropout, align, align_weight, text_warmup)


__all__ = ["ITEM_SIDES", "FUSIONS", "ALIGNMENTS", "TextInputs", "TextView", "prepare_text", "build_item_side", "side_needs_text",
           "unseen_items", "unseen_in", "item_counts", "exclude_unseen", "extend_side"]
