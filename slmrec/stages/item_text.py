"""The `item_text` stage (issue 19): the item text table, encoded once by the frozen pretrained backbone.

    build_item_text(splits="data/splits", interactions="data/interactions", params, out="data/item_text")

writes into `out`:

    table.npy    (n_items + 1, hidden) float32; row i = item_idx i of the splits, row 0 (padding) = 0
    mask.npy     (n_items + 1,) bool: True where the item has text (row 0 and text-less items: False;
                 the models give those a learned fallback vector)
    texts.parquet  item_idx, item_id, text, has_text (what was encoded, for a person to read)
    meta.json    the content key and what it covers, timings (items/s, s per 1,000 items)
    card.json    lineage: parents = splits, interactions snapshot, the backbone's weight files

Resumable: the texts are encoded in chunks of `item_text.chunk_items`; each chunk is written atomically
to `item_text.runs_dir/<key>/chunk_NNNNN.npy`, and a rerun with the same key skips the chunks that are
there. The key is a sha256 over the backbone's identity (weights sha256 / tiny seed and config), the
template, the rendered texts with their item ids (the catalogue as the template reads it), the layers,
the pooling, max_tokens and the code version of this stage and the encoder; any change starts afresh.
The table does not depend on the chunking or batching beyond float rounding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slmrec.config import ItemTextConfig, Params, to_dict
from slmrec.data.item_text import item_texts, template_fields
from slmrec.hashing import code_version
from slmrec.lineage import atomic_write_text, write_card

TABLE, MASK, TEXTS, META = "table.npy", "mask.npy", "texts.parquet", "meta.json"
ITEM_TEXT_CODE = ("data/item_text.py", "models/text_encoder.py", "models/sentence_encoder.py", "stages/item_text.py")


@dataclasses.dataclass
class ItemTextTable:
    """The table as the models read it."""

    table: np.ndarray  # (n_items + 1, hidden) float32
    mask: np.ndarray  # (n_items + 1,) bool
    key: str

    @property
    def n_items(self) -> int:
        return self.table.shape[0] - 1


def load_item_text(folder: str | Path, n_items: int | None = None) -> ItemTextTable:
    """Read a table written by `build_item_text`; n_items (the splits') must match when given."""
    folder = Path(folder)
    for name in (TABLE, MASK, META):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name}: no item text table here (run `slmrec item-text`)")
    table, mask = np.load(folder / TABLE), np.load(folder / MASK)
    key = json.loads((folder / META).read_text())["key"]
    if table.ndim != 2 or mask.shape != (table.shape[0],):
        raise ValueError(f"{folder}: table {table.shape} and mask {mask.shape} do not fit together")
    if n_items is not None and table.shape[0] != n_items + 1:
        raise ValueError(f"{folder}: table has {table.shape[0] - 1} items, the splits {n_items}: rebuild it")
    return ItemTextTable(table.astype(np.float32), mask.astype(bool), key)


def content_key(backbone_source: dict, cfg: ItemTextConfig, item_ids: list[str], texts: list[str]) -> dict:
    catalogue = hashlib.sha256(json.dumps([item_ids, texts], ensure_ascii=False).encode()).hexdigest()
    return {
        "backbone": backbone_source, "template": cfg.template, "catalogue_sha256": catalogue,
        "layers": cfg.layers, "pooling": cfg.pooling, "max_tokens": cfg.max_tokens,
        "code": code_version(ITEM_TEXT_CODE),
    }  # fmt: skip


def _save_npy_atomic(array: np.ndarray, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_item_text(
    splits_dir: str,
    interactions_dir: str,
    params: Params,
    out_dir: str,
    log: Callable = print,
    backbone=None,
) -> dict:
    """Encode every item's text once; returns meta (key, counts, timings). `backbone` (tests) overrides
    loading `params.llm.profile` with `item_text.layers` layers."""
    from slmrec.models.text_encoder import check_pooling, encode_texts, load_text_encoder

    cfg = params.item_text
    template_fields(cfg.template)
    check_pooling(cfg.pooling)
    if cfg.chunk_items < 1 or cfg.batch_size < 1:
        raise ValueError("item_text.chunk_items and item_text.batch_size must be >= 1")
    item_map = pq.read_table(Path(splits_dir) / "item_map.parquet")
    catalogue = pq.read_table(Path(interactions_dir) / "items.parquet")
    texts = item_texts(item_map, catalogue, cfg.template)
    item_ids = item_map["item_id"].to_pylist()

    if backbone is None:
        backbone = load_text_encoder(cfg.profile or params.llm.profile, cfg.layers, params.llm)
    key_parts = content_key(backbone.source, cfg, item_ids, texts)
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    work = Path(cfg.runs_dir) / key
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "key.json", json.dumps(key_parts, indent=2, sort_keys=True) + "\n")

    n, hidden = len(texts), backbone.hidden
    chunks = [(s, min(s + cfg.chunk_items, n)) for s in range(0, n, cfg.chunk_items)]
    done = sum((work / f"chunk_{i:05d}.npy").exists() for i in range(len(chunks)))
    log(f"item text: {n} items, {sum(bool(t) for t in texts)} with text, {len(chunks)} chunks "
        f"({done} done before, key {key}); template {cfg.template!r}, {cfg.layers} layers, {cfg.pooling} pooling")
    started, encoded = time.perf_counter(), 0
    for i, (lo, hi) in enumerate(chunks):
        path = work / f"chunk_{i:05d}.npy"
        if path.exists():
            continue
        t0 = time.perf_counter()
        vectors = encode_texts(backbone, texts[lo:hi], cfg.pooling, cfg.max_tokens, cfg.batch_size).numpy()
        _save_npy_atomic(vectors.astype(np.float32), path)
        encoded += hi - lo
        spent = time.perf_counter() - started
        left = sum(b - a for j, (a, b) in enumerate(chunks[i + 1 :], start=i + 1)
                   if not (work / f"chunk_{j:05d}.npy").exists())  # fmt: skip
        log(f"  chunk {i + 1}/{len(chunks)}: items {lo + 1}-{hi} in {time.perf_counter() - t0:.1f} s; "
            f"{encoded / spent:.1f} items/s; about {left * spent / encoded:.0f} s left")
    seconds = time.perf_counter() - started

    table = np.zeros((n + 1, hidden), np.float32)
    for i, (lo, hi) in enumerate(chunks):
        part = np.load(work / f"chunk_{i:05d}.npy")
        if part.shape != (hi - lo, hidden):
            raise ValueError(f"{work}: chunk {i} has shape {part.shape}, expected {(hi - lo, hidden)}")
        table[lo + 1 : hi + 1] = part
    mask = np.array([False] + [bool(t) for t in texts])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.iterdir():
        if leftover.is_file():
            leftover.unlink()
    _save_npy_atomic(table, out / TABLE)
    _save_npy_atomic(mask, out / MASK)
    pq.write_table(pa.table({"item_idx": item_map["item_idx"], "item_id": item_map["item_id"],
                             "text": pa.array(texts, pa.string()), "has_text": pa.array(mask[1:])}),
                   out / TEXTS)  # fmt: skip
    meta = {
        "key": key, "key_parts": key_parts, "n_items": n, "hidden": hidden, "with_text": int(mask.sum()),
        "without_text": int(n - mask.sum()), "encoded_now": encoded, "encode_seconds": round(seconds, 2),
        "seconds_per_1000_items": round(1000 * seconds / encoded, 2) if encoded else None,
        "example": texts[0] if texts else "",
    }  # fmt: skip
    atomic_write_text(out / META, json.dumps({k: meta[k] for k in ("key", "key_parts", "n_items", "hidden",
                                                                    "with_text", "without_text")},
                                             indent=2, sort_keys=True) + "\n")  # fmt: skip
    write_card(out, "item_text", params={"item_text": to_dict(cfg), "llm": {"profile": params.llm.profile}},
               parents=[splits_dir, interactions_dir, *[str(f) for f in getattr(backbone, "files", ())]],
               metrics={k: meta[k] for k in ("n_items", "with_text", "without_text")},
               extra={"content_key": key}, reproducible=True)  # fmt: skip
    log(f"item text: wrote {out} ({n + 1} x {hidden}); {meta['without_text']} items without text; "
        f"{encoded} encoded now in {seconds:.1f} s")
    return meta


__all__ = ["build_item_text", "load_item_text", "ItemTextTable", "content_key", "TABLE", "MASK"]
