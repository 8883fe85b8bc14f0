"""Readers: one per input format (DESIGN.md §5), registered in READERS.

A reader turns a file into *candidate rows* (EVENT_SCHEMA), all values still text:
one row per event, or one row per line it could not split (its `reason` is already set,
e.g. `unparseable`). Value checks (empty ids, timestamps, ratings, duplicates) are common
to every format and live in `slmrec.data.ingest`. A file that cannot be read at all
(missing, not UTF-8, no valid header, not JSON, a missing mapped column) raises
FileNotFoundError / ValueError naming the path.

`row_number` is the 1-based physical line (the header is line 1) for the line formats;
for `usermap-json` it is the 1-based position of the user in the JSON object and for
Parquet the 1-based row. A line holding many events (seqtxt, usermap-json) gives one
candidate row per item (`item_pos` 0, 1, ...), so `rows_read` counts events there, and a
line that cannot be split counts as one row.

An item file (optional, with any sequence format) gives an ITEM_SCHEMA table: `categories` and
`attributes` are JSON text (a list of category names, flattened in order; an object of the other
fields). Its shape is read from its content, not from the sequence format (`read_item_file`,
ITEM_SHAPES): a RecBole `.item` (typed header), a JSON object keyed by item id (values: an object
of text fields — Beauty.item.json, Scientific.item.json — or an S3-Rec attribute-id list), or
Amazon metadata lines. In the JSON object a record that cannot be used (no id, a value that is
neither an object nor a list, a field of the wrong type) is quarantined with a reason
(`ItemRead.rejects`); a file that cannot be read at all is an error naming the path.
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("ts", pa.string()),  # unix s / ms / ISO datetime text, or the position for sequence formats
        ("rating", pa.string()),
        ("event", pa.string()),
        ("row_number", pa.int64()),
        ("item_pos", pa.int32()),
        ("raw", pa.string()),  # source text, set by the reader only for rows it rejects
        ("reason", pa.string()),  # quarantine reason found by the reader (else null)
    ]
)
ITEM_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("title", pa.string()), ("categories", pa.string()), ("attributes", pa.string())]
)
CANONICAL = ("user_id", "item_id", "ts", "rating", "event")  # columns an `events` column map may name
REQUIRED = ("user_id", "item_id", "ts")


@dataclass
class ReadResult:
    events: pa.Table  # EVENT_SCHEMA
    lines: pa.Array | None = None  # lines[row_number - 1] = raw text of that row (None: rebuilt from fields)
    column_map: dict[str, str] = field(default_factory=dict)  # canonical -> source column/key the reader used


@dataclass(frozen=True)
class Reader:
    read: Callable[[str, dict[str, str]], ReadResult]  # (path, column_map) -> candidate rows
    help: str


ITEM_REASONS = ("missing_item_id", "bad_record", "bad_field")


@dataclass
class ItemRead:
    """An item file read: the catalog rows and the records quarantined (never silently dropped)."""

    items: pa.Table  # ITEM_SCHEMA, file order
    shape: str  # which ITEM_SHAPES entry read it
    # (1-based record number, item id or None, raw JSON text of the record, reason in ITEM_REASONS)
    rejects: list[tuple[int, str | None, str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- text helpers


def read_text(path: str) -> str:
    """Whole file as text; gzip is detected by its magic bytes. Not UTF-8 -> ValueError."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: broken gzip file ({err})") from err
    if b"\x00" in data:
        raise ValueError(f"{path}: binary file (NUL bytes), not a text format")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from err
    return text.removeprefix("\ufeff")


def split_lines(text: str) -> pa.Array:
    """Physical lines (without the final newline); lines[i] is line i + 1."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    arr = pa.array(lines, pa.string())
    if "\r" in text:
        arr = pc.utf8_rtrim(arr, characters="\r")
    return arr


def _events(n: int, **cols) -> pa.Table:
    """An EVENT_SCHEMA table of n rows; missing columns are null."""
    arrays = []
    for f in EVENT_SCHEMA:
        col = cols.pop(f.name, None)
        if col is None:
            arrays.append(pa.nulls(n, f.type))
        else:
            arrays.append(pc.cast(col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col), f.type))
    if cols:
        raise TypeError(f"unknown event columns {sorted(cols)}")
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def _rejects(row_numbers, raws, reason: str) -> pa.Table:
    n = len(row_numbers)
    zeros = pa.array(np.zeros(n, np.int32))
    return _events(n, row_number=row_numbers, item_pos=zeros, raw=raws, reason=pa.array([reason] * n, pa.string()))


def _concat(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks()


def _jdump(value) -> str | None:
    return None if value in (None, [], {}) else json.dumps(value, ensure_ascii=False)


def _items(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.Table.from_arrays([pa.array(list(c), pa.string()) for c in cols], schema=ITEM_SCHEMA)


def _unique(values) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        if isinstance(v, str) and v.strip():
            seen.setdefault(v.strip(), None)
    return list(seen)


# ----------------------------------------------------------------------------- recbole


RECBOLE_TYPES = {"token", "token_seq", "float", "float_seq"}


def _recbole_header(path: str, line: str) -> list[tuple[str, str]]:
    cols = []
    for field in line.split("\t"):
        name, sep, kind = field.strip().partition(":")
        if not sep or not name or kind not in RECBOLE_TYPES:
            raise ValueError(f"{path}: no valid RecBole header (want tab-separated name:type, got {line[:120]!r})")
        cols.append((name, kind))
    return cols


def read_recbole(path: str, column_map: dict[str, str]) -> ReadResult:
    """RecBole atomic `.inter`: typed header, then tab-separated rows."""
    _no_column_map("recbole", column_map)
    lines = split_lines(read_text(path))
    if len(lines) == 0:
        raise ValueError(f"{path}: empty file, no RecBole header")
    header = _recbole_header(path, lines[0].as_py())
    names = [name for name, _ in header]
    for need in ("user_id", "item_id"):
        if need not in names:
            raise ValueError(f"{path}: RecBole header has no {need} column (columns: {names})")
    data = lines[1:]
    row_numbers = np.arange(2, len(lines) + 1, dtype=np.int64)
    fields = pc.split_pattern(data, "\t")
    ok = pc.equal(pc.list_value_length(fields), len(names))
    good, good_rows = pc.filter(fields, ok), row_numbers[np.asarray(ok, dtype=bool)]
    col = {name: pc.list_element(good, j) for j, name in enumerate(names)}
    if "timestamp" in col:
        ts = col["timestamp"]
    else:  # no time column: the order of the user's rows in the file
        users = col["user_id"].to_numpy(zero_copy_only=False)
        _, inverse = np.unique(users, return_inverse=True)
        ts = pa.array(_rank_within(inverse), pa.int64())
    events = _events(
        len(good),
        user_id=col["user_id"],
        item_id=col["item_id"],
        ts=ts,
        rating=col.get("rating"),
        event=col.get("event"),
        row_number=pa.array(good_rows),
        item_pos=pa.array(np.zeros(len(good), np.int32)),
    )
    bad = np.flatnonzero(~np.asarray(ok, dtype=bool))
    rejects = _rejects(pa.array(row_numbers[bad]), pc.take(data, pa.array(bad, pa.int64())), "unparseable")
    used = {"user_id": "user_id", "item_id": "item_id", "ts": "timestamp", "rating": "rating", "event": "event"}
    return ReadResult(_concat(events, rejects), lines, {c: n for c, n in used.items() if n in col})


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... inside each group id, in array order."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    sizes = np.diff(np.r_[starts, len(groups)])
    ranks = np.empty(len(groups), np.int64)
    ranks[order] = np.arange(len(groups)) - np.repeat(starts, sizes)
    return ranks


def read_recbole_items(path: str) -> pa.Table:
    """RecBole `.item`: item_id, a title column, a token_seq genre column, the rest as attributes."""
    lines = read_text(path).split("\n")
    header = _recbole_header(path, lines[0].rstrip("\r"))
    names = [name for name, _ in header]
    kinds = dict(header)
    if "item_id" not in names:
        raise ValueError(f"{path}: RecBole item header has no item_id column (columns: {names})")
    title = next((n for n in ("movie_title", "title", "name") if n in names), None)
    genre = next((n for n in ("class", "genre", "categories", "category") if n in names), None)
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line and i == len(lines):
            continue  # the final newline
        values = line.split("\t")
        if len(values) != len(names):
            raise ValueError(f"{path}:{i}: expected {len(names)} tab-separated fields, got {len(values)}")
        rec = dict(zip(names, values))
        cats = rec[genre].split() if genre and kinds[genre] == "token_seq" else [rec[genre]] if genre else []
        attrs = {n: v for n, v in rec.items() if n not in ("item_id", title, genre) and v != ""}
        rows.append((rec["item_id"], rec[title] if title else None, _jdump(_unique(cats)), _jdump(attrs)))
    return _items(rows)


# ----------------------------------------------------------------------------- seqtxt


def read_seqtxt(path: str, column_map: dict[str, str]) -> ReadResult:
    """`user item item ...` per line, oldest first; ts = position in the line (0, 1, ...)."""
    _no_column_map("seqtxt", column_map)
    lines = split_lines(read_text(path))
    row_numbers = np.arange(1, len(lines) + 1, dtype=np.int64)
    tokens = pc.utf8_split_whitespace(lines)
    ok = np.asarray(pc.greater_equal(pc.list_value_length(tokens), 2), dtype=bool)
    good = pc.filter(tokens, pa.array(ok))
    items = pc.list_slice(good, 1)
    parent = np.asarray(pc.list_parent_indices(items))  # (E,) line index (in `good`) of each event
    lengths = np.asarray(pc.list_value_length(items))
    pos = np.arange(len(parent)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (E,)
    events = _events(
        len(parent),
        user_id=pc.take(pc.list_element(good, 0), pa.array(parent)),
        item_id=pc.list_flatten(items),
        ts=pa.array(pos),
        row_number=pa.array(row_numbers[ok][parent]),
        item_pos=pa.array(pos.astype(np.int32)),
    )
    bad = np.flatnonzero(~ok)
    rejects = _rejects(pa.array(row_numbers[bad]), pc.take(lines, pa.array(bad, pa.int64())), "unparseable")
    return ReadResult(_concat(events, rejects), lines)


# ----------------------------------------------------------------------------- usermap-json


def read_usermap(path: str, column_map: dict[str, str]) -> ReadResult:
    """One JSON object {"user": [item, item, ...]} (oldest first); ts = position."""
    _no_column_map("usermap-json", column_map)
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object {{user: [items]}}, got {type(doc).__name__}")
    cols: dict[str, list] = {"user_id": [], "item_id": [], "row_number": [], "item_pos": [], "reason": [], "raw": []}

    def add(user, item, row, pos, reason=None, raw=None):
        for name, value in zip(cols, (user, item, row, pos, reason, raw)):
            cols[name].append(value)

    raw_lines = []
    for row, (user, seq) in enumerate(doc.items(), start=1):
        raw_lines.append(json.dumps({user: seq}, ensure_ascii=False))
        if not isinstance(seq, list) or not seq:
            add(user, None, row, 0, "unparseable", raw_lines[-1])
            continue
        for pos, item in enumerate(seq):
            if isinstance(item, (str, int)) and not isinstance(item, bool):
                add(user, str(item), row, pos)
            else:  # null -> missing_item later; a list/object/float is no item id
                add(user, None, row, pos, None if item is None else "unparseable")
    n = len(cols["user_id"])
    events = _events(n, ts=pa.array(cols["item_pos"], pa.int64()), **{k: pa.array(v) for k, v in cols.items()})
    return ReadResult(events, pa.array(raw_lines, pa.string()))


CATEGORY_SPLIT = re.compile(r",(?!\s)")  # "A,B, C,D" -> ["A", "B, C", "D"]: a level name may hold ", "


TEXT_FIELDS = ("title", "description", "brand")  # must be text when present


class _Pairs(list):
    """A JSON object as its (key, value) pairs: repeated keys are kept, not silently overwritten."""


def _as_value(value):
    if isinstance(value, _Pairs):
        return {k: _as_value(v) for k, v in value}
    if isinstance(value, list):
        return [_as_value(v) for v in value]
    return value


def read_item_map(path: str) -> ItemRead:
    """{"item_id": record}: a record is an object of text fields or an S3-Rec attribute-id list.

    object: {"title", "categories": "A,B,C" or a (nested) list, "brand", "description", "asin", ...}
            -> title, categories, the other non-empty fields as attributes (Beauty.item.json,
            Scientific.item.json, the usermap-json item file)
    list:   [attribute ids] -> attributes {"attribute_ids": [...]} (S3-Rec *_item2attributes.json)
    A record of neither kind, an empty id or a text field that is not text is quarantined."""
    text = read_text(path)
    try:
        doc = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if not isinstance(doc, _Pairs):
        raise ValueError(f"{path}: expected a JSON object {{item_id: record}}, got {type(doc).__name__}")
    rows, rejects = [], []
    for number, (item, rec) in enumerate(doc, start=1):
        rec = _as_value(rec)
        raw = json.dumps({item: rec}, ensure_ascii=False)
        item_id = item.strip()
        if not item_id:
            rejects.append((number, None, raw, "missing_item_id"))
        elif isinstance(rec, list):
            rows.append((item_id, None, None, _jdump({"attribute_ids": rec})))
        elif not isinstance(rec, dict):
            rejects.append((number, item_id, raw, "bad_record"))
        elif any(rec.get(f) is not None and not isinstance(rec[f], str) for f in TEXT_FIELDS) or not isinstance(
            rec.get("categories") or "", (str, list)
        ):
            rejects.append((number, item_id, raw, "bad_field"))
        else:
            cats = rec.get("categories") or ""
            cats = CATEGORY_SPLIT.split(cats) if isinstance(cats, str) else _flatten(cats)
            attrs = {k: v for k, v in rec.items() if k not in ("title", "categories") and v not in (None, "")}
            rows.append((item_id, (rec.get("title") or "").strip() or None, _jdump(_unique(cats)), _jdump(attrs)))
    return ItemRead(_items(rows), "item-map", rejects)


def _load_json(path: str):
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err


def _flatten(value) -> list:
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    return [value]


# ----------------------------------------------------------------------------- JSON lines


def _json_lines(path: str, fields: dict[str, str], literal_fallback: bool, lines: pa.Array | None = None) -> ReadResult:
    """JSON objects, one a line; `fields` maps canonical column -> key. Extraction runs in DuckDB."""
    lines = split_lines(read_text(path)) if lines is None else lines
    con = duckdb.connect()
    con.register("src", pa.table({"raw": lines}))
    valid = np.asarray(con.sql("SELECT coalesce(json_valid(raw), false) FROM src").to_arrow_table().column(0), bool)
    docs = lines
    if literal_fallback and not valid.all():  # Amazon 2014 dumps: Python dict literals, not JSON
        fixed = lines.to_pylist()
        for i in np.flatnonzero(~valid):
            fixed[i] = _literal_to_json(fixed[i])
        docs = pa.array(fixed, pa.string())
    table = pa.table({"row_number": np.arange(1, len(lines) + 1, dtype=np.int64), "doc": docs})
    con.register("docs", table)
    select = ", ".join(f"json_extract_string(j, ${i + 1}) AS {name}" for i, name in enumerate(fields))
    paths = ['$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"' for key in fields.values()]
    result = con.sql(
        f"""
        WITH v AS (SELECT row_number, CASE WHEN coalesce(json_valid(doc), false) THEN doc END AS j FROM docs)
        SELECT row_number, {select},
               CASE WHEN json_type(j) = 'OBJECT' THEN NULL ELSE 'unparseable' END AS reason
        FROM v ORDER BY row_number
        """,
        params=paths,
    ).to_arrow_table()
    con.close()
    reason = result.column("reason")
    if len(result) and result.column("reason").null_count == 0:
        raise ValueError(f"{path}: no line is a JSON object: not a JSON-lines file")
    bad = pc.is_valid(reason)
    events = _events(
        len(result),
        **{name: result.column(name) for name in fields},
        row_number=result.column("row_number"),
        item_pos=pa.array(np.zeros(len(result), np.int32)),
        raw=pc.if_else(bad, lines, pa.nulls(len(lines), pa.string())),
        reason=reason,
    )
    return ReadResult(events, lines, dict(fields))


def _literal_to_json(line: str) -> str:
    """A Python dict literal as JSON text, or the line unchanged when it is not one."""
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return line
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, dict) else line


AMAZON_FIELDS = {"user_id": "reviewerID", "item_id": "asin", "rating": "overall", "ts": "unixReviewTime"}


def read_amazon(path: str, column_map: dict[str, str]) -> ReadResult:
    """Amazon 2014/2018 review dumps (JSON lines, gzipped or not)."""
    _no_column_map("amazon-json", column_map)
    return _json_lines(path, AMAZON_FIELDS, literal_fallback=True)


def read_amazon_meta(path: str) -> pa.Table:
    """Amazon metadata: 2018 JSON lines or 2014 Python dict literals (ast.literal_eval, never eval)."""
    rows = []
    for i, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError:
            try:
                meta = ast.literal_eval(line)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
                raise ValueError(f"{path}:{i}: neither JSON nor a Python literal ({err})") from err
        if not isinstance(meta, dict) or not str(meta.get("asin") or "").strip():
            raise ValueError(f"{path}:{i}: metadata record without an asin")
        cats = meta.get("categories") or meta.get("category") or []  # 2014: list of lists; 2018: list
        attrs = {"brand": meta["brand"]} if meta.get("brand") else {}
        title = meta.get("title") or None
        rows.append((str(meta["asin"]).strip(), title, _jdump(_unique(_flatten(cats))), _jdump(attrs)))
    return _items(rows)


# ----------------------------------------------------------------------------- events

# Column names recognised without a column map, compared case- and separator-insensitively
# ("userId", "user_id", "User ID" are one name). Order inside a list does not matter: two columns
# that both match one canonical name are ambiguous, never silently chosen between.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id", "user", "userid", "uid", "visitorid", "visitor_id", "customer_id", "customer",
                "reviewerid", "member_id", "client_id"),
    "item_id": ("item_id", "item", "itemid", "iid", "movieid", "movie_id", "product_id", "productid", "product",
                "asin", "article_id", "sku", "track_id"),
    "ts": ("ts", "timestamp", "time", "datetime", "date_time", "event_time", "eventtime", "unixreviewtime",
           "created_at", "time_stamp", "unix_time"),
    "rating": ("rating", "score", "overall", "stars"),
    "event": ("event", "event_type", "eventtype", "action", "interaction", "behavior", "behaviour"),
}  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.strip().lower())


_ALIAS_OF = {_norm(a): canonical for canonical, names in COLUMN_ALIASES.items() for a in names}


def column_map_hint(mapping: dict[str, str]) -> str:
    """The `--column-map` value for a mapping (canonical order)."""
    return ",".join(f"{c}={mapping[c]}" for c in CANONICAL if c in mapping)


def resolve_column_map(path: str, columns: list[str], column_map: dict[str, str]) -> dict[str, str]:
    """canonical -> file column: the entries of `column_map`, the rest recognised by name (COLUMN_ALIASES).

    A missing required column (user_id, item_id, ts) or two columns matching one canonical name is
    a ValueError that lists the columns found and the `--column-map` to write.
    """
    unknown = set(column_map) - set(CANONICAL)
    if unknown:
        raise ValueError(f"column map: unknown canonical column(s) {sorted(unknown)}; known: {list(CANONICAL)}")
    mapping: dict[str, str] = {}
    for canonical, name in column_map.items():
        if name in columns:
            mapping[canonical] = name
            continue
        folded = [c for c in columns if c.strip().lower() == name.strip().lower()]
        if len(folded) != 1:
            raise ValueError(f"{path}: column(s) [{name!r}] not in the file (columns found: {columns})")
        mapping[canonical] = folded[0]
    used = set(mapping.values())
    candidates: dict[str, list[str]] = {}
    for col in columns:
        canonical = _ALIAS_OF.get(_norm(col))
        if canonical is not None and canonical not in mapping and col not in used:
            candidates.setdefault(canonical, []).append(col)
    ambiguous = {c: cols for c, cols in candidates.items() if len(cols) > 1}
    mapping.update({c: cols[0] for c, cols in candidates.items() if len(cols) == 1})
    missing = [c for c in REQUIRED if c not in mapping and c not in ambiguous]
    if ambiguous or missing:
        hint = {**mapping, **{c: cols[0] for c, cols in ambiguous.items()}, **{c: "COLUMN" for c in missing}}
        problems = [f"{c} could be any of {cols}" for c, cols in sorted(ambiguous.items())]
        if missing:
            problems.append(f"no column recognised as {missing}")
        raise ValueError(
            f"{path}: cannot map the columns: {'; '.join(problems)} (columns found: {columns}); "
            f"give --column-map {column_map_hint(hint)}"
            + (" with COLUMN replaced by the file's column" if missing else "")
            + (" (choosing the right one of the candidates)" if ambiguous else "")
        )
    return {c: mapping[c] for c in CANONICAL if c in mapping}


def _read_delimited(path: str, column_map: dict[str, str], delimiter: str) -> ReadResult:
    source = _delimited_source(path)
    header = _csv_header(path, delimiter, source)
    rejects: list[tuple[int, str]] = []
    not_utf8: list[int] = []

    def on_invalid(row) -> str:  # wrong column count: quarantine, keep going
        try:
            rejects.append((row.number, row.text))
        except UnicodeDecodeError:  # pyarrow decodes the row's text for us: not UTF-8
            not_utf8.append(row.number)
        return "skip"

    mapping = resolve_column_map(path, header, column_map)
    try:
        table = pacsv.read_csv(
            source if isinstance(source, str) else pa.BufferReader(source),
            read_options=pacsv.ReadOptions(use_threads=False),  # single thread: invalid rows get their numbers
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(dict.fromkeys(mapping.values())),
                column_types={c: pa.string() for c in mapping.values()},
            ),
        )
    except (pa.ArrowException, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: not a readable delimited file ({err})") from err
    if not_utf8:
        raise ValueError(f"{path}: not UTF-8 text (row {not_utf8[0]}); convert the file to UTF-8")
    # physical row of each accepted record: the header is row 1, rejected rows are skipped
    n_total = table.num_rows + len(rejects)
    taken = np.ones(n_total, bool)
    taken[[number - 2 for number, _ in rejects]] = False
    row_numbers = np.arange(2, n_total + 2, dtype=np.int64)[taken]
    cols = {name: table.column(src) for name, src in mapping.items()}
    blank = _all_empty(list(cols.values()), table.num_rows)  # an empty line reads as a row of empty fields
    events = _events(
        table.num_rows,
        **cols,
        row_number=pa.array(row_numbers),
        item_pos=pa.array(np.zeros(table.num_rows, np.int32)),
        reason=pc.if_else(blank, pa.scalar("unparseable"), pa.nulls(table.num_rows, pa.string())),
    )
    if rejects:
        numbers, texts = zip(*rejects)
        events = _concat(events, _rejects(list(numbers), list(texts), "unparseable"))
    return ReadResult(events, column_map=mapping)


def _delimited_source(path: str) -> str | bytes:
    """The path of a plain file, or the bytes of a gzipped one; checked to be UTF-8 text first.

    (pyarrow's invalid-row callback cannot report a row that is not UTF-8: it fails inside pyarrow
    and prints a traceback, so the encoding is checked here, in 16 MiB chunks.)"""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            f.seek(0)
            try:
                data = gzip.decompress(f.read())
            except (OSError, EOFError, zlib.error) as err:
                raise ValueError(f"{path}: broken gzip file ({err})") from err
            _check_utf8(path, [data])
            return data
        f.seek(0)
        _check_utf8(path, iter(lambda: f.read(1 << 24), b""))
    return path


def _check_utf8(path: str, chunks) -> None:
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    try:
        for chunk in chunks:
            decoder.decode(chunk)
            offset += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {offset + err.start})") from err


def _csv_header(path: str, delimiter: str, source: str | bytes | None = None) -> list[str]:
    source = _delimited_source(path) if source is None else source
    raw = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        try:
            return next(csv.reader(f, delimiter=delimiter))
        except StopIteration:
            raise ValueError(f"{path}: empty file, no header row") from None
        except (UnicodeDecodeError, csv.Error, OSError) as err:
            raise ValueError(f"{path}: not a readable delimited file ({err})") from err


def _all_empty(columns: list, n: int) -> pa.Array:
    blank = pa.array(np.ones(n, bool))
    for col in columns:
        blank = pc.and_(blank, pc.equal(pc.fill_null(col, ""), ""))
    return blank


def _read_parquet(path: str, column_map: dict[str, str]) -> ReadResult:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
    mapping = resolve_column_map(path, schema.names, column_map)
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(mapping.values())))
    except (pa.ArrowException, OSError) as err:  # truncated or corrupted pages
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
    cols = {}
    for name, src in mapping.items():
        try:
            cols[name] = pc.cast(table.column(src), pa.string())
        except pa.ArrowException as err:
            raise ValueError(f"{path}: column {src!r} ({table.column(src).type}) cannot be read as {name}") from err
    n = table.num_rows
    events = _events(n, **cols, row_number=pa.array(np.arange(1, n + 1)), item_pos=pa.array(np.zeros(n, np.int32)))
    return ReadResult(events, column_map=mapping)


def _jsonl_keys(lines: pa.Array) -> list[str]:
    """Every key of the lines that are JSON objects, in order of first appearance."""
    con = duckdb.connect()
    con.register("src", pa.table({"raw": lines, "n": np.arange(len(lines), dtype=np.int64)}))
    keys = con.sql(
        """SELECT key FROM (SELECT n, unnest(json_keys(raw)) AS key FROM src
           WHERE coalesce(json_valid(raw), false) AND json_type(raw) = 'OBJECT')
           GROUP BY key ORDER BY min(n), key"""
    ).fetchall()
    con.close()
    return [k for (k,) in keys]


def _read_events_jsonl(path: str, column_map: dict[str, str]) -> ReadResult:
    lines = split_lines(read_text(path))
    keys = _jsonl_keys(lines)
    if len(lines) and not keys:
        raise ValueError(f"{path}: no line is a JSON object: not a JSON-lines file")
    mapping = resolve_column_map(path, keys, column_map)  # a key absent from some lines reads as null there
    return _json_lines(path, mapping, literal_fallback=False, lines=lines)


EVENT_FILE_KINDS = {
    ".csv": lambda path, cmap: _read_delimited(path, cmap, ","),
    ".tsv": lambda path, cmap: _read_delimited(path, cmap, "\t"),
    ".tab": lambda path, cmap: _read_delimited(path, cmap, "\t"),
    ".parquet": _read_parquet,
    ".pq": _read_parquet,
    ".jsonl": _read_events_jsonl,
    ".ndjson": _read_events_jsonl,
    ".json": _read_events_jsonl,
}


def read_events(path: str, column_map: dict[str, str]) -> ReadResult:
    """Generic event log: CSV/TSV/Parquet/JSONL (by extension; .gz allowed for text) + column map."""
    name = path.lower().removesuffix(".gz")
    ext = os.path.splitext(name)[1]
    if ext not in EVENT_FILE_KINDS:
        raise ValueError(f"{path}: unknown event file type {ext!r}; known: {sorted(EVENT_FILE_KINDS)}")
    return EVENT_FILE_KINDS[ext](path, column_map)


def event_columns(path: str, column_map: dict[str, str]) -> dict[str, str]:
    """The column map the events reader would use for `path` (reads the header / schema / keys only)."""
    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    if ext in (".csv", ".tsv", ".tab"):
        return resolve_column_map(path, _csv_header(path, "," if ext == ".csv" else "\t"), column_map)
    if ext in (".parquet", ".pq"):
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
        return resolve_column_map(path, names, column_map)
    if ext in (".jsonl", ".ndjson", ".json"):
        return resolve_column_map(path, _jsonl_keys(split_lines(read_text(path))), column_map)
    raise ValueError(f"{path}: unknown event file type {ext!r}; known: {sorted(EVENT_FILE_KINDS)}")


def _no_column_map(fmt: str, column_map: dict[str, str]) -> None:
    if column_map:
        raise ValueError(f"--column-map applies to the events format only, not {fmt}")


READERS: dict[str, Reader] = {
    "recbole": Reader(read_recbole, "RecBole atomic .inter"),
    "seqtxt": Reader(read_seqtxt, "user item item ... per line"),
    "amazon-json": Reader(read_amazon, "Amazon 2014/2018 reviews"),
    "usermap-json": Reader(read_usermap, '{"user": [items]}'),
    "events": Reader(read_events, "CSV/TSV/Parquet/JSONL event log with a column map"),
}


# ----------------------------------------------------------------------------- item files, any format


def _starts_json_object(head: str) -> bool:
    return head.lstrip().startswith("{")


def _is_recbole_header(head: str) -> bool:
    first = head.split("\n", 1)[0].rstrip("\r")
    return all(
        f.strip().partition(":")[1] and f.strip().partition(":")[2] in RECBOLE_TYPES for f in first.split("\t")
    )


def _is_one_json_value(path: str) -> bool:
    """True when the whole file parses as one JSON value (an item map), not JSON lines."""
    try:
        json.loads(read_text(path))
    except json.JSONDecodeError:
        return False
    return True


@dataclass(frozen=True)
class ItemShape:
    sniff: Callable[[str, str], bool]  # (path, first 64 KiB of text) -> is this the shape
    read: Callable[[str], ItemRead]
    help: str


def _plain(read: Callable[[str], pa.Table], shape: str) -> Callable[[str], ItemRead]:
    return lambda path: ItemRead(read(path), shape)


# tried in order; the first whose sniff says yes reads the file
ITEM_SHAPES: dict[str, ItemShape] = {
    "recbole-item": ItemShape(lambda path, head: _is_recbole_header(head),
                              _plain(read_recbole_items, "recbole-item"), "RecBole .item, typed header"),
    "item-map": ItemShape(lambda path, head: _starts_json_object(head) and _is_one_json_value(path), read_item_map,
                          '{"item_id": {title, categories, brand, ...} | [attribute ids]}'),
    "amazon-meta": ItemShape(lambda path, head: _starts_json_object(head), _plain(read_amazon_meta, "amazon-meta"),
                             "Amazon metadata: JSON lines or 2014 dict literals"),
}  # fmt: skip


def read_item_file(path: str) -> ItemRead:
    """Any item file, with any sequence format: the shape is recognised from the content."""
    head = read_text(path)[: 1 << 16]
    for shape in ITEM_SHAPES.values():
        if shape.sniff(path, head):
            return shape.read(path)
    raise ValueError(
        f"{path}: not an item file of a known shape (first line {head.splitlines()[0][:80] if head else ''!r}); "
        f"known: " + "; ".join(f"{name}: {s.help}" for name, s in ITEM_SHAPES.items())
    )
