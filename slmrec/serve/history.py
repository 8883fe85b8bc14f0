"""Users' histories from the DuckDB store (`raw_interactions`), so days ingested after training count.

    store = HistoryStore("data/warehouse.duckdb", SequenceConfig(...))   # the splits' filters
    store.get("196")        # -> ["242", "302", ...] original item ids, oldest first, or None (unknown user)

Order and filters are those of the splits (slmrec/data/sequences.py): the filters registered in
FILTERS (min_rating, event_types) with the splits' own SequenceConfig, then per user by
(ts, source_file, row_number, item_pos) — the same tie-break, so a user's history is the sequence
the model was trained on, followed by what arrived since.

Opening DuckDB costs ~50 ms and a long-lived connection would block the ingestion's writer, so the
store reads the table into memory with one short read-only connection, compactly: item ids as int32
codes into one vocabulary (one string per distinct item), one int64 offset per user (Amazon Beauty,
198k interactions: a few MB, not one Python string per interaction). When the file changes
(`refresh_if_changed`: inode, size, mtime of the file and its WAL) it reads only what is new: the
users touched by ingest batches it has not seen (`batch_id`) get their whole history re-read into an
overlay; a batch that vanished or changed, or an overlay past a quarter of the users, means a full
re-read. A refresh builds a new snapshot and swaps it in with one assignment: readers see the old or
the new one, never a mix.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from slmrec.config import SequenceConfig
from slmrec.data.sequences import FILTERS
from slmrec.days import day_bounds

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
    users: dict[str, int]  # user_id -> row in offsets (the base)
    offsets: np.ndarray  # (U + 1,) int64: start of each base user's codes
    codes: np.ndarray  # (N,) int32: item codes, per user oldest first
    ts: np.ndarray  # (N,) int64: their timestamps (UTC seconds): point-in-time histories
    names: list[str]  # code -> original item id
    overlay: dict[str, tuple[np.ndarray, np.ndarray]]  # users re-read since the base (new ones too): (codes, ts)
    batches: dict[str, int]  # ingest batch_id -> rows: what this snapshot has read
    fingerprint: tuple
    rows: int
    loaded_at: float

    def n_users(self) -> int:
        return len(self.users) + sum(1 for u in self.overlay if u not in self.users)


def filter_rows(table: pa.Table, cfg: SequenceConfig) -> pa.Table:
    """The splits' row filters (FILTERS with the splits' SequenceConfig); k-core does not apply per user."""
    keep = np.ones(table.num_rows, bool)
    for fn in FILTERS.values():
        mask = fn(table, cfg)
        if mask is not None:
            keep &= mask
    return table if keep.all() else table.filter(pa.array(keep))


def _dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """A string column as (indices, distinct values); an empty column too (it may have no chunk)."""
    return (column.combine_chunks() if column.num_chunks else pa.array([], pa.string())).dictionary_encode()


def _encode(items: pa.ChunkedArray, names: list[str], code_of: dict[str, int]) -> np.ndarray:
    """Item ids -> int32 codes, extending (names, code_of) with ids not seen before."""
    encoded = _dictionary(items)
    local = encoded.dictionary.to_pylist()
    remap = np.empty(len(local), np.int32)
    for n, item in enumerate(local):
        code = code_of.get(item)
        if code is None:
            code = code_of[item] = len(names)
            names.append(item)
        remap[n] = code
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    return remap[indices] if len(indices) else np.zeros(0, np.int32)


def _group(users: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Rows sorted by user -> (distinct users in order, (U + 1,) offsets)."""
    encoded = _dictionary(users)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, indices[1:] != indices[:-1]]) if len(indices) else np.zeros(0, np.int64)
    names = encoded.dictionary.to_pylist()
    return [names[indices[s]] for s in starts], np.r_[starts, len(indices)].astype(np.int64)


def _batches(con) -> dict[str, int]:
    return dict(con.execute("SELECT batch_id, count(*) FROM raw_interactions GROUP BY batch_id").fetchall())


def _load(db: Path, cfg: SequenceConfig) -> _Snapshot:
    fingerprint = _fingerprint(db)
    with connect_read_only(db) as con:
        batches = _batches(con)
        table = filter_rows(con.sql(HISTORY_QUERY).to_arrow_table(), cfg)
    names: list[str] = []
    codes = _encode(table["item_id"], names, {})
    users, offsets = _group(table["user_id"])
    ts = table["ts"].to_numpy().astype(np.int64) if table.num_rows else np.zeros(0, np.int64)
    return _Snapshot(users={str(u): i for i, u in enumerate(users)}, offsets=offsets, codes=codes, ts=ts, names=names,
                     overlay={}, batches=batches, fingerprint=fingerprint, rows=table.num_rows, loaded_at=time.time())


def _update(snap: _Snapshot, db: Path, cfg: SequenceConfig) -> _Snapshot:
    """The snapshot plus the users touched by new ingest batches; a full re-read when that is not sound."""
    fingerprint = _fingerprint(db)
    with connect_read_only(db) as con:
        batches = _batches(con)
        if any(batches.get(b) != n for b, n in snap.batches.items()):  # a batch vanished or changed: rebuilt store
            return _load(db, cfg)
        new = sorted(set(batches) - set(snap.batches))
        if not new:
            return dataclasses.replace(snap, fingerprint=fingerprint)
        query = HISTORY_QUERY.replace("ORDER BY", "WHERE user_id IN (SELECT DISTINCT user_id FROM raw_interactions "
                                                  "WHERE batch_id IN (SELECT unnest(?::VARCHAR[]))) ORDER BY")
        table = filter_rows(con.sql(query, params=[new]).to_arrow_table(), cfg)
    names, code_of = list(snap.names), {name: code for code, name in enumerate(snap.names)}
    codes = _encode(table["item_id"], names, code_of)
    users, offsets = _group(table["user_id"])
    ts = table["ts"].to_numpy().astype(np.int64) if table.num_rows else np.zeros(0, np.int64)
    overlay = dict(snap.overlay)
    for n, user in enumerate(users):
        overlay[str(user)] = (codes[offsets[n]: offsets[n + 1]].copy(), ts[offsets[n]: offsets[n + 1]].copy())
    if len(overlay) > max(1000, len(snap.users) // 4):  # many users changed: one compact base again
        return _load(db, cfg)
    base_rows = {u for u in overlay if u in snap.users}
    rows = (int(snap.offsets[-1]) - sum(int(snap.offsets[snap.users[u] + 1] - snap.offsets[snap.users[u]])
                                         for u in base_rows) + sum(len(c) for c, _ in overlay.values()))
    return dataclasses.replace(snap, names=names, overlay=overlay, batches=batches, fingerprint=fingerprint,
                               rows=rows, loaded_at=time.time())


class HistoryStore:
    def __init__(self, db: str | Path, cfg: SequenceConfig):
        self.db, self.cfg = Path(db), cfg
        if not self.db.is_file():
            raise FileNotFoundError(f"DuckDB store {self.db} not found")
        self._snap = _load(self.db, cfg)
        self.full_reads, self.incremental_reads = 1, 0

    @property
    def n_users(self) -> int:
        return self._snap.n_users()

    @property
    def rows(self) -> int:
        return self._snap.rows

    def get(self, user_id: str, as_of: int | None = None) -> list[str] | None:
        """The user's history (original item ids, oldest first); None when the store has no such user.

        as_of (UTC seconds): only the interactions before it (point in time: a backfill of day D sees the
        history as of the end of D, not the days after it). A user whose first interaction is later has an
        empty history ([]), not None: the store knows the user."""
        snap = self._snap  # one read: a concurrent refresh cannot mix two snapshots
        user = str(user_id)
        found = snap.overlay.get(user)
        if found is None:
            row = snap.users.get(user)
            if row is None:
                return None
            found = (snap.codes[snap.offsets[row] : snap.offsets[row + 1]], snap.ts[snap.offsets[row] : snap.offsets[row + 1]])
        codes, ts = found
        if as_of is not None:
            codes = codes[ts < as_of]  # ts ascending per user, but a mask needs no assumption
        names = snap.names
        return [names[c] for c in codes.tolist()]

    def user_ids(self) -> list[str]:
        snap = self._snap
        return list(snap.users) + [u for u in snap.overlay if u not in snap.users]

    def refresh_if_changed(self) -> bool:
        """Read what changed since the last read when the file changed; True when a new snapshot is in."""
        snap = self._snap
        if _fingerprint(self.db) == snap.fingerprint:
            return False
        new = _update(snap, self.db, self.cfg)
        if new.overlay is not snap.overlay and new.offsets is snap.offsets:
            self.incremental_reads += 1
        elif new.offsets is not snap.offsets:
            self.full_reads += 1
        self._snap = new
        return True


def active_users(db: str | Path, day: str) -> list[str]:
    """Users with at least one interaction on `day` (UTC), in id order."""
    start, end = day_bounds(day)
    with connect_read_only(db) as con:
        rows = con.execute(
            "SELECT DISTINCT user_id FROM raw_interactions WHERE ts >= ? AND ts < ? ORDER BY user_id", [start, end]
        ).fetchall()
    return [r[0] for r in rows]

