"""One string per item from the catalogue, by the template of `params.yaml: item_text.template` (issue 19).

    texts = item_texts(item_map, catalogue, "{title} | {categories} | {brand}")
    texts[i - 1]  -> the text of item_idx i ("" = the catalogue has no text for it)

The catalogue is the ingest snapshot's `items.parquet` (item_id, title, categories = JSON list,
attributes = JSON object); `item_map.parquet` of the splits gives the model's ids (item_idx 1..n).
Fields a template may name:

    title       the title (HTML entities unescaped)
    categories  the category path / genres, ", "-joined (a leading level shared by >= 90 % of the
                items, e.g. Amazon's "Beauty", is dropped: it says nothing about one item)
    genres      the same as categories
    brand       attributes.brand
    year        attributes.release_year / year, else a "(1995)" at the end of the title
    attributes  the other catalogue fields as "key: value", "; "-joined (S3-Rec attribute ids and
                asins are left out: they are ids, not words)

Segments are separated by `|`; a segment whose fields are all empty is left out, so an item
without a brand reads "title | categories", not "title | categories | ".
"""

from __future__ import annotations

import html
import json
import re
import string

import pyarrow as pa

FIELDS = ("title", "categories", "genres", "brand", "year", "attributes")
ID_LIKE = {"attribute_ids", "asin", "brand", "release_year", "year", "description"}  # not in `attributes`
SHARED_LEVEL = 0.9  # a first category level on this share of the items is dropped
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def template_fields(template: str) -> list[str]:
    """The field names a template uses; an unknown one is a ValueError naming the known ones."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    unknown = sorted(set(names) - set(FIELDS))
    if unknown or not names:
        raise ValueError(f"item_text.template {template!r}: unknown field(s) {unknown or '(none given)'}; "
                         f"known: {list(FIELDS)}")  # fmt: skip
    return names


def _clean(text) -> str:
    return " ".join(html.unescape(str(text)).split()) if text not in (None, "") else ""


def catalogue_fields(items: pa.Table) -> dict[str, dict[str, str]]:
    """item_id -> {field: text} for every catalogue row."""
    rows = items.to_pylist()
    cats = {r["item_id"]: json.loads(r["categories"]) if r.get("categories") else [] for r in rows}
    firsts = [c[0] for c in cats.values() if c]
    drop = None
    if firsts:
        top = max(set(firsts), key=firsts.count)
        drop = top if firsts.count(top) >= SHARED_LEVEL * len(rows) else None
    out = {}
    for r in rows:
        attrs = json.loads(r["attributes"]) if r.get("attributes") else {}
        levels = [c for c in cats[r["item_id"]] if c != drop]
        title = _clean(r.get("title"))
        year = _clean(attrs.get("release_year") or attrs.get("year"))
        if not year and (m := _YEAR.search(title)):
            year = m.group(1)
        other = "; ".join(f"{k}: {_clean(v)}" for k, v in attrs.items() if k not in ID_LIKE and _clean(v))
        joined = ", ".join(_clean(c) for c in levels if _clean(c))
        out[r["item_id"]] = {"title": title, "categories": joined, "genres": joined,
                             "brand": _clean(attrs.get("brand")), "year": year, "attributes": other}  # fmt: skip
    return out


def render(template: str, fields: dict[str, str]) -> str:
    """The template filled in; segments (split on `|`) whose fields are all empty are left out."""
    parts = []
    for segment in template.split("|"):
        names = [n for _, n, _, _ in string.Formatter().parse(segment) if n is not None]
        if names and not any(fields.get(n) for n in names):
            continue
        text = " ".join(segment.format_map({n: fields.get(n, "") for n in names}).split())
        if text:
            parts.append(text)
    return " | ".join(parts)


def item_texts(item_map: pa.Table, items: pa.Table, template: str) -> list[str]:
    """Texts of item_idx 1..n (item_map order must be 1..n); "" where the catalogue has nothing."""
    template_fields(template)
    idx = item_map["item_idx"].to_pylist()
    if idx != list(range(1, len(idx) + 1)):
        raise ValueError("item_map.parquet: item_idx must be 1..n_items in order")
    fields = catalogue_fields(items) if items.num_rows else {}
    return [render(template, fields[i]) if i in fields else "" for i in item_map["item_id"].to_pylist()]


__all__ = ["FIELDS", "template_fields", "catalogue_fields", "render", "item_texts"]
