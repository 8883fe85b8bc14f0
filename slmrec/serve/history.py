"""Users' histories from the DuckDB store (`raw_interactions`), so days ingested after training count.

    store = HistoryStore("data/warehouse.duckdb", SequenceConfig(...))   # the splits' filters
    store.get("196")        # -> ["242", "302", ...] original item ids, oldest first, or None (unknown user)

Order and filters are those of the splits (slmrec/data/sequences.py): the filters registered in
FILTERS (min_rating, event_types) with the splits' own SequenceConfig, then per user by
(ts, source_file, row_number, item_pos) — the same tie-break, so a user's history is the sequence
the model was trained on, followed by what arrived since.

Opening DuckDB costs ~50 ms and a long-lived connection would block the ingestion's writer, so the
store reads the whole table into memory (a few MB for ML-100K) with one short read-only
connection and reads it again when the file changes (`refresh_if_changed`: inode, size, mtime of
the file and its WAL). A refresh builds a new snapshot and swaps it in with one assignment:
readers see the old or the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from slmrec.config import SequenceConfig
from slmrec.data.sequences import FILTERS

HISTORY_QUERY = """SELECT user_id, item_id, ts, rating, event FROM raw_interactions
                   ORDER BY user_id, ts, source_file, row_number, item_pos"""


class StoreBusy(RuntimeError):
    """The DuckDB file is locked by a writer (an ingestion) for longer than we wait."""


def connect_read_only(db: str | Path, attempts: int = 20, wait_s: float = 0.1) -> duckdb.DuckDBPyConnection:
    """A read-only connection; retries while another process holds the write lock, then StoreBusy."""
    for attempt in range(attempts):
        try:
            return duckdb.connect(str(db), read_only=True)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if attempt == attempts - 1:
                raise StoreBusy(f"{db}: locked by a writer for {attempts * wait_s:.1f} s: {err}") from err
            time.sleep(wait_s)
    raise AssertionError("unreachable")


def _fingerprint(db: Path) -> tuple:
    out = []
    for path in (db, db.with_name(db.name + ".wal")):
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


@dataclass(frozen=True)
class _Snapshot:
    users: dict[str, int]  # user_id -> row in offsets
    offsets: np.ndarray  # (U + 1,) start of each user's rows in items
    items: list[str]  # (N,) original item ids, per user oldest first
    fingerprint: tuple
    rows: int
    loaded_at: float


def filter_rows(table: pa.Table, cfg: SequenceConfig) -> pa.Table:
    """The splits' row filters (FILTERS with the splits' SequenceConfig); k-core does not apply per user."""
    keep = np.ones(table.num_rows, bool)
    for fn in FILTERS.values():
        mask = fn(table, cfg)
        if mask is not None:
            keep &= mask
    return table if keep.all() else table.filter(pa.array(keep))


def _load(db: Path, cfg: SequenceConfig) -> _Snapshot:
    fingerprint = _fingerprint(db)
    with connect_read_only(db) as con:
        table = con.sql(HISTORY_QUERY).to_arrow_table()
    table = filter_rows(table, cfg)
    users = np.asarray(table["user_id"].to_pylist(), dtype=object)  # (N,) sorted by user
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    offsets = np.r_[starts, len(users)].astype(np.int64)
    return _Snapshot(
        users={str(users[s]): i for i, s in enumerate(starts)},
        offsets=offsets,
        items=table["item_id"].to_pylist(),
        fingerprint=fingerprint,
        rows=table.num_rows,
        loaded_at=time.time(),
    )


class HistoryStore:
    def __init__(self, db: str | Path, cfg: SequenceConfig):
        self.db, self.cfg = Path(db), cfg
        if not self.db.is_file():
            raise FileNotFoundError(f"DuckDB store {self.db} not found")
        self._snap = _load(self.db, cfg)

    @property
    def n_users(self) -> int:
        return len(self._snap.users)

    @property
    def rows(self) -> int:
        return self._snap.rows

    def get(self, user_id: str) -> list[str] | None:
        """The user's history (original item ids, oldest first); None when the store has no such user."""
        snap = self._snap  # one read: a concurrent refresh cannot mix two snapshots
        row = snap.users.get(str(user_id))
        if row is None:
            return None
        return snap.items[snap.offsets[row] : snap.offsets[row + 1]]

    def user_ids(self) -> list[str]:
        return list(self._snap.users)

    def refresh_if_changed(self) -> bool:
        """Re-read the table when the file changed since the last read; True when a new snapshot is in."""
        if _fingerprint(self.db) == self._snap.fingerprint:
            return False
        self._snap = _load(self.db, self.cfg)
        return True


def day_bounds(day: str) -> tuple[int, int]:
    """'YYYY-MM-DD' -> [start, end) in unix seconds, UTC (the ingest stores ts as UTC unix seconds)."""
    try:
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError as err:
        raise ValueError(f"day must be YYYY-MM-DD, got {day!r}") from err
    return int(start.timestamp()), int((start + dt.timedelta(days=1)).timestamp())


def active_users(db: str | Path, day: str) -> list[str]:
    """Users with at least one interaction on `day` (UTC), in id order."""
    start, end = day_bounds(day)
    with connect_read_only(db) as con:
        rows = con.execute(
            "SELECT DISTINCT user_id FROM raw_interactions WHERE ts >= ? AND ts < ? ORDER BY user_id", [start, end]
        ).fetchall()
    return [r[0] for r in rows]

