"""The one file hash of the project: sha256, streamed in 1 MiB blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The library code that determines a trained model (the models, the loop, the losses, the protocol that
# selects the checkpoint, the batches, the stage that wires them): part of every resume key, and the
# code deps of the DVC model stages (dvc.yaml) name the same paths.
MODEL_CODE = ("models", "train", "distill", "eval", "data/examples.py", "stages/models.py")


def code_version(parts: tuple[str, ...] = MODEL_CODE, root: Path | None = None) -> str:
    """sha256 over the source files (relative names + bytes) of `parts` of this package (or `root`): the
    code version of a training result, the same in and outside git and covering uncommitted edits."""
    root = root or Path(__file__).resolve().parent
    h = hashlib.sha256()
    for part in parts:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(sha256_file(f).encode() + b"\n")
    return h.hexdigest()


_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file_memo(path: str | Path) -> str:
    """sha256_file, remembered for this process while the file's (path, size, mtime) stay the same:
    backbone weights are hashed once per process, not at every model build."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        _MEMO[key] = sha256_file(path)
    return _MEMO[key]
