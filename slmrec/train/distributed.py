"""Data-parallel training under `torchrun`: process-group setup and the few collectives fit() uses.

    torchrun --nproc_per_node N -m slmrec.cli train {sasrec,teacher,student} --params params.yaml ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_from_env()`
joins the process group (nccl when CUDA is available, gloo on CPU) and `fit()` notices it:
every rank takes rows rank::world_size of each global batch, gradients are summed with one
all-reduce per optimizer step, and rank 0 alone validates, logs and writes checkpoints
(see slmrec/train/loop.py). Without those variables everything runs in one process, as before.

Why a gradient all-reduce and not a `DistributedDataParallel` wrapper: DDP syncs inside
`forward()` hooks, but fit() calls `calculate_loss()`; it also needs `no_sync()` around
gradient accumulation, `find_unused_parameters` for a frozen teacher, and every rank to run
a forward on every micro-batch (the epoch's last batch can leave a rank with no rows). One
`all_reduce(SUM)` of the trainable gradients per optimizer step has none of these catches and
is numerically the same averaging; what it gives up is DDP's overlap of communication with
the backward pass, which is negligible for LoRA-sized gradients.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# rank 0 validates while the others wait in a collective: the timeout must cover a full validation
DEFAULT_TIMEOUT_MINUTES = float(os.environ.get("SLMREC_DIST_TIMEOUT_MINUTES", "60"))


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when gradients must be exchanged (a process group with more than one rank)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_from_env(backend: str | None = None, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Join the process group torchrun describes in the environment; one process when it describes none.

    backend: default nccl when CUDA is available, else gloo. On CUDA each rank uses GPU LOCAL_RANK.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    present = [name for name in TORCHRUN_ENV if name in os.environ]
    if not present:
        return DistInfo(device=_default_device(0))
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(f"init_from_env: torchrun variables {present} are set but {missing} are not")
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not 0 <= rank < world_size:
        raise ValueError(f"init_from_env: RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("init_from_env: backend nccl needs CUDA; use gloo on CPU")
    device = _default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=timeout_minutes), **kwargs
    )
    return DistInfo(rank, world_size, local_rank, device)


def current() -> DistInfo:
    """This process's place in the process group (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=_default_device(0))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, _default_device(local_rank))


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of each rank's RNG streams (dropout, sampled negatives); rank 0 keeps `seed`."""
    return seed + 7919 * rank


# ---- collectives used by fit(); all are identities in one process ----


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (pickled; for small things: decisions, checkpoints of LoRA size)."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    info = current()
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def sync_module(module: nn.Module) -> None:
    """Check that every rank holds the same architecture, then copy rank 0's parameters and buffers
    to all ranks (what DDP does when it wraps a module): training starts from identical weights."""
    info = current()
    if not info.distributed:
        return
    device = next(module.parameters()).device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise ValueError(f"sync_module: backend nccl needs the model on a GPU, it is on {device} (use {info.device})")
    signature = [(n, tuple(t.shape), str(t.dtype), t.requires_grad) for n, t in module.named_parameters()]
    signature += [(n, tuple(t.shape), str(t.dtype), False) for n, t in module.named_buffers()]
    signatures = all_gather_object(signature)
    for rank, other in enumerate(signatures):
        if other != signatures[0]:
            diff = [a for a, b in zip(other, signatures[0]) if a != b][:3] or f"{len(other)} vs {len(signatures[0])}"
            raise ValueError(f"sync_module: rank {rank} has a different model than rank 0 (first differences: {diff})")
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in place (one flat buffer per dtype).

    A gradient missing on a rank (the parameter took no part in its loss) counts as zeros; a
    parameter with no gradient on any rank keeps `grad = None`, as in a single process.
    """
    params = list(params)
    if not current().distributed or not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad)
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        dist.all_reduce(flat)  # SUM: fit() already weighted each rank's loss by its share of the batch
        offset = 0
        for p in group:
            summed = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)
            offset += p.numel()
    for p, seen in zip(params, has_grad.tolist()):
        if seen == 0:
            p.grad = None
