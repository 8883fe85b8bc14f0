"""Items added to the catalogue after training, recommendable without retraining (issue 19).

A model whose item side reads text (`sasrec.item_side` / `llm.item_side` = text | id+text) scores an item by
its text vector. An item that arrives in the DuckDB `items` table after the model was trained (it is not in
the splits' item map) is rendered by the same template, encoded by the same frozen backbone layers and
pooling, prepared with the centring (and whitening) fitted on the training catalogue, and appended to the
model's item side. It is read through its text alone, as the unseen items of training are (it has no trained
ID vector). The trunk, the maps and the vector of every item the model knew stay exactly as trained.

    new = add_catalogue_items(model, item_ids, db, item_text_dir)    # NewItems(added, skipped)
    item_ids += new.added                                            # model index n_items_before + 1 ...

The item text table the model was trained with (its card's `item_text` parent, copied into a deployment)
fixes the encoding: its meta.json names the backbone (weights sha256), the template, layers, pooling and
max_tokens, and its raw table is what the preparation is fitted on. That fit is recomputed and compared
with the model's own text buffer: a table that is not the model's is refused, not silently mis-scored.
An ID-only model cannot score an item it never saw: `text_side_of` says so, and the caller serves the
training catalogue. A new item without any text is skipped with that reason (it has nothing to be read by).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from slmrec.data.item_text import catalogue_fields, render
from slmrec.models.item_side import TextView, prepare_text
from slmrec.serve.history import connect_read_only
from slmrec.stages.item_text import META, load_item_text

NEW_ITEMS = ("text", "ignore")  # serve.new_items
PREPARED_ATOL = 1e-5  # the model's prepared text rows vs the same rows prepared again from the raw table
CATALOGUE_QUERY = "SELECT item_id, title, categories, attributes FROM items ORDER BY item_id, source_file"


@dataclass
class NewItems:
    added: list[str] = field(default_factory=list)  # original ids, in the order of their new model indices
    skipped: dict[str, str] = field(default_factory=dict)  # item id -> why it is not served
    seconds: float = 0.0  # encoding time


def text_side_of(model: torch.nn.Module) -> TextView | None:
    """The text view of a model's item side, None for an ID-only side (it cannot read a new item)."""
    view = getattr(getattr(model, "item_side", None), "text", None)
    return view if isinstance(view, TextView) else None


def read_catalogue(db: str | Path) -> pa.Table:
    """Every catalogue row of the DuckDB store (item_id, title, categories, attributes); the last source
    file's row wins for an item listed twice, as in the ingest snapshot the item text stage read."""
    with connect_read_only(db) as con:
        return con.sql(CATALOGUE_QUERY).to_arrow_table()


def _check_fit(model_rows: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor, whiten: bool, where: Path) -> None:
    """The model's prepared text rows must be the preparation of this raw table (else it is not the model's)."""
    again = prepare_text(raw, mask, whiten)  # (n_items + 1, d_text)
    if again.shape != model_rows.shape or not torch.allclose(again, model_rows.cpu(), atol=PREPARED_ATOL):
        raise ValueError(f"{where}: this item text table is not the one the model was trained with (its prepared "
                         "rows differ from the model's): new items cannot be encoded like the model's items")


def add_catalogue_items(
    model: torch.nn.Module, item_ids: list[str | None], db: str | Path, item_text_dir: str | Path,
    backbone=None, batch_size: int = 32,
) -> NewItems:
    """Append to `model` the catalogue items of `db` that `item_ids` (index -> original id, [0] = padding)
    does not hold; returns which were added (new indices len(item_ids), len(item_ids) + 1, ...) and skipped.
    `backbone` (tests) replaces loading the profile named by the table's meta.json."""
    from slmrec.models.text_encoder import encode_texts, load_text_encoder

    view = text_side_of(model)
    if view is None:
        raise ValueError("the model's item side is `id`: it cannot score an item it never saw (serve.new_items: "
                         "ignore serves its training catalogue)")
    catalogue = read_catalogue(db)
    known = {i for i in item_ids[1:] if i is not None}
    fresh = sorted({i for i in catalogue["item_id"].to_pylist() if i not in known})
    out = NewItems()
    if not fresh:
        return out
    folder = Path(item_text_dir)
    table = load_item_text(folder, len(item_ids) - 1)
    parts = json.loads((folder / META).read_text())["key_parts"]
    whiten = bool(getattr(model.cfg, "text_whiten", False))
    raw, mask = torch.from_numpy(table.table), torch.from_numpy(table.mask)
    _check_fit(view.text[: len(item_ids)], raw, mask, whiten, folder)

    fields = catalogue_fields(catalogue)  # the whole catalogue: the shared top category level as before
    texts = {item: render(parts["template"], fields[item]) for item in fresh}
    out.skipped = {item: "no text in the catalogue (nothing to read it by)" for item in fresh if not texts[item]}
    todo = [item for item in fresh if texts[item]]
    if not todo:
        return out
    if backbone is None:
        backbone = load_text_encoder(parts["backbone"].get("profile"), parts["layers"])
    if backbone.source != parts["backbone"] or backbone.n_layers != parts["layers"]:
        raise ValueError(f"{folder}: the table was encoded by {parts['backbone']} ({parts['layers']} layers), the "
                         f"backbone at hand is {backbone.source} ({backbone.n_layers} layers): new items would not "
                         "be encoded like the model's items")
    started = time.perf_counter()
    vectors = encode_texts(backbone, [texts[i] for i in todo], parts["pooling"], parts["max_tokens"], batch_size)
    rows = prepare_text(raw, mask, whiten, new=vectors)  # (m, d_text), fitted on the training catalogue
    model.add_items(rows.to(view.text.device))
    out.added, out.seconds = todo, time.perf_counter() - started
    return out


__all__ = ["NEW_ITEMS", "NewItems", "add_catalogue_items", "text_side_of", "read_catalogue"]
