"""E4SRec-style item-ID recommender over a truncated LLM: the teacher and the student (DESIGN.md §3).

    frozen item table (SASRec's)  ->  item adapter (identity unless llm.item_adapter)
      -> item side (llm.item_side: id | text | id+text, slmrec/models/item_side.py)  ->  table E
    E  ->  trainable Linear(d_id -> hidden)  ->  item vectors
    [instruction tokens | item vectors of the last L items | response tokens]  ->  LLM trunk + LoRA
    -> hidden state at the objective's positions  ->  Linear(hidden -> d_id, no bias) = u
    -> scores u . e_item over the same table E (column 0 = -inf)  ->  cross-entropy over all items

Teacher and student are the same class; they differ in the number of decoder layers kept from
the *pretrained* backbone (`LLMRec.build(cfg, "teacher" | "student", item_table)`).

Sequence layout (T = P + L + R positions):

    [ instruction (P tokens) | pad .. pad, item_1 .. item_n (L slots) | response template (R tokens) ]
      positions 0..P-1         pads are masked out of attention;        positions continue
                               real items get P, P+1, ..

The padding sits *after* the instruction, not before it: the instruction then has the same
positions and the same (causal, prefix-only) context for every user, so its keys/values are
constants. `merge_for_inference()` computes them once and scoring runs only the L + R suffix
positions, exactly (up to float rounding) what the full forward computes. Position ids count
unmasked tokens only, so padding does not shift the items' positions.

States returned by `encode` cover the suffix (item slots + response) only:
`final` is the trunk's output after its final RMSNorm; `layers[i]` is the un-normed residual
stream after decoder layer i + 1 (the kind of state the distillation compares; the
transformers `hidden_states[-1]` would be the normed one, which we never use for that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn

from slmrec.config import LLMRecConfig, from_dict, to_dict
from slmrec.models.backbones import DTYPE_NAMES, Backbone, load_backbone
from slmrec.models.base import LossOutput, Recommender, mask_padding_column
from slmrec.models.item_adapters import build_item_adapter
from slmrec.models.item_side import TextInputs, build_item_side, exclude_unseen, extend_side, side_needs_text, unseen_items

# ---------------------------------------------------------------- objectives


class LastPosition:
    """`last` (the paper): the state at the final response-template position predicts `target`."""

    name = "last"

    def gather(self, x: Tensor, n_slots: int) -> Tensor:
        return x[:, -1:]  # (B, S_b+R, ...) -> (B, 1, ...)

    def labels(self, input_ids: Tensor, targets: Tensor, target: Tensor) -> Tensor:
        return target[:, None]  # (B, 1); 0 = no target

    def user_column(self, n_slots: int) -> int:
        return -1

    def n_positions(self, n_slots: int) -> int:
        return 1


class EveryItem:
    """`all`: the state after item i predicts item i+1 at every real item slot (causal: leak-free)."""

    name = "all"

    def gather(self, x: Tensor, n_slots: int) -> Tensor:
        return x[:, :n_slots]  # (B, S_b+R, ...) -> (B, S_b, ...)

    def labels(self, input_ids: Tensor, targets: Tensor, target: Tensor) -> Tensor:
        return torch.where(input_ids > 0, targets, torch.zeros_like(targets))  # (B, S_b); padding never trains

    def user_column(self, n_slots: int) -> int:
        return n_slots - 1  # the user's most recent item (inputs are right-aligned in the item slots)

    def n_positions(self, n_slots: int) -> int:
        return n_slots


OBJECTIVES = {o.name: o for o in (LastPosition(), EveryItem())}


# ---------------------------------------------------------------- attention plumbing


@contextlib.contextmanager
def _quiet_peft():
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`: silence just that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attention_bias(keep: Tensor, n_queries: int, dtype: torch.dtype) -> Tensor:
    """Additive mask (B, 1, Q, K): query q (the last Q of the K keys) sees key k iff keep[k] and k <= q."""
    n_keys = keep.shape[1]
    q = torch.arange(n_keys - n_queries, n_keys, device=keep.device)  # (Q,) key index of each query
    k = torch.arange(n_keys, device=keep.device)  # (K,)
    allowed = (k[None, :] <= q[:, None])[None] & keep[:, None, :]  # (B, Q, K)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=keep.device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias[:, None]  # (B, 1, Q, K)


class _RecordKV:
    """Cache stand-in that records each layer's keys/values (used once, on the constant prefix)."""

    def __init__(self):
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.kv[layer_idx] = (key, value)  # (1, kv_heads, P, head_dim)
        return key, value


class _PrefixKV:
    """Cache stand-in that serves the cached prefix keys/values ahead of the new tokens' (read-only)."""

    def __init__(self, kv: list[tuple[Tensor, Tensor]]):
        self.kv = kv

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        pk, pv = self.kv[layer_idx]  # (1, kv_heads, P, head_dim)
        b = key.shape[0]
        return torch.cat([pk.expand(b, -1, -1, -1), key], 2), torch.cat([pv.expand(b, -1, -1, -1), value], 2)


@dataclass
class Encoded:
    """Trunk outputs over the suffix positions (S_b item slots + R response tokens; S_b = L unless trimmed)."""

    final: Tensor  # (B, S_b+R, H) after the final norm
    layers: tuple[Tensor, ...]  # n_layers x (B, S_b+R, H) un-normed residual stream after each layer; () unless asked
    input_ids: Tensor  # (B, S_b) aligned to the item slots this batch ran
    targets: Tensor  # (B, S_b)
    target: Tensor  # (B,)

    @property
    def n_slots(self) -> int:
        """S_b: item slots of this batch (cfg.max_len, or fewer with trim_slots)."""
        return self.input_ids.shape[1]


# ---------------------------------------------------------------- the model


class LLMRec(Recommender):
    """Teacher or student: a frozen LLM trunk (first `n_layers` layers) with LoRA, input map and score head."""

    def __init__(
        self,
        cfg: LLMRecConfig,
        n_layers: int,
        item_table: Tensor,
        backbone: Backbone | None = None,
        text: TextInputs | None = None,
    ):
        super().__init__()
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"llm.objective: unknown objective {cfg.objective!r}; known: {sorted(OBJECTIVES)}")
        if item_table.dim() != 2 or item_table.shape[0] < 2:
            raise ValueError(f"item_table must be (n_items + 1, d_id) with n_items >= 1, got {tuple(item_table.shape)}")
        if cfg.max_len < 1:
            raise ValueError(f"llm.max_len must be >= 1, got {cfg.max_len}")
        backbone = backbone if backbone is not None else load_backbone(cfg, n_layers)
        if backbone.n_layers != n_layers:
            raise ValueError(f"backbone has {backbone.n_layers} layers, LLMRec asked for {n_layers}")
        # stored resolved (device type, dtype name), never "auto": a checkpoint is scored the way it was trained
        cfg = dataclasses.replace(cfg, device=backbone.device.type, dtype=DTYPE_NAMES[backbone.dtype])
        self.cfg, self.n_layers, self.objective = cfg, n_layers, OBJECTIVES[cfg.objective]
        self.n_items, self.d_id = item_table.shape[0] - 1, item_table.shape[1]
        self.hidden, self.backbone_source = backbone.hidden, backbone.source
        self.backbone_files = backbone.files  # weight files (lineage parents of the model directory)

        prefix, response = backbone.encode(cfg.instruction, special=True), backbone.encode(cfg.response)
        if not prefix or not response:
            raise ValueError("llm.instruction and llm.response must both encode to at least one token")
        self.register_buffer("prefix_ids", torch.tensor(prefix, dtype=torch.long), persistent=False)  # (P,)
        self.register_buffer("response_ids", torch.tensor(response, dtype=torch.long), persistent=False)  # (R,)
        # frozen, but a persistent buffer: saved with the trainable state, so a checkpoint is self-contained
        self.register_buffer("item_table", item_table.detach().float().clone())  # (n_items + 1, d_id)

        self.input_map = nn.Linear(self.d_id, self.hidden)  # item vector -> LLM input space
        self.score_head = nn.Linear(self.hidden, self.d_id, bias=False)  # LLM state -> u
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            bias="none",
        )
        with _quiet_peft():
            self.trunk: nn.Module = get_peft_model(backbone.model, lora)  # only the LoRA weights train
        # built last: `none` draws no random numbers, so the other parts initialise as without adapters
        self.item_adapter = build_item_adapter(cfg.item_adapter, item_table.shape[0], self.d_id, cfg.item_adapter_hidden)
        if text is not None and text.table.shape[0] != item_table.shape[0]:
            raise ValueError(f"text table has {text.table.shape[0]} rows, the item table {item_table.shape[0]}")
        self.item_side = build_item_side(cfg.item_side, self.d_id, text, cfg.item_fusion, cfg.item_id_dropout,
                                         cfg.item_align, cfg.item_align_weight, cfg.text_warmup)  # `id`: no parameters
        self.d_text = text.table.shape[1] if text is not None else None
        self._prefix_kv: list[tuple[Tensor, Tensor]] | None = None  # set by merge_for_inference
        self.to(backbone.device)

    @classmethod
    def build(cls, cfg: LLMRecConfig, role: str, item_table: Tensor, text: TextInputs | None = None) -> "LLMRec":
        """`teacher` (cfg.teacher_layers) or `student` (cfg.student_layers), both from the pretrained backbone;
        `text`: the prepared item text table, for an item side that reads it."""
        layers = {"teacher": cfg.teacher_layers, "student": cfg.student_layers}
        if role not in layers:
            raise ValueError(f"role must be one of {sorted(layers)}, got {role!r}")
        return cls(cfg, layers[role], item_table, text=text)

    # -- parts

    @property
    def base(self) -> nn.Module:
        """The underlying transformers trunk (with LoRA layers injected, or merged)."""
        return self.trunk.get_base_model() if isinstance(self.trunk, PeftModel) else self.trunk

    @property
    def merged(self) -> bool:
        return self._prefix_kv is not None

    @property
    def n_slots(self) -> int:
        return self.cfg.max_len

    def slots_for(self, input_ids: Tensor) -> int:
        """Item slots a batch runs: cfg.max_len, or (trim_slots) just the batch's longest history, at most max_len.

        Exact either way: pads are masked out of attention and do not count in the positions. At least 1 slot,
        which a batch of cold users (no history) still needs for the `all` objective's user column."""
        if not self.cfg.trim_slots:
            return self.n_slots
        cols = (input_ids > 0).any(0).nonzero()  # columns holding a real item in some row
        longest = input_ids.shape[1] - int(cols[0]) if len(cols) else 0
        return max(1, min(self.n_slots, longest))

    @staticmethod
    def _align(x: Tensor, width: int) -> Tensor:
        """(B, L_batch) left-padded -> (B, width): keep the most recent, pad on the left."""
        length = x.shape[1]
        if length >= width:
            return x[:, length - width :]
        return F.pad(x, (width - length, 0))

    def _run(self, x: Tensor, positions: Tensor, bias: Tensor, cache, collect: bool) -> tuple[Tensor, tuple]:
        """Decoder layers + final norm. x (B, Q, H), positions (B, Q), bias (B, 1, Q, K)."""
        base = self.base
        rope = base.rotary_emb(x, positions)  # (cos, sin), each (B, Q, head_dim)
        states = []
        for layer in base.layers:
            x = layer(x, attention_mask=bias, position_embeddings=rope, position_ids=positions, cache=cache)
            if collect:
                states.append(x)  # (B, Q, H) residual stream after this layer
        return base.norm(x), tuple(states)

    def _prefix_keys_values(self) -> list[tuple[Tensor, Tensor]]:
        """Every layer's keys/values of the instruction prefix, (1, kv_heads, P, head_dim) each.

        The prefix has the same tokens, positions and (causal, prefix-only) context for every user, so one
        pass serves a whole batch (prefix_once, with gradients to LoRA) or, merged, every batch."""
        n_prefix = self.prefix_ids.shape[0]
        x = self.base.embed_tokens(self.prefix_ids)[None]  # (1, P, H)
        keep = torch.ones(1, n_prefix, dtype=torch.bool, device=x.device)
        positions = torch.arange(n_prefix, device=x.device)[None]  # (1, P)
        record = _RecordKV()
        self._run(x, positions, attention_bias(keep, n_prefix, x.dtype), record, collect=False)
        return [record.kv[i] for i in range(len(self.base.layers))]

    def encode(self, batch: dict[str, Tensor], output_hidden_states: bool = False) -> Encoded:
        width = self.slots_for(batch["input_ids"])  # S_b <= L item slots this batch runs
        ids, targets = self._align(batch["input_ids"], width), self._align(batch["targets"], width)  # (B, S_b)
        if int(ids.max()) > self.n_items or int(ids.min()) < 0:
            raise ValueError(f"input_ids outside 0..{self.n_items}: [{int(ids.min())}, {int(ids.max())}]")
        b, dtype = ids.shape[0], self.base.embed_tokens.weight.dtype
        items = self.input_map(self.items()[ids]).to(dtype)  # (B, S_b, H)
        response = self.base.embed_tokens(self.response_ids).expand(b, -1, -1)  # (B, R, H)
        suffix = torch.cat([items, response], dim=1)  # (B, S_b+R, H)
        keep_suffix = torch.cat([ids > 0, torch.ones_like(response[..., 0], dtype=torch.bool)], dim=1)  # (B, S_b+R)
        n_prefix = self.prefix_ids.shape[0]
        keep = torch.cat([keep_suffix.new_ones(b, n_prefix), keep_suffix], dim=1)  # (B, P+S_b+R) keys
        positions = keep.long().cumsum(1) - 1  # (B, P+S_b+R): real tokens contiguous; pads masked anyway
        if self._prefix_kv is None and not self.cfg.prefix_once:  # prefix + suffix, the prefix once per user
            prefix = self.base.embed_tokens(self.prefix_ids).expand(b, -1, -1)  # (B, P, H)
            x = torch.cat([prefix, suffix], dim=1)  # (B, P+S_b+R, H)
            final, layers = self._run(x, positions, attention_bias(keep, x.shape[1], dtype), None, output_hidden_states)
            final, layers = final[:, n_prefix:], tuple(s[:, n_prefix:] for s in layers)
        else:  # the prefix's keys/values: cached (merged) or computed once for this batch
            prefix_kv = self._prefix_kv if self._prefix_kv is not None else self._prefix_keys_values()
            bias = attention_bias(keep, suffix.shape[1], dtype)  # (B, 1, S_b+R, P+S_b+R)
            final, layers = self._run(suffix, positions[:, n_prefix:], bias, _PrefixKV(prefix_kv), output_hidden_states)
        return Encoded(final, layers, ids, targets, targets[:, -1])

    def items(self) -> Tensor:
        """The item vectors the model reads and scores against: the item side over the adapted frozen table,
        (n_items + 1, d_id)."""
        return self.item_side(self.item_adapter(self.item_table))

    def add_items(self, rows: Tensor) -> None:
        """Items added to the catalogue after training, read through their text alone (rows: their prepared
        text vectors, (m, d_text)); the frozen ID table (and a per-item adapter) grow by m zero rows, which the
        text side never reads for them."""
        extend_side(self.item_side, rows)  # first: an `id` side refuses before anything changes
        zeros = self.item_table.new_zeros(len(rows), self.d_id)  # (m, d_id)
        self.item_table = torch.cat([self.item_table, zeros])  # (n_items + 1 + m, d_id)
        self.item_adapter.extend(len(rows))
        self.n_items += len(rows)

    def set_progress(self, fraction: float) -> None:
        self.item_side.set_progress(fraction)

    def item_terms(self, targets: Tensor) -> dict[str, Tensor]:
        """The item side's auxiliary loss terms (weighted) for the step's target items (N,): {} for most sides,
        {"align": ...} for an id+text side with `llm.item_align`."""
        return self.item_side.auxiliary(self.item_adapter(self.item_table), targets)

    def scores(self, u: Tensor) -> Tensor:
        """u (N, d_id) -> (N, n_items + 1) dot products with every item; column 0 = -inf."""
        return mask_padding_column(u @ self.items().T)

    def user_vectors(self, states: Tensor) -> Tensor:
        """Trunk states (..., H) -> u (..., d_id), in float32."""
        return self.score_head(states.float())

    def rows(self, enc: Encoded, x: Tensor) -> tuple[Tensor, Tensor]:
        """The objective's training rows: states (B, S_b+R, ...) -> (N, ...) and their labels (N,)."""
        labels = self.objective.labels(enc.input_ids, enc.targets, enc.target)  # (B, S)
        mask = labels > 0
        if not bool(mask.any()):
            raise ValueError(f"batch has no targets for objective {self.objective.name!r}")
        return self.objective.gather(x, enc.n_slots)[mask], labels[mask]

    # -- Recommender API

    def forward(self, batch: dict[str, Tensor], output_hidden_states: bool = False):
        """u (B, d_id) at the inference position; with output_hidden_states also the per-layer states."""
        enc = self.encode(batch, output_hidden_states)
        u = self.user_vectors(enc.final[:, self.objective.user_column(enc.n_slots)])  # (B, d_id)
        return (u, enc.layers) if output_hidden_states else u

    def calculate_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        if self.merged:
            raise RuntimeError("LLMRec was merged for inference; rebuild it from its checkpoint to train")
        enc = self.encode(batch)
        states, labels = self.rows(enc, enc.final)  # (N, H), (N,)
        logits = exclude_unseen(self.scores(self.user_vectors(states)), self.item_side)  # (N, n_items + 1)
        ce = F.cross_entropy(logits, labels)
        aux = self.item_terms(labels)
        loss = ce + sum(aux.values()) if aux else ce
        return LossOutput(loss, {"ce": float(ce.detach()), **{k: float(v.detach()) for k, v in aux.items()}})

    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.scores(self.forward(batch))  # (B, n_items + 1)

    def predict(self, batch: dict[str, Tensor], items: Tensor) -> Tensor:
        u = self.forward(batch)  # (B, d_id)
        return (self.items()[items] * u[:, None]).sum(-1)  # (B, K)

    # -- inference

    @torch.no_grad()
    def merge_for_inference(self) -> "LLMRec":
        """Fold LoRA into the base weights and cache the instruction prefix's keys/values (in place).

        Call after moving the model to its device. The model can no longer train afterwards.
        """
        if self.merged:
            return self
        self.eval()
        if isinstance(self.trunk, PeftModel):
            with _quiet_peft():
                self.trunk = self.trunk.merge_and_unload()
        return self.cache_prefix()

    @torch.no_grad()
    def cache_prefix(self) -> "LLMRec":
        """(Re)compute the cached instruction-prefix keys/values with the trunk's current weights (in place)."""
        self._prefix_kv = self._prefix_keys_values()
        return self

    # -- bookkeeping

    def parameter_counts(self) -> dict[str, int]:
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "item_table": self.item_table.numel(),  # frozen buffer, not a parameter
        }

    def config_dict(self) -> dict:
        return {
            "llm": to_dict(self.cfg),
            "n_layers": self.n_layers,
            "n_items": self.n_items,
            "d_id": self.d_id,
            "backbone_source": self.backbone_source,
            **({"d_text": self.d_text} if self.d_text is not None else {}),  # the text table's width (text sides)
            **({"unseen_items": n} if (n := unseen_items(self.item_side)) else {}),  # cold items: text only
        }

    @classmethod
    def from_config_dict(cls, config: dict, device: str | None = None) -> "LLMRec":
        """Rebuild the untrained model on the recorded device and dtype (or `device`, an explicit override);
        the item table arrives with `load_trainable_state_dict`. Refuses another backbone than the recorded one."""
        cfg = from_dict(LLMRecConfig, config["llm"])
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        rows = config["n_items"] + 1
        text = (TextInputs.empty(rows, config["d_text"], unseen="unseen_items" in config)
                if side_needs_text(cfg.item_side) else None)  # fmt: skip
        model = cls(cfg, config["n_layers"], torch.zeros(rows, config["d_id"]), text=text)
        recorded = config.get("backbone_source")
        if recorded != model.backbone_source:
            raise ValueError(
                f"checkpoint was trained on backbone {recorded}, but this machine's {cfg.profile!r} backbone is "
                f"{model.backbone_source}: different weights; retrain or restore the original backbone files"
            )
        return model


__all__ = ["LLMRec", "Encoded", "OBJECTIVES", "attention_bias"]
