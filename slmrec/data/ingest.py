"""Ingest one file (a batch) into the DuckDB store, and export a deterministic Parquet snapshot.

    report = ingest("recbole", "data/raw/ml-100k/ml-100k.inter", "data/warehouse.duckdb",
                    items="data/raw/ml-100k/ml-100k.item")
    export_snapshot("data/warehouse.duckdb", "data/interactions")

The reader (slmrec/data/readers.py) turns the file into candidate rows; the checks here are
the same for every format and run as SQL inside the batch's one transaction. Each row gets
the first reason that applies, in this order:

    unparseable (set by the reader) > missing_user > missing_item > bad_timestamp
      > bad_rating > duplicate_event (same user, item, ts earlier in the batch or already stored)

Timestamps: numeric text is a unix time whose unit is decided once per batch from the median
of its numeric values: seconds (median <= 1e11), milliseconds (<= 1e14, e.g. RetailRocket),
microseconds (<= 1e17) or nanoseconds; fractions are floored to whole seconds. A value whose own
magnitude says another unit than its batch's (a seconds value in a milliseconds log) is
`bad_timestamp`, never silently moved to 1970. Other text is parsed as an ISO-8601 date-time or
date (UTC when it has no offset). Valid range: 1970-01-01 .. 2100-01-01.
A rating may be absent; when present it must be a finite number.

`rows_read` counts candidate rows: events, plus lines that could not be split (for seqtxt and
usermap-json one line holds many events). Always `accepted + quarantined == rows_read`.

Ingesting a batch that is already stored (same format, file bytes, item-file bytes and column
map) writes nothing: its report says `already_ingested: true` with rows_read = accepted =
quarantined = 0, and the counts recorded when the batch was first stored under `original_batch`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import dataclasses
from dataclasses import asdict, dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slmrec.data.readers import AMAZON_FIELDS, ITEM_REASONS, READERS, ItemRead, ReadResult, event_columns, read_item_file
from slmrec.hashing import sha256_file
from slmrec.lineage import atomic_write

MAX_TS = 4102444800  # 2100-01-01T00:00:00Z: later timestamps are absurd
MS_THRESHOLD = 1e11  # a median above this is milliseconds (1e11 s is the year 5138)
REASONS = ("unparseable", "missing_user", "missing_item", "bad_timestamp", "bad_rating", "duplicate_event")

TABLES: dict[str, list[tuple[str, str]]] = {
    "raw_interactions": [
        ("user_id", "VARCHAR NOT NULL"), ("item_id", "VARCHAR NOT NULL"), ("ts", "BIGINT NOT NULL"),
        ("rating", "DOUBLE"), ("event", "VARCHAR"), ("source_file", "VARCHAR NOT NULL"),
        ("row_number", "BIGINT NOT NULL"), ("item_pos", "INTEGER NOT NULL"), ("batch_id", "VARCHAR NOT NULL"),
    ],
    "quarantine": [
        ("batch_id", "VARCHAR NOT NULL"), ("source_file", "VARCHAR NOT NULL"), ("row_number", "BIGINT NOT NULL"),
        ("raw", "VARCHAR"), ("reason", "VARCHAR NOT NULL"),
        ("item_pos", "INTEGER NOT NULL"),  # which event of a multi-event line (seqtxt, usermap-json)
    ],
    "ingest_batches": [
        ("batch_id", "VARCHAR PRIMARY KEY"), ("format", "VARCHAR NOT NULL"), ("source_file", "VARCHAR NOT NULL"),
        ("sha256", "VARCHAR NOT NULL"), ("rows_read", "BIGINT NOT NULL"), ("accepted", "BIGINT NOT NULL"),
        ("quarantined", "BIGINT NOT NULL"), ("ingested_at", "TIMESTAMPTZ NOT NULL"),
        ("items_file", "VARCHAR"), ("catalog_items", "BIGINT NOT NULL"),  # so a re-ingest reports its catalog
    ],
    "items": [
        ("item_id", "VARCHAR NOT NULL"), ("title", "VARCHAR"), ("categories", "VARCHAR"),
        ("attributes", "VARCHAR"), ("source_file", "VARCHAR NOT NULL"),
    ],
    "item_quarantine": [  # item-file records that could not be used, with the reason (ITEM_REASONS)
        ("batch_id", "VARCHAR NOT NULL"), ("source_file", "VARCHAR NOT NULL"), ("record_number", "BIGINT NOT NULL"),
        ("item_id", "VARCHAR"), ("raw", "VARCHAR"), ("reason", "VARCHAR NOT NULL"),
    ],
}  # fmt: skip


@dataclass
class IngestReport:
    """What one `ingest` call did. On a re-ingest the counts are those recorded for the batch."""

    format: str
    source_file: str
    db: str
    batch_id: str
    already_ingested: bool
    rows_read: int
    accepted: int
    quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    users: int = 0  # distinct users in this batch's accepted rows
    items: int = 0  # distinct items in this batch's accepted rows
    catalog_items: int = 0  # rows written to `items` from the item file
    catalog_duplicates: int = 0  # item-file records skipped: their id appeared earlier in the file
    catalog_quarantined: int = 0  # item-file records quarantined (table item_quarantine)
    catalog_quarantine_reasons: dict[str, int] = field(default_factory=dict)
    catalog_shape: str | None = None  # which item-file shape was recognised (readers.ITEM_SHAPES)
    column_map: dict[str, str] = field(default_factory=dict)  # canonical -> source column the reader used
    original_batch: dict | None = None  # already_ingested: the counts recorded when the batch was stored

    def to_dict(self) -> dict:
        return asdict(self)



def make_batch_id(fmt: str, file_sha: str, items_sha: str | None, column_map: dict[str, str]) -> str:
    """sha256 over format, file bytes, item-file bytes and column map (sorted), first 16 hex digits."""
    key = json.dumps([fmt, file_sha, items_sha, sorted(column_map.items())])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


LOCK_TIMEOUT_S = 60.0  # how long an ingest waits for another process's hold on the store


class StoreLockedError(OSError):
    """The DuckDB store stayed locked by another process (DuckDB allows one writing process)."""


def connect_store(db: str, read_only: bool = False, timeout: float = LOCK_TIMEOUT_S) -> duckdb.DuckDBPyConnection:
    """duckdb.connect that waits while another process holds the file's lock, then fails clearly."""
    deadline, pause = time.monotonic() + timeout, 0.05
    while True:
        try:
            return duckdb.connect(db, read_only=read_only)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"{db}: the store is locked by another process (another ingest, a rebuild or an open "
                    f"reader); waited {timeout:g} s. Run again when it has finished. ({str(err).splitlines()[0]})"
                ) from err
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)


def ingest(
    fmt: str,
    path: str,
    db: str,
    items: str | None = None,
    column_map: dict | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> IngestReport:
    """Read `path` with reader `fmt` and store it as one batch in DuckDB `db` (one transaction).

    Two ingests into one store: the second waits up to `lock_timeout` seconds for the first to
    finish, then raises StoreLockedError; either way the store holds whole batches only."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(READERS)}")
    reader, column_map = READERS[fmt], dict(column_map or {})
    file_sha = sha256_file(path)  # FileNotFoundError names the path
    batch_id = make_batch_id(fmt, file_sha, sha256_file(items) if items else None, column_map)
    batch = Batch(fmt, path, items, file_sha, batch_id, db, given_map=tuple(sorted(column_map.items())))

    if os.path.exists(db):  # cheap check before parsing a big file again
        with connect_store(db, read_only=True, timeout=lock_timeout) as con:
            if _has_batch(con, batch_id):
                return _recorded_report(con, batch)

    read = reader.read(path, column_map)  # everything is parsed before the store is touched
    catalog = read_item_file(items) if items else None  # any item-file shape with any format
    batch = dataclasses.replace(batch, column_map=read.column_map)

    if not os.path.exists(db):  # a new store appears whole (tables and first batch) or not at all
        folder, name = os.path.split(os.path.abspath(db))
        tmp = os.path.join(folder, f".{name}.new-{uuid.uuid4().hex[:8]}")
        try:
            report = _store_batch(tmp, batch, read, catalog, lock_timeout, checkpoint=True)
            if os.path.exists(tmp + ".wal"):
                raise RuntimeError(f"{tmp}: DuckDB left a WAL after CHECKPOINT; the new store would be incomplete")
            os.link(tmp, db)  # atomic create-if-absent: FileExistsError when another ingest made it first
            return report
        except FileExistsError:
            pass  # the store appeared meanwhile: add the batch to it below
        finally:
            for leftover in (tmp, tmp + ".wal"):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return _store_batch(db, batch, read, catalog, lock_timeout)


def _store_batch(
    target: str, batch: "Batch", read: ReadResult, catalog, lock_timeout: float, checkpoint: bool = False
) -> IngestReport:
    """Write one batch into the store file `target` in one transaction (or find it already there).

    checkpoint: fold the WAL into the file before closing (a new store is then one self-contained file)."""
    with connect_store(target, timeout=lock_timeout) as con:
        _run(con, "SET TimeZone = 'UTC'")
        con.begin()
        try:
            _create_missing_tables(con)
            if _has_batch(con, batch.batch_id):  # another process got there first
                con.rollback()
                return _recorded_report(con, batch)
            report = _write_batch(con, batch, read, catalog)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        if checkpoint:
            _run(con, "CHECKPOINT")
    return report


@dataclass(frozen=True)
class Batch:
    fmt: str
    path: str
    items: str | None
    sha256: str
    batch_id: str
    db: str
    column_map: dict | None = None  # what the reader used (None: not read yet)
    given_map: tuple = ()  # the column map the caller gave, as sorted items

    @property
    def source(self) -> str:  # file name only: the snapshot must not depend on where the file sat
        return os.path.basename(self.path)


def _run(con: duckdb.DuckDBPyConnection, query: str, params=None) -> None:
    """Execute a statement whose result is not read."""
    con.execute(query, params if params is not None else []).complete()


def _all(con: duckdb.DuckDBPyConnection, query: str, params=None) -> list[tuple]:
    return con.execute(query, params if params is not None else []).fetchall()


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in _all(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")}


def _create_missing_tables(con: duckdb.DuckDBPyConnection) -> None:
    """A new store gets the tables; an existing one must have exactly these columns."""
    existing = _tables(con)
    for name, columns in TABLES.items():
        want = [c for c, _ in columns]
        if name not in existing:
            _run(con, f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in columns)})")
            continue
        query = "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index"
        have = [r[0] for r in _all(con, query, [name])]
        if have != want:
            raise ValueError(f"table {name} has columns {have}, expected {want}: an incompatible store")


def _has_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> bool:
    if "ingest_batches" not in _tables(con):
        return False
    return _all(con, "SELECT count(*) FROM ingest_batches WHERE batch_id = ?", [batch_id])[0][0] > 0


CHECK_SQL = """
CREATE TEMP TABLE _checked AS
WITH parsed AS (
    SELECT *,
        NULLIF(trim(user_id), '') AS uid,
        NULLIF(trim(item_id), '') AS iid,
        TRY_CAST(ts AS DOUBLE) AS ts_num,
        NULLIF(trim(rating), '') AS rating_text,
        TRY_CAST(rating AS DOUBLE) AS rating_num,
        NULLIF(trim(event), '') AS ev
    FROM _candidates
), unit AS (  -- one unit per batch, from the median magnitude of its numeric timestamps
    SELECT CASE WHEN m IS NULL OR m <= $ms THEN 1 WHEN m <= 1e14 THEN 1000 WHEN m <= 1e17 THEN 1000000
                ELSE 1000000000 END AS div
    FROM (SELECT median(abs(ts_num)) FILTER (WHERE abs(ts_num) <= $max_ts * 1e9) AS m FROM parsed)  -- plausible values
), timed AS (
    SELECT parsed.*,
        CASE WHEN ts_num IS NOT NULL THEN
                 CASE WHEN isfinite(ts_num) AND (CASE WHEN abs(ts_num) <= $ms THEN 1 WHEN abs(ts_num) <= 1e14 THEN 1000
                                                      WHEN abs(ts_num) <= 1e17 THEN 1000000 ELSE 1000000000 END)
                                                = unit.div
                      THEN floor(ts_num / unit.div) END  -- NULL: not finite, or another unit than the batch's
             ELSE epoch(TRY_CAST(trim(ts) AS TIMESTAMPTZ)) END AS ts_s
    FROM parsed, unit
)
SELECT seq, uid, iid, rating_num, ev, row_number, item_pos,
    CASE WHEN ts_s BETWEEN 0 AND $max_ts THEN CAST(ts_s AS BIGINT) END AS ts_s,
    coalesce(reason,
        CASE WHEN uid IS NULL THEN 'missing_user'
             WHEN iid IS NULL THEN 'missing_item'
             WHEN ts_s IS NULL OR ts_s < 0 OR ts_s > $max_ts THEN 'bad_timestamp'
             WHEN rating_text IS NOT NULL AND (rating_num IS NULL OR NOT isfinite(rating_num)) THEN 'bad_rating'
        END) AS reason
FROM timed
"""

# the first occurrence wins (readers emit rows in file order, so: the smallest seq); then anything already stored
DUPLICATES_IN_BATCH = """
UPDATE _checked SET reason = 'duplicate_event' FROM (
    SELECT uid, iid, ts_s, min(seq) AS first FROM _checked WHERE reason IS NULL
    GROUP BY uid, iid, ts_s HAVING count(*) > 1
) AS d
WHERE _checked.reason IS NULL AND _checked.uid = d.uid AND _checked.iid = d.iid AND _checked.ts_s = d.ts_s
  AND _checked.seq > d.first
"""
DUPLICATES_IN_STORE = """
UPDATE _checked SET reason = 'duplicate_event' FROM raw_interactions r
WHERE _checked.reason IS NULL AND r.user_id = _checked.uid AND r.item_id = _checked.iid AND r.ts = _checked.ts_s
"""
INSERT_ACCEPTED = """
INSERT INTO raw_interactions
SELECT uid, iid, ts_s, rating_num, ev, $source, row_number, item_pos, $batch
FROM _checked WHERE reason IS NULL  -- file order: _checked keeps the reader's order
"""
INSERT_QUARANTINED = """
INSERT INTO quarantine
SELECT $batch, $source, c.row_number,
       coalesce(r.raw, l.raw, CAST(json_object('user_id', r.user_id, 'item_id', r.item_id, 'ts', r.ts,
                                               'rating', r.rating, 'event', r.event) AS VARCHAR)),
       c.reason, c.item_pos
FROM _checked c JOIN _candidates r ON r.seq = c.seq LEFT JOIN _lines l ON l.row_number = c.row_number
WHERE c.reason IS NOT NULL ORDER BY c.row_number, c.item_pos
"""


def _write_batch(con, batch: Batch, read: ReadResult, catalog: ItemRead | None) -> IngestReport:
    rows_read = read.events.num_rows
    con.register("_candidates", read.events.append_column("seq", pa.array(np.arange(rows_read, dtype=np.int64))))
    _run(con, CHECK_SQL, {"ms": MS_THRESHOLD, "max_ts": MAX_TS})
    _run(con, DUPLICATES_IN_BATCH)
    _run(con, DUPLICATES_IN_STORE)

    names = {"source": batch.source, "batch": batch.batch_id}
    accepted = _all(con, INSERT_ACCEPTED, names)[0][0]
    lines = read.lines if read.lines is not None else pa.array([], pa.string())  # no lines: raw rebuilt from fields
    con.register("_lines", pa.table({"row_number": np.arange(1, len(lines) + 1, dtype=np.int64), "raw": lines}))
    quarantined = _all(con, INSERT_QUARANTINED, names)[0][0]
    con.unregister("_lines")
    con.unregister("_candidates")

    catalog_items, catalog_duplicates = _write_items(con, catalog.items, batch.items) if catalog is not None else (0, 0)
    item_reasons = _write_item_rejects(con, catalog, batch) if catalog is not None else {}

    users, n_items = _all(con, "SELECT count(DISTINCT uid), count(DISTINCT iid) FROM _checked WHERE reason IS NULL")[0]
    query = "SELECT reason, count(*) FROM _checked WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason"
    reasons = dict(_all(con, query))
    _run(con, "DROP TABLE _checked")
    if accepted + quarantined != rows_read or quarantined != sum(reasons.values()):  # nothing lost, nothing doubled
        raise RuntimeError(f"{batch.path}: accepted {accepted} + quarantined {quarantined} != rows read {rows_read}")
    if rows_read and reasons.get("unparseable", 0) == rows_read:
        raise ValueError(f"{batch.path}: no row could be parsed as {batch.fmt}: wrong format?")
    _run(
        con,
        "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, now(), ?, ?)",
        [batch.batch_id, batch.fmt, batch.path, batch.sha256, rows_read, accepted, quarantined, batch.items,
         catalog_items],
    )  # fmt: skip
    return IngestReport(
        format=batch.fmt, source_file=batch.source, db=batch.db, batch_id=batch.batch_id, already_ingested=False,
        rows_read=rows_read, accepted=accepted, quarantined=quarantined, quarantine_reasons=reasons,
        users=users, items=n_items, catalog_items=catalog_items, catalog_duplicates=catalog_duplicates,
        catalog_quarantined=sum(item_reasons.values()), catalog_quarantine_reasons=item_reasons,
        catalog_shape=catalog.shape if catalog is not None else None, column_map=dict(batch.column_map or {}),
    )  # fmt: skip


def _write_item_rejects(con, catalog: ItemRead, batch: Batch) -> dict[str, int]:
    """Quarantine the item-file records the reader could not use; counts by reason."""
    reasons: dict[str, int] = {}
    for number, item_id, raw, reason in catalog.rejects:
        if reason not in ITEM_REASONS:
            raise ValueError(f"{batch.items}: item reader gave an unknown reason {reason!r}")
        _run(con, "INSERT INTO item_quarantine VALUES (?, ?, ?, ?, ?, ?)",
             [batch.batch_id, os.path.basename(batch.items), number, item_id, raw, reason])  # fmt: skip
        reasons[reason] = reasons.get(reason, 0) + 1
    return dict(sorted(reasons.items()))


def _write_items(con, catalog: pa.Table, items_path: str) -> tuple[int, int]:
    """Upsert the catalog: the first record of an id in the file wins; stored rows with its ids are replaced."""
    con.register("_catalog", catalog.append_column("seq", pa.array(np.arange(catalog.num_rows, dtype=np.int64))))
    empty = _all(con, "SELECT min(seq) FROM _catalog WHERE NULLIF(trim(item_id), '') IS NULL")[0][0]
    if empty is not None:
        raise ValueError(f"{items_path}: item record {empty + 1} has an empty item id")
    _run(
        con,
        """
        CREATE TEMP TABLE _new_items AS
        SELECT trim(item_id) AS item_id, title, categories, attributes, $source AS source_file FROM _catalog
        QUALIFY row_number() OVER (PARTITION BY trim(item_id) ORDER BY seq) = 1 ORDER BY seq
        """,
        {"source": os.path.basename(items_path)},
    )
    con.unregister("_catalog")
    n = _all(con, "SELECT count(*) FROM _new_items")[0][0]
    _run(con, "DELETE FROM items WHERE item_id IN (SELECT item_id FROM _new_items)")
    _run(con, "INSERT INTO items SELECT * FROM _new_items")
    _run(con, "DROP TABLE _new_items")
    return n, catalog.num_rows - n


def _recorded_report(con, batch: Batch) -> IngestReport:
    """The report of a batch that is already stored: nothing written now, the stored counts aside."""
    query = """SELECT rows_read, accepted, quarantined, catalog_items, source_file, CAST(ingested_at AS VARCHAR)
               FROM ingest_batches WHERE batch_id = ?"""
    rows_read, accepted, quarantined, catalog_items, source_file, ingested_at = _all(con, query, [batch.batch_id])[0]
    query = "SELECT count(DISTINCT user_id), count(DISTINCT item_id) FROM raw_interactions WHERE batch_id = ?"
    users, n_items = _all(con, query, [batch.batch_id])[0]
    query = "SELECT reason, count(*) FROM quarantine WHERE batch_id = ? GROUP BY reason ORDER BY reason"
    reasons = dict(_all(con, query, [batch.batch_id]))
    query = "SELECT reason, count(*) FROM item_quarantine WHERE batch_id = ? GROUP BY reason ORDER BY reason"
    item_reasons = dict(_all(con, query, [batch.batch_id])) if "item_quarantine" in _tables(con) else {}
    original = {
        "source_file": source_file, "ingested_at": ingested_at, "rows_read": rows_read, "accepted": accepted,
        "quarantined": quarantined, "quarantine_reasons": reasons, "users": users, "items": n_items,
        "catalog_items": catalog_items, "catalog_quarantined": sum(item_reasons.values()),
        "catalog_quarantine_reasons": item_reasons,
    }  # fmt: skip
    return IngestReport(
        format=batch.fmt, source_file=batch.source, db=batch.db, batch_id=batch.batch_id, already_ingested=True,
        rows_read=0, accepted=0, quarantined=0, quarantine_reasons={}, users=0, items=0, catalog_items=0,
        column_map=_column_map_of(batch), original_batch=original,
    )  # fmt: skip


def _column_map_of(batch: Batch) -> dict[str, str]:
    """The column map the reader uses for this batch's file, without reading its rows (for a re-ingest)."""
    if batch.column_map is not None:
        return dict(batch.column_map)
    if batch.fmt == "events":
        return event_columns(batch.path, dict(batch.given_map))
    if batch.fmt == "amazon-json":
        return dict(AMAZON_FIELDS)
    return {}


# ----------------------------------------------------------------------------- snapshot

SNAPSHOT_QUERIES = {  # total orders, and no column that changes from run to run (ingested_at)
    "interactions": """SELECT user_id, item_id, ts, rating, event, source_file, row_number, item_pos, batch_id
                       FROM raw_interactions ORDER BY user_id, ts, source_file, row_number, item_pos, batch_id""",
    "items": "SELECT item_id, title, categories, attributes, source_file FROM items ORDER BY item_id, source_file",
    "quarantine": """SELECT batch_id, source_file, row_number, item_pos, reason, raw FROM quarantine
                     ORDER BY source_file, row_number, item_pos, batch_id, reason""",
}


def export_snapshot(db: str, out_dir: str) -> dict:
    """Write interactions/items/quarantine.parquet (atomically); same store content -> same bytes."""
    if not os.path.exists(db):
        raise FileNotFoundError(f"{db}: no such DuckDB store (run ingest first)")
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    with duckdb.connect(db, read_only=True) as con:
        for name, query in SNAPSHOT_QUERIES.items():
            table = con.sql(query).to_arrow_table().combine_chunks()
            path = os.path.join(out_dir, f"{name}.parquet")
            _write_parquet_atomic(table, path)
            out[name] = {"path": path, "rows": table.num_rows, "sha256": sha256_file(path)}
    return out


def _write_parquet_atomic(table: pa.Table, path: str) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20))
