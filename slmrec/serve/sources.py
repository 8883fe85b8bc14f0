"""Where a model directory's item/user maps and DuckDB store are: found through its lineage card.

    sources = resolve_sources("models/student")                 # card -> splits dir -> snapshot card -> data.db
    sources = resolve_sources(dir, splits="x/splits", db="x.duckdb")   # overrides (still checked)

A deployment (models/deployed/<hash>/, slmrec/serve/deploy.py) carries a copy of the splits its model
was trained on: its model/ directory resolves to that copy, so a retrain that rewrites data/splits
never changes what a deployed model's item ids mean.

The chain the pipeline writes (slmrec/lineage.py):

    model card   parents: [..., {"artifact": "splits", "path": ...}, ...]
    splits card  parents: [{"artifact": "interactions" | "interactions_sample", "path": ...}]
    interactions card (the snapshot)   params.data.db = the DuckDB store it was exported from

Relative paths in cards resolve against `root` (the project directory, as `slmrec lineage --root`).
A splits directory whose content hash differs from the one the model recorded is refused: its
item ids would not be the model's item ids, and every answer would be silently wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmrec.lineage import content_hash, read_card


@dataclass(frozen=True)
class ModelSources:
    model_dir: Path
    card: dict  # the model's card.json
    model_hash: str  # content hash of the model directory (checked against the card)
    splits_dir: Path
    db: Path
    item_text_dir: Path | None = None  # the item text table of a model that reads text (new catalogue items)


def _resolve(path: str | Path, root: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else root / path


def _parent(card: dict, artifacts: tuple[str, ...]) -> dict | None:
    for parent in card.get("parents", []):
        if parent.get("kind") == "artifact" and parent.get("artifact") in artifacts:
            return parent
    return None


def _db_from_snapshot(splits_dir: Path, root: Path) -> Path:
    """splits card -> (sample ->) interactions snapshot card -> params.data.db."""
    card, where = read_card(splits_dir), splits_dir
    for _ in range(4):  # splits -> interactions_sample -> interactions: a short chain, never a loop
        parent = _parent(card, ("interactions", "interactions_sample"))
        if parent is None:
            raise ValueError(f"{where}/card.json names no interactions snapshot parent: pass --db")
        where = _resolve(parent["path"], root)
        card = read_card(where)
        if card["artifact"] == "interactions":
            db = (card.get("params") or {}).get("data", {}).get("db")
            if not db:
                raise ValueError(f"{where}/card.json has no params.data.db: pass --db")
            return _resolve(db, root)
    raise ValueError(f"{splits_dir}: no interactions snapshot within 4 parents: pass --db")


DEPLOYMENT_FILE = "deployment.json"  # marks models/deployed/<hash>/: model/ and the splits/ it was trained on


def resolve_sources(
    model_dir: str | Path, splits: str | Path | None = None, db: str | Path | None = None, root: str | Path = ".",
    digests: dict[str, str] | None = None,
) -> ModelSources:
    """digests: sha256 of model files the caller holds in memory (lineage.content_hash)."""
    model_dir, root = Path(model_dir), Path(root)
    card = read_card(model_dir)
    actual = content_hash(model_dir, digests)
    if splits is None and (model_dir.parent / DEPLOYMENT_FILE).is_file():
        splits = model_dir.parent / "splits"  # a deployment carries its own copy of the splits (immutable)
    if card.get("content_hash") != actual:
        raise ValueError(
            f"{model_dir}: card.json records content hash {str(card.get('content_hash'))[:12]}…, the files hash to "
            f"{actual[:12]}… (modified after training): refusing to serve it"
        )
    recorded = _parent(card, ("splits",))
    if splits is not None:
        splits_dir = Path(splits)
    elif recorded is not None:
        splits_dir = _resolve(recorded["path"], root)
    else:
        raise ValueError(f"{model_dir}/card.json names no splits parent: pass --splits")
    if not (splits_dir / "stats.json").is_file():
        raise FileNotFoundError(
            f"splits dir {splits_dir} (from {'--splits' if splits is not None else model_dir / 'card.json'}) "
            "not found or not written by `slmrec sequences`; pass --splits (and --root for relative card paths)"
        )
    if recorded is not None:
        found = content_hash(splits_dir)
        if found != recorded["content_hash"]:
            raise ValueError(
                f"{splits_dir}: content hash {found[:12]}… differs from the splits {model_dir} was trained on "
                f"({recorded['content_hash'][:12]}…): its item ids are not the model's (re-train, or pass the right --splits)"
            )
    db_path = Path(db) if db is not None else _db_from_snapshot(splits_dir, root)
    if not db_path.is_file():
        raise FileNotFoundError(f"DuckDB store {db_path} not found (pass --db)")
    item_text = _parent(card, ("item_text",))
    item_text_dir = None
    if item_text is not None:
        deployed = model_dir.parent / "item_text"  # a deployment carries its own copy
        item_text_dir = deployed if (model_dir.parent / DEPLOYMENT_FILE).is_file() else _resolve(item_text["path"], root)
    return ModelSources(model_dir=model_dir, card=card, model_hash=actual, splits_dir=splits_dir, db=db_path,
                        item_text_dir=item_text_dir)


def read_promoted(record: str | Path, root: str | Path = ".", models_dir: str | Path | None = None) -> tuple[Path, dict]:
    """(model directory, record) named by models/promoted.json; a clear error when it is missing or broken.

    models_dir (relative to root): the named directory must lie inside it (after resolving `..` and
    symlinks), so a tampered record cannot make the server load files from anywhere. Every malformed
    record (not JSON, not an object, a missing / null / non-string path or hash) is a ValueError."""
    record = Path(record)
    if not record.is_file():
        raise FileNotFoundError(f"{record} not found: promote a model first (Dagster promoted_model), or pass --model")
    try:
        data = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{record}: not JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{record}: a promotion record is a JSON object, got {type(data).__name__}")
    for key in ("path", "content_hash"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{record}: {key!r} must be a non-empty string, got {data.get(key)!r} (not a promotion record)")
    model_dir = _resolve(data["path"], Path(root))
    if models_dir is not None:
        allowed = _resolve(models_dir, Path(root)).resolve()
        if not model_dir.resolve().is_relative_to(allowed):
            raise ValueError(f"{record}: path {data['path']!r} is outside the models directory {allowed} "
                             "(serve.models_dir): refused")
    return model_dir, data
