"""Interactions -> per-user chronological sequences -> leave-one-out splits (`slmrec sequences`).

    stats = build_splits("data/interactions", SequenceConfig())   # writes cfg.out_dir atomically
    splits = load_splits("data/splits")                             # Python lists for the models

The steps, all vectorised over integer codes (linear in rows, apart from two sorts):
1. filters (registered in FILTERS: min_rating, event_types), each counted in the stats;
2. iterative k-core on users and items until stable; users left with < 3 items are dropped (counted);
3. chronological order per user, ties broken by original row order (ts, source_file, row_number, item_pos);
4. optional truncation to the last max_len + 2 items;
5. deterministic ids: items 1..n by (first-appearance ts, item_id) — 0 is padding; users 0..U-1 by
   natural order of user_id (numeric when every id is a non-negative integer, else UTF-8 byte order);
5b. optional user sample (`max_users`, see `sample_users`): taken from the users that steps 1-4 kept,
   *after* the k-core, and never re-filtered, so every sampled user keeps its full (>= 3 item)
   sequence; item ids and the item catalogue (ranking candidates) stay those of the whole dataset;
6. leave-one-out: last item = test target, second-to-last = valid target, the rest = train.
The `sequences` and `splits` contracts run on the result before it replaces `cfg.out_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_contracts import require, validate
from slmrec.config import SequenceConfig
from slmrec.hashing import sha256_file

SPLIT_FILES = ("train.parquet", "valid.parquet", "test.parquet", "user_map.parquet", "item_map.parquet")
SEQUENCES_FILE = "sequences.parquet"  # not part of dataset_hash: the splits are the dataset
MIN_LENGTH = 3  # one train item, a validation target and a test target
# Fixed writer options: the same tables give the same bytes (for a given pyarrow version).
PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=True,
    write_statistics=True,
    version="2.6",
    data_page_version="1.0",
    row_group_size=1 << 20,
)
REQUIRED_COLUMNS = ["user_id", "item_id", "ts", "source_file", "row_number", "item_pos"]


@dataclass
class SplitStats:
    """What `build_splits` wrote: counts, drops per step, length quantiles, hashes, config."""

    n_users: int
    n_items: int
    n_interactions: int
    input: dict  # rows, users, items, sha256 of interactions.parquet
    dropped: dict  # filter / k_core / short_users / truncation counts
    length: dict  # sequence length quantiles: min, p25, median, p75, p90, max, mean
    files: dict  # sha256 of each split Parquet file
    dataset_hash: str  # sha256 over the split Parquet files (see dataset_hash())
    contracts: dict  # expectations evaluated per contract (all passed, or nothing was written)
    config: dict = field(default_factory=dict)
    sequences_sha256: str = ""  # sha256 of sequences.parquet (the user_sequences asset; not in dataset_hash)
    sample: dict | None = None  # max_users: the rule and the counts before/after (absent without a sample)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["sample"] is None:
            del d["sample"]  # stats of unsampled splits keep their shape (and bytes)
        return d


@dataclass
class Splits:
    """Leave-one-out splits as Python lists, indexed by user_idx (what the model code consumes)."""

    train: list[list[int]]  # items oldest first (all but the last two)
    valid: list[tuple[list[int], int]]  # (history = train items, target)
    test: list[tuple[list[int], int]]  # (history = train items + valid target, target)
    n_items: int  # ids are 1..n_items; 0 is padding
    n_users: int
    dataset_hash: str
    item_titles: list[str | None]  # indexed by item_idx; [0] (padding) is None
    item_ids: list[str | None]  # original item ids, indexed by item_idx; [0] is None
    user_ids: list[str]  # original user ids, indexed by user_idx


# --- filters: each returns a keep-mask over the rows, or None when switched off ------------------

FILTERS: dict[str, Callable[[pa.Table, SequenceConfig], np.ndarray | None]] = {}


def register_filter(name: str):
    def wrap(fn):
        FILTERS[name] = fn
        return fn

    return wrap


@register_filter("min_rating")
def min_rating_filter(table: pa.Table, cfg: SequenceConfig) -> np.ndarray | None:
    """Keep rating >= min_rating; rows without a rating do not pass a rating threshold."""
    if cfg.min_rating is None:
        return None
    if "rating" not in table.column_names or table["rating"].null_count == table.num_rows:
        raise ValueError(f"sequences.min_rating={cfg.min_rating} but the interactions have no ratings")
    rating = pc.fill_null(table["rating"].cast(pa.float64()), np.nan).to_numpy()
    return rating >= cfg.min_rating


@register_filter("event_types")
def event_type_filter(table: pa.Table, cfg: SequenceConfig) -> np.ndarray | None:
    """Keep rows whose event is one of cfg.event_types; rows without an event do not match."""
    if cfg.event_types is None:
        return None
    if "event" not in table.column_names or table["event"].null_count == table.num_rows:
        raise ValueError(f"sequences.event_types={cfg.event_types} but the interactions have no event column values")
    return pc.fill_null(pc.is_in(table["event"], value_set=pa.array(cfg.event_types, pa.string())), False).to_numpy()


# --- pure steps --------------------------------------------------------------------------------


def natural_order(ids: pa.Array) -> np.ndarray:
    """Indices that sort `ids` naturally: numerically if every id is a non-negative integer, else by UTF-8 bytes."""
    if len(ids) and pc.all(pc.match_substring_regex(ids, r"^[0-9]+$")).as_py():
        digits = pc.utf8_ltrim(ids, characters="0")
        keys = pa.table({"n": pc.utf8_length(digits), "digits": digits, "raw": ids})
        sort_keys = [("n", "ascending"), ("digits", "ascending"), ("raw", "ascending")]
        return pc.sort_indices(keys, sort_keys=sort_keys).to_numpy()
    return pc.sort_indices(ids).to_numpy()


def _rank(order: np.ndarray) -> np.ndarray:
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(int64 code per row, distinct values) — codes follow first appearance, so only used internally."""
    encoded = column.combine_chunks().dictionary_encode()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


def k_core(users: np.ndarray, items: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Iteratively drop the rows of users and items with fewer than k rows, until none is left.

    Returns (kept row indices, number of passes that removed something).
    """
    passes = 0
    if k <= 1:
        return rows, passes
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    while len(rows):
        u, i = users[rows], items[rows]
        ok = (np.bincount(u, minlength=n_users)[u] >= k) & (np.bincount(i, minlength=n_items)[i] >= k)
        if ok.all():
            break
        rows = rows[ok]
        passes += 1
    return rows, passes


SAMPLE_RULE = (
    "users ranked by sha256(user_id) (ascending), the first max_users kept; drawn from the users left after "
    "filters, k-core and the min-length rule on the whole dataset; the sample is not re-filtered; item ids and "
    "the item catalogue (the ranking candidates) are those of the whole dataset"
)


def sample_users(user_ids: list[str] | pa.Array, max_users: int) -> np.ndarray:
    """Pure: a boolean mask keeping `max_users` of `user_ids` — the smallest sha256(user_id) first.

    Deterministic (no seed, no machine dependence), and stable: growing max_users only adds users,
    and a user's membership does not depend on which other users exist.
    """
    if not isinstance(max_users, int) or isinstance(max_users, bool) or max_users < 1:
        raise ValueError(f"max_users must be an integer >= 1, got {max_users!r}")
    ids = user_ids.to_pylist() if isinstance(user_ids, (pa.Array, pa.ChunkedArray)) else list(user_ids)
    keys = [hashlib.sha256(str(u).encode()).hexdigest() for u in ids]
    keep = np.zeros(len(ids), bool)
    keep[sorted(range(len(ids)), key=keys.__getitem__)[:max_users]] = True
    return keep


def _check_columns(table: pa.Table, where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; has {table.column_names}")
    for name in REQUIRED_COLUMNS:
        if table[name].null_count:
            raise ValueError(f"{where}: {table[name].null_count} null value(s) in column {name!r}")
    for name in ("user_id", "item_id", "source_file"):
        if not pa.types.is_string(table[name].type) and not pa.types.is_large_string(table[name].type):
            raise ValueError(f"{where}: column {name!r} must be text, got {table[name].type}")
    for name in ("ts", "row_number", "item_pos"):
        if not pa.types.is_integer(table[name].type):
            raise ValueError(f"{where}: column {name!r} must be an integer, got {table[name].type}")


def _check_no_duplicates(table: pa.Table, user: np.ndarray, item: np.ndarray, ts: np.ndarray, where: str) -> None:
    # duplicates were quarantined at ingest: a duplicate here means the snapshot is not what ingest writes
    pair = user * (int(item.max(initial=0)) + 1) + item  # one int64 key per (user, item)
    order = np.lexsort((ts, pair))
    sp, st = pair[order], ts[order]
    dup = np.flatnonzero((sp[1:] == sp[:-1]) & (st[1:] == st[:-1]))
    if len(dup):
        rows = order[dup[:5]]
        columns = ["user_id", "item_id", "ts", "source_file", "row_number"]
        examples = table.take(pa.array(rows)).select(columns).to_pylist()
        raise ValueError(f"{where}: {len(dup)} duplicate event(s) on (user_id, item_id, ts), e.g. {examples}")


def _quantiles(lengths: np.ndarray) -> dict:
    q = np.quantile(lengths, [0.25, 0.5, 0.75, 0.9])
    return {
        "min": int(lengths.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "p75": float(q[2]),
        "p90": float(q[3]),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 4),
    }


@dataclass
class BuiltSplits:
    """The in-memory result of make_splits: split tables, the sequence frame for the contract, stats."""

    tables: dict[str, pa.Table]  # SPLIT_FILES name -> table
    sequences: pa.Table  # one row per interaction, in sequence order (for the `sequences` contract)
    stats: dict  # SplitStats fields except files/dataset_hash/contracts


def make_splits(
    interactions: pa.Table,
    items: pa.Table,
    cfg: SequenceConfig,
    where: str = "interactions",
    max_users: int | None = None,
) -> BuiltSplits:
    """Pure: the canonical interactions (+ item titles) -> leave-one-out split tables.

    max_users: keep a deterministic sample of this many users (step 5b; stats["sample"] records it).
    """
    if max_users is not None:
        sample_users([], max_users)  # validate before any work
    _check_columns(interactions, where)
    user, user_ids = _encode(interactions["user_id"])
    item, item_ids = _encode(interactions["item_id"])
    ts = interactions["ts"].to_numpy().astype(np.int64)
    _check_no_duplicates(interactions, user, item, ts, where)
    n_rows = interactions.num_rows

    def distinct(rows: np.ndarray) -> tuple[int, int]:  # (users, items) among these rows
        return int(np.count_nonzero(np.bincount(user[rows]))), int(np.count_nonzero(np.bincount(item[rows])))

    # 1. filters
    keep = np.ones(n_rows, bool)
    dropped_filter = {}
    for name, fn in FILTERS.items():
        mask = fn(interactions, cfg)
        if mask is not None:
            dropped_filter[name] = int((keep & ~mask).sum())
            keep &= mask
    rows = np.flatnonzero(keep)

    # 2. k-core, then users too short for leave-one-out
    users_before, items_before = distinct(rows)
    rows_k, passes = k_core(user, item, rows, cfg.k_core)
    users_k, items_k = distinct(rows_k)
    per_user = np.bincount(user[rows_k], minlength=len(user_ids))
    short = per_user[user[rows_k]] < MIN_LENGTH
    short_users = int(((per_user > 0) & (per_user < MIN_LENGTH)).sum())
    rows_s = rows_k[~short]
    items_s = distinct(rows_s)[1]
    if not len(rows_s):
        raise ValueError(
            f"{where}: no user has >= {MIN_LENGTH} interactions after filters and {cfg.k_core}-core ({n_rows} rows read)"
        )

    # 3. users by natural id order; rows chronological with the original row order as tie-break
    present = np.flatnonzero(np.bincount(user[rows_s], minlength=len(user_ids)))  # codes of the kept users
    ordered_codes = present[natural_order(user_ids.take(pa.array(present)))]  # numeric or not: decided on kept ids
    user_idx_of = np.full(len(user_ids), -1, np.int64)
    user_idx_of[ordered_codes] = np.arange(len(ordered_codes))
    n_users = len(ordered_codes)
    source_code, source_files = _encode(interactions["source_file"])
    source = _rank(pc.sort_indices(source_files).to_numpy())[source_code]  # file name order
    row_number = interactions["row_number"].to_numpy().astype(np.int64)
    item_pos = interactions["item_pos"].to_numpy().astype(np.int64)
    u = user_idx_of[user[rows_s]]
    rows_o = rows_s[np.lexsort((item_pos[rows_s], row_number[rows_s], source[rows_s], ts[rows_s], u))]

    # 4. truncation to the last max_len + 2 items
    seq_user = user_idx_of[user[rows_o]]
    lengths = np.bincount(seq_user, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(len(rows_o)) - starts[seq_user]
    truncated = 0
    if cfg.max_len is not None:
        kept = position >= lengths[seq_user] - (cfg.max_len + 2)
        truncated = int((~kept).sum())
        rows_o, seq_user = rows_o[kept], seq_user[kept]
        lengths = np.bincount(seq_user, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        position = np.arange(len(rows_o)) - starts[seq_user]

    # 5. item ids 1..n by (first-appearance ts, natural item_id order)
    first_ts = np.full(len(item_ids), np.iinfo(np.int64).max)
    np.minimum.at(first_ts, item[rows_o], ts[rows_o])
    used = np.flatnonzero(first_ts < np.iinfo(np.int64).max)
    used_rank = _rank(natural_order(item_ids.take(pa.array(used))))
    item_codes = used[np.lexsort((used_rank, first_ts[used]))]
    item_idx_of = np.zeros(len(item_ids), np.int64)
    item_idx_of[item_codes] = np.arange(1, len(item_codes) + 1)
    n_items = len(item_codes)
    seq_item = item_idx_of[item[rows_o]]

    # 5b. user sample: from the users kept above, not re-filtered; the item ids and catalogue stay
    sample = None
    if max_users is not None:
        kept_ids = user_ids.take(pa.array(ordered_codes))  # user_idx order
        chosen = sample_users(kept_ids, max_users)
        new_idx = np.cumsum(chosen) - 1  # natural order preserved among the sampled users
        in_sample = chosen[seq_user]
        sample = {"max_users": max_users, "rule": SAMPLE_RULE, "users_before": n_users,
                  "users": int(chosen.sum()), "interactions_before": len(rows_o),
                  "interactions": int(in_sample.sum())}  # fmt: skip
        rows_o, seq_item, position = rows_o[in_sample], seq_item[in_sample], position[in_sample]
        seq_user = new_idx[seq_user[in_sample]]
        ordered_codes = ordered_codes[chosen]
        n_users = len(ordered_codes)
        lengths = np.bincount(seq_user, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    # 6. leave-one-out
    ends = starts + lengths
    train_len = lengths - 2
    in_train = position < train_len[seq_user]
    in_test_history = position < lengths[seq_user] - 1
    train_lists = _lists(seq_item[in_train], train_len)
    test_lists = _lists(seq_item[in_test_history], lengths - 1)
    user_col = pa.array(np.arange(n_users, dtype=np.int32))
    final_item_ids = item_ids.take(pa.array(item_codes)).cast(pa.string())
    tables = {
        "train.parquet": pa.table({"user_idx": user_col, "items": train_lists}),
        "valid.parquet": pa.table({"user_idx": user_col, "history": train_lists, "target": _int32(seq_item[ends - 2])}),
        "test.parquet": pa.table({"user_idx": user_col, "history": test_lists, "target": _int32(seq_item[ends - 1])}),
        "user_map.parquet": pa.table(
            {"user_idx": user_col, "user_id": user_ids.take(pa.array(ordered_codes)).cast(pa.string())}
        ),
        "item_map.parquet": pa.table(
            {
                "item_idx": pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
                "item_id": final_item_ids,
                "title": _titles(final_item_ids, items),
            }
        ),
    }
    take = pa.array(rows_o)
    sequences = pa.table(
        {
            "user_idx": _int32(seq_user),
            "position": _int32(position),
            "item_idx": _int32(seq_item),
            "ts": pa.array(ts[rows_o]),
            "source_file": interactions["source_file"].take(take),
            "row_number": pa.array(row_number[rows_o]),
            "item_pos": pa.array(item_pos[rows_o]),
        }
    )
    stats = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": len(rows_o),
        "input": {"rows": n_rows, "users": len(user_ids), "items": len(item_ids)},
        "dropped": {
            "filter": dropped_filter,
            "k_core": {
                "k": cfg.k_core,
                "interactions": len(rows) - len(rows_k),
                "users": users_before - users_k,
                "items": items_before - items_k,
                "passes": passes,
            },
            "short_users": {"users": short_users, "interactions": int(short.sum()), "items": items_k - items_s},
            "truncation": {"interactions": truncated, "items": items_s - n_items},
        },
        "length": _quantiles(lengths),
        "config": dataclasses.asdict(cfg),
    }
    if sample is not None:
        stats["sample"] = sample
    return BuiltSplits(tables=tables, sequences=sequences, stats=stats)


def _int32(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int32))


def _lists(values: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), _int32(values))


def _titles(final_item_ids: pa.Array, items: pa.Table) -> pa.Array:
    if "title" not in items.column_names:
        return pa.nulls(len(final_item_ids), pa.string())
    at = pc.index_in(final_item_ids, value_set=items["item_id"].combine_chunks().cast(pa.string()))
    return items["title"].combine_chunks().cast(pa.string()).take(at)


# --- files -------------------------------------------------------------------------------------



STATS_DIGEST = "stats_sha256"  # stats.json's own checksum: any changed byte of it is refused on load


def stats_digest(stats: dict) -> str:
    """sha256 of stats.json's canonical JSON without its own digest field."""
    body = {k: v for k, v in stats.items() if k != STATS_DIGEST}
    return hashlib.sha256(json.dumps(body, indent=2, sort_keys=True).encode()).hexdigest()


def dataset_hash(files: dict[str, str]) -> str:
    """sha256 over the lines '<file name> <sha256>' of the split Parquet files, in SPLIT_FILES order."""
    return hashlib.sha256("".join(f"{name} {files[name]}\n" for name in SPLIT_FILES).encode()).hexdigest()


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace directory `out` by `tmp` with renames only: readers see the old or the new dir, never a mix."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise ValueError(f"split output {out} exists and is not a directory")
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)


def write_split_dir(built: BuiltSplits, contracts: dict, out_dir: str | Path) -> dict:
    """Write the split files into a temp dir next to out_dir, then swap it in. Returns the full stats."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in SPLIT_FILES:
            pq.write_table(built.tables[name], tmp / name, **PARQUET_OPTIONS)
        # the time-ordered events behind the splits (the `user_sequences` asset; re-checked by Dagster)
        pq.write_table(built.sequences, tmp / SEQUENCES_FILE, **PARQUET_OPTIONS)
        files = {name: sha256_file(tmp / name) for name in SPLIT_FILES}
        stats = {**built.stats, "files": files, "dataset_hash": dataset_hash(files), "contracts": contracts,
                 "sequences_sha256": sha256_file(tmp / SEQUENCES_FILE)}
        on_disk = {**stats, STATS_DIGEST: stats_digest(stats)}
        (tmp / "stats.json").write_text(json.dumps(on_disk, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)
        _swap_in(tmp, out)
    finally:
        if tmp.exists():  # anything failed before the swap: leave no half-written dir behind
            shutil.rmtree(tmp)
    return stats


def build_splits(interactions_dir: str | Path, cfg: SequenceConfig, max_users: int | None = None) -> SplitStats:
    """Read the interaction snapshot, build and check the splits, write cfg.out_dir atomically.

    max_users: a deterministic user sample of the k-cored dataset (see make_splits, SAMPLE_RULE)."""
    _check_config(cfg)
    src = Path(interactions_dir)
    inter_path, items_path = src / "interactions.parquet", src / "items.parquet"
    for path in (inter_path, items_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build_splits reads the snapshot written by export_snapshot")
    interactions = pq.read_table(inter_path)
    items = pq.read_table(items_path)
    require(validate(items.select([c for c in ("item_id", "title") if c in items.column_names]), "items"))
    built = make_splits(interactions, items, cfg, where=str(inter_path), max_users=max_users)
    built.stats["input"]["sha256"] = sha256_file(inter_path)
    maps = {"item_map": built.tables["item_map.parquet"], "user_map": built.tables["user_map.parquet"]}
    checked = {}
    for suite, frames in [
        ("sequences", {"sequences": built.sequences, **maps}),
        ("splits", {name.removesuffix(".parquet"): built.tables[name] for name in SPLIT_FILES}),
    ]:
        result = require(validate(frames, suite))
        checked[suite] = {"passed": True, "expectations": result.statistics["evaluated_expectations"]}
    stats = write_split_dir(built, checked, cfg.out_dir)
    return SplitStats(**stats)


def _check_config(cfg: SequenceConfig) -> None:
    if not isinstance(cfg.k_core, int) or cfg.k_core < 0:
        raise ValueError(f"sequences.k_core must be an integer >= 0, got {cfg.k_core!r}")
    if cfg.max_len is not None and (not isinstance(cfg.max_len, int) or cfg.max_len < 1):
        raise ValueError(f"sequences.max_len must be None or an integer >= 1, got {cfg.max_len!r}")
    if cfg.event_types is not None and (not cfg.event_types or not all(isinstance(e, str) for e in cfg.event_types)):
        raise ValueError(f"sequences.event_types must be None or a non-empty list of strings, got {cfg.event_types!r}")


# --- reading back ------------------------------------------------------------------------------


def read_split_tables(split_dir: str | Path) -> tuple[dict[str, pa.Table], dict]:
    """(split files as Arrow tables keyed like the `splits` contract's frames, stats.json), after a hash check.

        tables, stats = read_split_tables("data/splits"); validate(tables, "splits")
    """
    split_dir = Path(split_dir)
    stats_path = split_dir / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"{stats_path} not found: not a split dir written by build_splits")
    try:
        stats = json.loads(stats_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{stats_path}: corrupted, not JSON ({err}); rebuild the splits") from err
    if isinstance(stats, dict) and STATS_DIGEST in stats:  # (split dirs written before the digest: no check)
        if stats.pop(STATS_DIGEST) != stats_digest(stats):
            raise ValueError(f"{stats_path}: corrupted or edited: its bytes no longer match its {STATS_DIGEST}")
    files = stats.get("files") if isinstance(stats, dict) else None
    if not isinstance(files, dict) or any(not isinstance(files.get(n), str) for n in SPLIT_FILES):
        raise ValueError(f"{stats_path}: corrupted, no sha256 for each of {list(SPLIT_FILES)}; rebuild the splits")
    if stats.get("dataset_hash") != dataset_hash(files):
        raise ValueError(f"{stats_path}: corrupted, its dataset_hash does not match its file hashes")
    for name in SPLIT_FILES:
        digest = sha256_file(split_dir / name)
        if digest != files[name]:
            raise ValueError(f"{split_dir / name}: sha256 {digest} differs from stats.json ({files[name]}): "
                             "the file is corrupted or was changed")
    try:
        tables = {name.removesuffix(".parquet"): pq.read_table(split_dir / name) for name in SPLIT_FILES}
    except (pa.ArrowException, OSError) as err:  # same bytes as written, yet unreadable: a pyarrow mismatch
        raise ValueError(f"{split_dir}: split files unreadable ({err})") from err
    return tables, stats


def load_splits(split_dir: str | Path) -> Splits:
    """Load the splits written by build_splits as Python lists (ids checked, hash verified)."""
    tables, stats = read_split_tables(split_dir)
    n_users, n_items = stats["n_users"], stats["n_items"]
    for name, t in tables.items():
        key = "item_idx" if name == "item_map" else "user_idx"
        expected = np.arange(1, n_items + 1) if name == "item_map" else np.arange(n_users)
        if not np.array_equal(t[key].to_numpy(), expected):
            raise ValueError(f"{split_dir}/{name}.parquet: {key} is not {expected[0]}..{expected[-1]} in order")
    # histories are train (+ valid target): check that vectorised, then build them from the train lists
    train_items = tables["train"]["items"].combine_chunks()
    valid_target = tables["valid"]["target"].to_numpy()
    train_len = pc.list_value_length(train_items).to_numpy()  # (U,)
    train_flat = pc.list_flatten(train_items).to_numpy()
    test_flat = np.insert(train_flat, np.cumsum(train_len), valid_target)  # each user's valid target appended
    expected = {"valid": (train_len, train_flat), "test": (train_len + 1, test_flat)}
    for name, (lengths, flat) in expected.items():
        history = tables[name]["history"]
        if not (
            np.array_equal(pc.list_value_length(history).to_numpy(), lengths)
            and np.array_equal(pc.list_flatten(history).to_numpy(), flat)
        ):
            raise ValueError(f"{split_dir}/{name}.parquet: histories do not match train.parquet (+ valid target)")
    train = train_items.to_pylist()
    valid = [(list(items), int(t)) for items, t in zip(train, valid_target)]
    test = [(items + [int(v)], int(t)) for items, v, t in zip(train, valid_target, tables["test"]["target"].to_numpy())]
    item_map = tables["item_map"]
    return Splits(
        train=train,
        valid=valid,
        test=test,
        n_items=n_items,
        n_users=n_users,
        dataset_hash=stats["dataset_hash"],
        item_titles=[None, *item_map["title"].to_pylist()],
        item_ids=[None, *item_map["item_id"].to_pylist()],
        user_ids=tables["user_map"]["user_id"].to_pylist(),
    )
