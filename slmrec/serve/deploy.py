"""Immutable deployments, the promotion record, its history and rollback.

    dep = deploy("models/student", models_root="models")      # -> models/deployed/<hash[:16]>/ (read-only)
    promote(record_path, dep, model="student", who="dagster run 1a2b", why="gate passed", evidence={...})
    rollback(record_path, who="alice@host", why="bad answers")  # the deployment that served before

A deployment is a content-addressed copy of everything serving needs, made once and never written again:

    models/deployed/<content hash[:16]>/
        model/            the model directory (model.pt, card.json, train.json, ...), bytes as trained
        splits/           the splits it was trained on (item map, user map): its item ids' meaning
        item_text/        a model whose item side reads text: the item text table it was trained with
                          (new catalogue items are encoded like its items: slmrec/serve/new_items.py)
        deployment.json   content hashes of both, where they were copied from, when

Files are read-only (0444, folders 0555); the copy is written under a temp name and renamed, so a
deployment exists whole or not at all, and deploying the same model again is a no-op (its hash is
checked). A retrain that rewrites models/student or data/splits in place changes nothing deployed.

models/promoted.json names the deployment (`path` = its model/ folder, `deployment`, `content_hash`);
`slmrec serve`, `slmrec recommend` and the monitoring load only a deployment whose bytes hash to the
record (slmrec/serve/sources.py computes it on the bytes it loads). Every promotion and rollback is
appended to models/promotions.jsonl (fsynced): when, who, what, why, the previous deployment, evidence.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from slmrec.lineage import atomic_write_text, content_hash, fsync_path, read_card
from slmrec.serve.sources import DEPLOYMENT_FILE, read_promoted

DEPLOYED = "deployed"
HISTORY_FILE = "promotions.jsonl"


@dataclass(frozen=True)
class Deployment:
    dir: Path  # models/deployed/<hash[:16]>
    content_hash: str  # of the model directory (the card's)

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def splits_dir(self) -> Path:
        return self.dir / "splits"


def operator() -> str:
    """who acts: user@host (a person at a terminal, or the account a scheduler runs as)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


COPIED = ("splits", "item_text")  # parents a deployment carries: the item map; the text table of a text model


def _copied_parents(model_dir: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """part -> (directory, content hash) of the parents serving needs: the splits (always) and the item text
    table (a model whose item side reads text: new catalogue items are encoded like its items)."""
    card, found = read_card(model_dir), {}
    for parent in card.get("parents", []):
        if parent.get("kind") == "artifact" and parent.get("artifact") in COPIED:
            path = Path(parent["path"])
            found[parent["artifact"]] = (path if path.is_absolute() else root / path), parent["content_hash"]
    if "splits" not in found:
        raise ValueError(f"{model_dir}/card.json names no splits parent: cannot deploy without the item map")
    return found


def _read_only(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fsync_path(path)


def verify(dep: Deployment) -> None:
    """The deployment's bytes are still those recorded (ValueError naming what changed)."""
    manifest = json.loads((dep.dir / DEPLOYMENT_FILE).read_text())
    found = {part: content_hash(dep.dir / part) for part in ("model", *COPIED) if f"{part}_hash" in manifest}
    for part, actual in found.items():
        if manifest[f"{part}_hash"] != actual:
            raise ValueError(f"deployment {dep.dir}: {part}/ hashes to {actual[:12]}…, deployed as "
                             f"{manifest[f'{part}_hash'][:12]}… (modified after deployment)")


def deploy(model_dir: str | Path, models_root: str | Path = "models", root: str | Path = ".") -> Deployment:
    """Copy a trained model and its splits into models/deployed/<hash[:16]>/ (read-only); idempotent."""
    model_dir, root = Path(model_dir), Path(root)
    models_root = Path(models_root) if Path(models_root).is_absolute() else root / models_root
    card = read_card(model_dir)
    model_hash = content_hash(model_dir)
    if card["content_hash"] != model_hash:
        raise ValueError(f"{model_dir}: card.json records {card['content_hash'][:12]}…, the files hash to "
                         f"{model_hash[:12]}… (modified after training): not deployed")
    parents = _copied_parents(model_dir, root)
    for part, (folder, recorded) in parents.items():
        if content_hash(folder) != recorded:
            raise ValueError(f"{folder} is not the {part} {model_dir} was trained on (content hash differs): "
                             "not deployed")
    dep = Deployment(models_root / DEPLOYED / model_hash[:16], model_hash)
    if dep.dir.exists():
        verify(dep)  # deployed before: the same bytes, or a loud error
        return dep
    tmp = dep.dir.with_name(f".{dep.dir.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        shutil.copytree(model_dir, tmp / "model")
        for part, (folder, _) in parents.items():
            shutil.copytree(folder, tmp / part)
        manifest = {"model_hash": model_hash, **{f"{part}_hash": h for part, (_, h) in parents.items()},
                    "artifact": card.get("artifact"),
                    "source": {"model": str(model_dir), **{part: str(folder) for part, (folder, _) in parents.items()}},
                    "deployed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / DEPLOYMENT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        copied = {"model": model_hash, **{part: h for part, (_, h) in parents.items()}}
        if any(content_hash(tmp / part) != h for part, h in copied.items()):
            raise ValueError(f"{model_dir} changed while it was being deployed: not deployed")
        _read_only(tmp)
        _fsync_tree(tmp)
        os.rename(tmp, dep.dir)
    except BaseException:
        if tmp.exists():
            for path in [tmp, *tmp.rglob("*")]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
            shutil.rmtree(tmp)
        raise
    return dep


def history(record: str | Path) -> list[dict]:
    """Every promotion and rollback so far, oldest first (models/promotions.jsonl beside the record)."""
    path = Path(record).with_name(HISTORY_FILE)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_history(record: Path, entry: dict) -> None:
    path = record.with_name(HISTORY_FILE)
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def promote(record: str | Path, dep: Deployment, model: str, who: str, why: str, evidence: dict | None = None,
            extra: dict | None = None, action: str = "promote", root: str | Path = ".") -> dict:
    """Point models/promoted.json at a deployment (atomically) and append the act to the history."""
    record, root = Path(record), Path(root)
    verify(dep)
    previous = None
    if record.is_file():
        try:
            previous = json.loads(record.read_text()).get("content_hash")
        except (ValueError, AttributeError):
            previous = None  # an unreadable record is replaced; the history keeps what it said before
    rel = lambda p: str(p.relative_to(root)) if p.is_relative_to(root) else str(p)  # noqa: E731
    data = {**(extra or {}), "model": model, "path": rel(dep.model_dir), "deployment": rel(dep.dir),
            "content_hash": dep.content_hash, "promoted_by": who, "reason": why,
            "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(record, json.dumps(data, indent=2) + "\n")
    _append_history(record, {"at": data["promoted_at"], "action": action, "who": who, "why": why, "model": model,
                             "content_hash": dep.content_hash, "deployment": data["deployment"],
                             "previous": previous, "evidence": evidence or {}})
    return data


def refuse(record: str | Path, model: str, content_hash: str, who: str, why: str, evidence: dict) -> None:
    """Record a refused candidate in the history (the record itself does not change)."""
    record = Path(record)
    current = json.loads(record.read_text()).get("content_hash") if record.is_file() else None
    _append_history(record, {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "action": "refuse", "who": who, "why": why, "model": model, "content_hash": content_hash,
                             "deployment": None, "previous": current, "evidence": evidence})


def rollback(record: str | Path, who: str, why: str, to: str | None = None, root: str | Path = ".",
             models_dir: str | Path | None = None) -> dict:
    """Re-promote the deployment that served before the current one (or the one whose hash starts with `to`).

    "Before" is the `previous` of the history entry that made the current deployment current, so a second
    rollback undoes the first. The target's bytes are verified before the record changes."""
    record = Path(record)
    _, current = read_promoted(record, root, models_dir)
    entries = history(record)
    if to is None:
        made_current = next((e for e in reversed(entries)
                             if e["content_hash"] == current["content_hash"] and e["action"] != "refuse"), None)
        target = made_current and made_current.get("previous")
        if not target:
            raise ValueError(f"{record.with_name(HISTORY_FILE)}: no deployment served before "
                             f"{current['content_hash'][:12]}…: nothing to roll back to")
    else:
        matches = {e["content_hash"] for e in entries if e["content_hash"].startswith(to) and e["deployment"]}
        if len(matches) != 1:
            raise ValueError(f"--to {to!r} matches {len(matches)} promoted deployment(s) in the history")
        target = matches.pop()
    entry = next(e for e in reversed(entries) if e["content_hash"] == target and e["deployment"])
    dep_dir = Path(entry["deployment"])
    dep = Deployment(dep_dir if dep_dir.is_absolute() else Path(root) / dep_dir, target)
    if not dep.dir.is_dir():
        raise FileNotFoundError(f"deployment {dep.dir} of {target[:12]}… is gone: cannot roll back to it")
    return promote(record, dep, entry["model"], who, why, {"rolled_back_from": current["content_hash"]},
                   action="rollback", root=root)
