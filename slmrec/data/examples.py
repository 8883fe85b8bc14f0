"""Splits -> fixed-length examples -> batches (the batch format of docs/ARCHITECTURE.md).

    input_ids (B, L)  left-padded with 0, most recent item in the last column
    targets   (B, L)  next item after each input position (0 = none)
    target    (B,)    the last target (= targets[:, -1])
    idx       (B,)    row of the example in its `Examples` (stable: keys the teacher-feature cache)
    history   (B, H)  evaluation only: the user's *whole* history before the target, left-padded
                      with 0 (H = the longest history in the set, often > L): the items the
                      protocol removes from the candidates (slmrec/eval/evaluator.py)

Training: each user's train sequence s gives input = s[:-1], targets = s[1:]; sequences longer
than max_len are cut into consecutive windows of max_len counted from the end, so every
transition is trained exactly once. Users with fewer than 2 train items have no transition:
they give no example.

Evaluation: (history, target) -> input = history[-max_len:], targets = (history + [target])
shifted by one, so `target` is the last column of `targets`; `history` keeps every item before
the target, not only the L the model reads. An empty history is a valid (cold) user: an
all-padding row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(eq=False)
class Examples(Dataset):
    """A set of fixed-length examples, stored as tensors (N rows)."""

    input_ids: Tensor  # (N, L) long
    targets: Tensor  # (N, L) long
    user: Tensor  # (N,) long: the user's row in the split the example came from
    history: Tensor | None = None  # (N, H) long: whole history before the target (evaluation sets only)

    def __post_init__(self):
        n, length = self.input_ids.shape
        if self.targets.shape != (n, length) or self.user.shape != (n,):
            raise ValueError(
                f"Examples: shapes disagree: input_ids {tuple(self.input_ids.shape)}, "
                f"targets {tuple(self.targets.shape)}, user {tuple(self.user.shape)}"
            )
        if self.history is not None and (self.history.dim() != 2 or self.history.shape[0] != n):
            raise ValueError(f"Examples: history must be (N={n}, H), got {tuple(self.history.shape)}")

    @property
    def max_len(self) -> int:
        return self.input_ids.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.batch(torch.tensor([i])).items()}

    def batch(self, rows: Tensor) -> dict[str, Tensor]:
        """The batch of the given example rows (fast path: one gather per tensor).

        Columns that are padding in every row are cut from the left: a batch is only as wide as its
        longest real history (B, L_batch <= L). Models read the most recent column as the last one
        either way (SASRec's positions count from the right; LLMRec runs these slots, or re-pads to its L
        slots with llm.trim_slots off).
        """
        rows = rows.long()
        input_ids, targets = self.input_ids[rows], self.targets[rows]  # (B, L)
        real = ((input_ids != 0) | (targets != 0)).any(0)  # (L,) columns with a real item in some row
        first = int(real.nonzero()[0]) if bool(real.any()) else input_ids.shape[1] - 1
        input_ids, targets = input_ids[:, first:], targets[:, first:]  # (B, L_batch)
        batch = {"input_ids": input_ids, "targets": targets, "target": targets[:, -1], "idx": rows}
        if self.history is not None:
            batch["history"] = self.history[rows]  # (B, H)
        return batch

    def content_hash(self) -> str:
        """sha256 over the example tensors: identifies the training data in checkpoints."""
        h = hashlib.sha256()
        for t in (self.input_ids, self.targets, self.user, *([] if self.history is None else [self.history])):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def _check_items(seq: Sequence[int], where: str) -> None:
    for item in seq:
        if int(item) < 1:
            raise ValueError(f"{where}: item id {item} < 1 (ids are 1..n_items; 0 is padding)")


def _left_pad(rows: list[list[int]], max_len: int) -> Tensor:
    out = torch.zeros(len(rows), max_len, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            out[r, max_len - len(row) :] = torch.tensor(row, dtype=torch.long)
    return out


def make_train_examples(
    train_seqs: Sequence[Sequence[int]], max_len: int, windows_per_user: int | None = None
) -> Examples:
    """Every transition of every user's train sequence, in windows of `max_len` from the end.

    windows_per_user=k keeps only each user's k most recent windows (None = all): the LLM
    models' training budget knob, since a window costs a full LLM forward pass.
    """
    if max_len < 1:
        raise ValueError(f"make_train_examples: max_len must be >= 1, got {max_len}")
    if windows_per_user is not None and windows_per_user < 1:
        raise ValueError(f"make_train_examples: windows_per_user must be >= 1 or None, got {windows_per_user}")
    inputs, targets, users = [], [], []
    for u, seq in enumerate(train_seqs):
        seq = [int(i) for i in seq]
        _check_items(seq, f"train sequence of user row {u}")
        if len(seq) < 2:
            continue  # no transition to train on
        src, dst = seq[:-1], seq[1:]
        end = len(src)
        windows = []
        while end > 0:
            start = max(0, end - max_len)
            windows.append((src[start:end], dst[start:end]))
            end = start
        windows = windows[:windows_per_user]  # most recent first; [:None] keeps all
        for w_src, w_dst in reversed(windows):  # oldest window first
            inputs.append(w_src)
            targets.append(w_dst)
            users.append(u)
    return Examples(
        input_ids=_left_pad(inputs, max_len),
        targets=_left_pad(targets, max_len),
        user=torch.tensor(users, dtype=torch.long),
    )


def make_eval_examples(pairs: Sequence[tuple[Sequence[int], int]], max_len: int) -> Examples:
    """One example per (history, target) pair, in the given order (row i = pair i)."""
    if max_len < 1:
        raise ValueError(f"make_eval_examples: max_len must be >= 1, got {max_len}")
    inputs, targets, histories = [], [], []
    for u, (history, target) in enumerate(pairs):
        history = [int(i) for i in history]
        _check_items(history + [int(target)], f"evaluation pair {u}")
        full = history + [int(target)]
        inputs.append(history[-max_len:])
        targets.append(full[1:][-max_len:] if history else [int(target)])
        histories.append(history)
    return Examples(
        input_ids=_left_pad(inputs, max_len),
        targets=_left_pad(targets, max_len),
        user=torch.arange(len(pairs), dtype=torch.long),
        history=_left_pad(histories, max(1, max((len(h) for h in histories), default=1))),
    )


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled example order of one epoch: a function of (seed, epoch) only (resume relies on it)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def lengths(examples: Examples) -> Tensor:
    """(N,) real history length of each example (left-padded rows: columns from the first real item)."""
    real = examples.input_ids > 0  # (N, L)
    first = torch.where(real.any(1), real.int().argmax(1), torch.full_like(real[:, 0], real.shape[1], dtype=torch.long))
    return real.shape[1] - first


def bucket_order(order: Tensor, lengths: Tensor, batch_size: int, window: int, seed: int, epoch: int) -> Tensor:
    """`order` regrouped into batches of similar history length (train.length_buckets = `window`).

    Within each run of window x batch_size consecutive examples of `order`, examples are sorted by length
    and cut into batches; then all batches are shuffled (a function of (seed, epoch): resume relies on it).
    Trimmed batches (llm.trim_slots) are then as wide as their own examples, not as the longest of a
    random draw. Every example still appears exactly once per epoch.
    """
    if window < 1:
        raise ValueError(f"bucket_order: window must be >= 1, got {window}")
    span = window * batch_size
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]  # shortest first
        batches.extend(chunk.split(batch_size))
    short = [batches.pop()] if len(batches[-1]) < batch_size else []  # a short last batch stays last,
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)  # so iter_batch_rows cuts the same batches
    return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()] + short)


def iter_batch_rows(order: Tensor, batch_size: int, start: int = 0) -> Iterator[Tensor]:
    """The example rows of each batch of `order`, skipping the first `start` batches."""
    if batch_size < 1:
        raise ValueError(f"iter_batch_rows: batch_size must be >= 1, got {batch_size}")
    for b in range(start, num_batches(len(order), batch_size)):
        yield order[b * batch_size : (b + 1) * batch_size]


def iter_batches(examples: Examples, batch_size: int, order: Tensor | None = None, start: int = 0) -> Iterator[dict]:
    """Batches of `examples` in `order` (default: row order), skipping the first `start` batches."""
    order = torch.arange(len(examples)) if order is None else order
    for rows in iter_batch_rows(order, batch_size, start):
        yield examples.batch(rows)


def shard_rows(rows: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s share of one global batch: rows rank::world_size (may be empty for a short batch)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard_rows: rank {rank} is not in [0, {world_size})")
    return rows[rank::world_size]


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def to_device(batch: dict[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
