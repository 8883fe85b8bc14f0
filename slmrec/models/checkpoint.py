"""Self-describing checkpoints, written atomically, read back with a clear error when damaged.

A checkpoint is one dict (torch.save, loadable with `weights_only=True`):

    model_class   "package.module.ClassName" of the trained module
    model_config  model.config_dict(): enough to rebuild the untrained model
    model_state   model.trainable_state_dict(): only what was trained (frozen parts are rebuilt)
    train_config  the TrainConfig as a dict
    step, epoch, batch_in_epoch, best_metric, best_epoch, history, data_hash, extra
    world_size    number of training processes (1 without torchrun)
    optimizer, scheduler, rng (torch / cuda / python / numpy), trainer (loop bookkeeping)
      - these are present in last.pt (resume) and omitted from best.pt (selection)
    rng_by_rank   last.pt of a run with world_size > 1: every rank's rng, in rank order

Only rank 0 writes checkpoints; the others receive a resumed last.pt from it (they need no
access to ckpt_dir).

`ckpt_dir/last.pt` resumes a run; `ckpt_dir/best.pt` is the model selected on validation.
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
import pickle
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from slmrec.models.base import Recommender

LAST, BEST = "last.pt", "best.pt"


def model_class_path(model: torch.nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temp file in the same directory, fsync, verify, then os.replace (never a torn file).

    A failed write (a full disk: OSError ENOSPC/EFBIG, a crash) leaves the previous file untouched
    and no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        verify_checkpoint_file(tmp)  # what reached the disk reads back whole
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is truncated, bit-flipped or not a checkpoint at all."""


# zipfile raises these on a damaged archive (a bad header can also claim an unknown compression)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError, zlib.error)


def verify_checkpoint_file(path: str | Path, data: bytes | None = None) -> None:
    """Check every record of a torch.save archive against the CRC-32 the writer stored with it.

    torch.load itself does not: a flipped bit in a tensor loads as a wrong weight. A truncated file
    (no central directory) or a damaged record is a CorruptCheckpointError naming the path.
    data: the file's bytes already in memory (checked instead of the file)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as archive:
            bad = archive.testzip()
    except _ZIP_ERRORS as err:
        raise CorruptCheckpointError(f"{path}: truncated or corrupted checkpoint, not loaded ({err})") from err
    if bad is not None:
        raise CorruptCheckpointError(f"{path}: corrupted checkpoint, not loaded (CRC mismatch in record {bad!r})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", data: bytes | None = None) -> dict[str, Any]:
    """A checkpoint dict, after the file checks out whole (CorruptCheckpointError otherwise).

    data: the file's bytes, read (and hashed) by the caller: deserialised as they are, the file is not
    read again (what was verified is what is loaded)."""
    path = Path(path)
    if data is None and not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    verify_checkpoint_file(path, data)
    try:
        ckpt = torch.load(io.BytesIO(data) if data is not None else path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise CorruptCheckpointError(f"{path}: unreadable checkpoint, not loaded ({err})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a slmrec checkpoint (a {type(ckpt).__name__}, not a dict)")
    for key in ("model_class", "model_config", "model_state"):
        if key not in ckpt:
            raise ValueError(f"{path}: not a slmrec checkpoint (missing {key!r})")
    return ckpt


# the only packages a checkpoint may name a class from: the models, and the distiller (a training run's
# best.pt of the distilled student holds the DistillationModel; its deployed model.pt holds the student)
MODEL_PACKAGES = ("slmrec.models", "slmrec.distill")


def model_class(path: str) -> type[Recommender]:
    """The Recommender class a checkpoint names ("slmrec.models.<module>.<Class>", or slmrec.distill's); anything
    else is refused before an import: a checkpoint must not be able to run the code of an arbitrary module."""
    module_name, _, class_name = str(path).rpartition(".")
    if (not any(module_name.startswith(p + ".") for p in MODEL_PACKAGES)
            or not module_name.replace(".", "").replace("_", "").isalnum()):
        raise CorruptCheckpointError(f"checkpoint names model class {path!r}: only classes of "
                                     f"{' / '.join(p + '.*' for p in MODEL_PACKAGES)} are loaded (refused, nothing imported)")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise CorruptCheckpointError(f"checkpoint names {path!r}, which is not a Recommender class")
    return cls


def build_model(ckpt: dict[str, Any], device: str | None = None) -> Recommender:
    """Rebuild the model a checkpoint describes and load its trained state.

    device: None = where the checkpoint says (LLM models record their resolved device type and
    dtype); a name (e.g. "cpu") overrides the device, never the dtype.
    """
    cls = model_class(ckpt["model_class"])
    if device is not None and "device" in inspect.signature(cls.from_config_dict).parameters:
        model = cls.from_config_dict(ckpt["model_config"], device=device)
    else:
        model = cls.from_config_dict(ckpt["model_config"])
        if device is not None:
            model.to(device)
    model.load_trainable_state_dict(ckpt["model_state"])
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu", device: str | None = None) -> Recommender:
    return build_model(load_checkpoint(path, map_location), device)
