"""Artifact cards and lineage: trace any artifact back to the raw files, and verify every hash.

Every artifact directory (interaction snapshot, splits, SASRec, teacher, students) holds a
`card.json`:

    {"artifact": "student", "content_hash": "<sha256 of the directory's files, card excluded>",
     "params": {...}, "parents": [{"artifact": "teacher", "path": "models/teacher",
     "content_hash": "..."}], "git_commit": "...", "metrics": {...}, "created_at": "...",
     "versions": {"python": ..., "torch": ...}}

Raw source files are leaves: a parent entry with `"kind": "file"` and its sha256.
`slmrec lineage PATH --verify` recomputes every hash on the way and fails naming the first
artifact or file whose bytes no longer match what its child recorded.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata as _md
from pathlib import Path
from typing import Callable
from typing import Any

from slmrec.hashing import sha256_file

CARD = "card.json"
_VERSIONED = ("torch", "transformers", "peft", "duckdb", "pandas", "pyarrow", "great-expectations", "dvc", "dagster")



def content_hash(path: str | Path, digests: dict[str, str] | None = None) -> str:
    """sha256 of a file, or of a directory's files (relative names + bytes, sorted), card.json excluded.

    digests: sha256 of some files (relative name -> hex) computed by the caller on the bytes it holds in
    memory (the serving loader hashes the checkpoint bytes it deserialises, not the file a second time)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"artifact path {path} does not exist")
    digests = digests or {}
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != CARD):
        name = f.relative_to(path).as_posix()
        h.update(name.encode() + b"\0")
        h.update((digests.get(name) or sha256_file(f)).encode() + b"\n")
    return h.hexdigest()


def git_commit(cwd: str | Path = ".", mark_dirty: bool = True) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        return "unknown"
    if not mark_dirty:
        return out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            continue  # not installed in this environment: simply not recorded
    return versions


def parent_entry(path: str | Path) -> dict[str, Any]:
    """How a child records a parent: an artifact directory (with its card) or a raw file."""
    path = Path(path)
    if path.is_dir():
        card = read_card(path)
        return {"kind": "artifact", "artifact": card["artifact"], "path": str(path), "content_hash": content_hash(path)}
    return {"kind": "file", "path": str(path), "content_hash": sha256_file(path)}


def write_card(
    artifact_dir: str | Path,
    artifact: str,
    params: dict[str, Any] | None = None,
    parents: list[str | Path] = (),
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    reproducible: bool = False,
) -> dict[str, Any]:
    """Write `card.json` atomically into an artifact directory whose other files are final.

    reproducible=True (datasets): no wall-clock time and no git commit, so that the same inputs
    give a byte-identical card and the DVC hash of the directory does not change with every
    commit (the code version of a dataset is pinned by its DVC stage's code deps instead).
    """
    artifact_dir = Path(artifact_dir)
    card = {
        "artifact": artifact,
        "path": str(artifact_dir),
        "content_hash": content_hash(artifact_dir),
        "params": params or {},
        "parents": [parent_entry(p) for p in parents],
        "metrics": metrics or {},
        "versions": library_versions(),
        **(extra or {}),
    }
    if not reproducible:
        card["git_commit"] = git_commit()
        card["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card[CARD_DIGEST] = card_digest(card)
    atomic_write_text(artifact_dir / CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


CARD_DIGEST = "card_sha256"  # the card's own checksum: a corrupted or hand-edited card is refused
CARD_KEYS = {"artifact": str, "content_hash": str, "params": dict, "parents": list, "metrics": dict}


def card_digest(card: dict[str, Any]) -> str:
    """sha256 of the card's canonical JSON without its own digest field."""
    body = {k: v for k, v in card.items() if k != CARD_DIGEST}
    return hashlib.sha256(json.dumps(body, indent=2, sort_keys=True).encode()).hexdigest()


class CorruptCardError(ValueError):
    """A card.json that is truncated, not JSON, malformed, or whose bytes changed after it was written."""


def read_card(artifact_dir: str | Path) -> dict[str, Any]:
    """The card of an artifact directory, checked: valid JSON, the expected fields, its own digest."""
    f = Path(artifact_dir) / CARD
    if not f.exists():
        raise FileNotFoundError(f"{artifact_dir} has no {CARD}: not an artifact of this pipeline")
    try:
        card = json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCardError(f"{f}: corrupted card, not JSON ({err}); rebuild the artifact") from err
    if not isinstance(card, dict):
        raise CorruptCardError(f"{f}: corrupted card, a JSON {type(card).__name__} instead of an object")
    wrong = [k for k, kind in CARD_KEYS.items() if not isinstance(card.get(k), kind)]
    if wrong:
        raise CorruptCardError(f"{f}: corrupted card, field(s) {wrong} missing or of the wrong type")
    if CARD_DIGEST in card and card[CARD_DIGEST] != card_digest(card):  # cards written before the digest: no check
        raise CorruptCardError(f"{f}: corrupted or edited card: its bytes no longer match its {CARD_DIGEST}")
    return card


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder (a folder: so that a rename or a new name in it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """The one way files are written: `write(tmp)` fills a temp file next to `path`, which is fsynced and then
    renamed over `path` (and the folder fsynced): a reader or a power loss sees the old file or the new one,
    never half of one; a failed `write` leaves `path` untouched and no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fsync_path(tmp)  # the bytes, then the name
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_path(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


@dataclass
class LineageNode:
    kind: str  # artifact | file
    path: str
    name: str
    recorded_hash: str | None  # what the child recorded (None for the starting artifact)
    actual_hash: str | None = None  # recomputed when verifying
    card: dict[str, Any] = field(default_factory=dict)
    parents: list["LineageNode"] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.actual_hash is None or self.recorded_hash is None or self.actual_hash == self.recorded_hash

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "name": self.name, "path": self.path, "recorded_hash": self.recorded_hash}
        if self.actual_hash is not None:
            d["actual_hash"], d["ok"] = self.actual_hash, self.ok
        if self.card:
            d.update(git_commit=self.card.get("git_commit"), created_at=self.card.get("created_at"),
                     metrics=self.card.get("metrics", {}))
        d["parents"] = [p.to_dict() for p in self.parents]
        return d


def trace(path: str | Path, verify: bool = False, root: str | Path = ".", _recorded: str | None = None) -> LineageNode:
    """Walk an artifact's card back to the raw files. Relative parent paths resolve against `root`."""
    path = Path(path)
    resolved = path if path.is_absolute() else Path(root) / path
    if resolved.is_dir():
        card = read_card(resolved)
        node = LineageNode("artifact", str(path), card["artifact"], _recorded, card=card)
        if verify:
            node.actual_hash = content_hash(resolved)
            if _recorded is None:  # the starting artifact: its own card is the claim to check
                node.recorded_hash = card["content_hash"]
            elif card["content_hash"] != node.actual_hash:  # the card itself lies about its directory
                node.recorded_hash = card["content_hash"]
        for parent in card.get("parents", []):
            node.parents.append(trace(parent["path"], verify, root, parent["content_hash"]))
        return node
    if not resolved.exists():
        raise FileNotFoundError(f"lineage: {resolved} is gone (recorded hash {_recorded})")
    node = LineageNode("file", str(path), path.name, _recorded)
    if verify:
        node.actual_hash = sha256_file(resolved)
    return node


def mismatches(node: LineageNode) -> list[LineageNode]:
    bad = [] if node.ok else [node]
    for p in node.parents:
        bad += mismatches(p)
    return bad


def render(node: LineageNode, indent: int = 0) -> str:
    mark = "" if node.actual_hash is None else ("  ✓" if node.ok else "  ✗ HASH MISMATCH")
    h = (node.actual_hash or node.recorded_hash or node.card.get("content_hash", ""))[:12]
    line = f"{'  ' * indent}{'└─ ' if indent else ''}{node.name} [{node.kind}] {node.path}  sha256:{h}{mark}"
    if node.card.get("git_commit"):
        line += f"  commit:{node.card['git_commit'][:10]}"
    return "\n".join([line] + [render(p, indent + 1) for p in node.parents])


def _cmd_lineage(args: argparse.Namespace) -> int:
    try:
        node = trace(args.path, verify=args.verify, root=args.root)
    except FileNotFoundError as err:
        print(f"lineage: {err}", file=sys.stderr)
        return 2
    except CorruptCardError as err:  # a card that fails its own check is a failed verification
        print(f"lineage: CORRUPTED CARD: {err}", file=sys.stderr)
        return 1
    bad = mismatches(node)
    if args.json:
        print(json.dumps({"lineage": node.to_dict(), "verified": args.verify, "mismatches": [b.path for b in bad]}))
    else:
        print(render(node))
    if bad:
        for b in bad:
            print(f"lineage: HASH MISMATCH at {b.path} ({b.kind} {b.name}): recorded {b.recorded_hash}, "
                  f"found {b.actual_hash}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("lineage", help="walk an artifact back to the raw files (and verify every hash)")
    p.add_argument("path", help="artifact directory, e.g. models/student")
    p.add_argument("--verify", action="store_true", help="recompute every hash; non-zero exit on any mismatch")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", default=".", help="directory relative parent paths resolve against")
    p.set_defaults(func=_cmd_lineage)
