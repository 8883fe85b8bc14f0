"""The interface every recommender implements (RecBole style), and what the training loop relies on.

A batch is a dict of tensors (built by `slmrec.data.examples`):

    input_ids (B, L)  item ids, left-padded with 0 (the most recent item is in the last column)
    targets   (B, L)  the next item after each input position; 0 = no target there
    target    (B,)    the target after the last position (= targets[:, -1])
    idx       (B,)    the example's row in its `Examples` set (stable across epochs; keys caches)

`fit()` (slmrec/train/loop.py) only calls `calculate_loss`, `trainable_state_dict`,
`load_trainable_state_dict`, `config_dict` and `parameters()`; the evaluator only calls
`full_sort_predict`. A wrapper (e.g. the distiller: student + frozen teacher) subclasses
`Recommender` too, adds its terms in `calculate_loss`, and delegates the predictions.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class LossOutput:
    """`loss` is what is backpropagated; `terms` are plain floats for logging (e.g. {"ce": 6.9, "cos": 0.3})."""

    loss: Tensor  # scalar
    terms: dict[str, float] = field(default_factory=dict)


def _frozen_modules(module: nn.Module) -> set[str]:
    """Names of submodules that own parameters, none of which requires grad (e.g. a frozen teacher)."""
    frozen = set()
    for name, sub in module.named_modules():
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            frozen.add(name)
    return frozen


def _buffer_is_trainable_state(buffer_name: str, frozen: set[str]) -> bool:
    owner = buffer_name.rsplit(".", 1)[0] if "." in buffer_name else ""
    # a buffer belongs to frozen state if its owner or any ancestor module is frozen
    parts = owner.split(".") if owner else []
    prefixes = {".".join(parts[:i]) for i in range(len(parts) + 1)}
    return not (prefixes & frozen)


def trainable_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Parameters with requires_grad + persistent buffers outside frozen submodules, detached copies.

    Frozen weights (a pretrained backbone, a teacher, a frozen item table) are rebuilt from the
    model's config on load and are not stored.
    """
    frozen = _frozen_modules(module)
    all_params = dict(module.named_parameters(remove_duplicate=False))
    state = {}
    for name, tensor in module.state_dict().items():
        if name in all_params:
            keep = all_params[name].requires_grad
        else:  # a persistent buffer
            keep = _buffer_is_trainable_state(name, frozen)
        if keep:
            state[name] = tensor.detach().clone()
    return state


def load_trainable_state_dict(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a `trainable_state_dict`; the key sets must match exactly (a clear error otherwise)."""
    expected = set(trainable_state_dict(module))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{type(module).__name__}: trainable state does not match the model: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # cannot happen after the check above; keep the invariant loud
        raise ValueError(f"unexpected keys when loading: {result.unexpected_keys}")


class Recommender(nn.Module, abc.ABC):
    """Base class of SASRec, the LLM teacher/student and the distiller wrapper.

    Subclasses set `self.n_items` (items are 1..n_items; 0 is padding) and implement the
    abstract methods. Scores are higher-is-better; column 0 of `full_sort_predict` is -inf.
    """

    n_items: int

    @abc.abstractmethod
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """User/sequence states (model-specific shape, e.g. (B, L, H) for SASRec)."""

    @abc.abstractmethod
    def calculate_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        """Training loss of one batch (mean over its targets) and its named terms."""

    @abc.abstractmethod
    def predict(self, batch: dict[str, Tensor], items: Tensor) -> Tensor:
        """Scores of the given items `items (B, K)` for each user -> (B, K)."""

    @abc.abstractmethod
    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores of every item -> (B, n_items + 1), column 0 (padding) = -inf."""

    @abc.abstractmethod
    def config_dict(self) -> dict:
        """JSON-able description that `from_config_dict` rebuilds the (untrained) model from."""

    @classmethod
    @abc.abstractmethod
    def from_config_dict(cls, config: dict) -> "Recommender":
        """Inverse of `config_dict` (frozen parts are rebuilt here, trainable state is loaded after)."""

    def set_progress(self, fraction: float) -> None:
        """How far training is, in [0, 1] (fit calls it before every step, so a resumed run sees the same
        values): for a schedule inside the model (the item side's text-only warm-up). Most models ignore it."""

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return trainable_state_dict(self)

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        load_trainable_state_dict(self, state)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def seeded(seed: int):
    """Build a model from its own seed: the global RNG (CPU and CUDA) is seeded inside the block and
    restored after it, so the initial weights do not depend on whatever ran before in the process
    (a backbone conversion, another model) and the caller's stream is left as it was."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


def mask_padding_column(scores: Tensor) -> Tensor:
    """Set column 0 (padding item) of `scores (B, N+1)` to -inf, in place; returns it."""
    scores[:, 0] = float("-inf")
    return scores


__all__ = [
    "LossOutput",
    "Recommender",
    "trainable_state_dict",
    "load_trainable_state_dict",
    "mask_padding_column",
    "seeded",
]
