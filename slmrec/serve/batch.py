"""Batch recommendations: top-K for a set of users, written to Parquet and (optionally) DuckDB.

    df = batch_recommendations(rec, users, k, partition="1998-03-01")
    write_parquet(df, "results/recommendations/1998-03-01.parquet")
    write_duckdb(df, "results/recommendations/recommendations.duckdb")   # replaces that partition's rows

Columns (the contract the monitoring reads): user_id, rank (1-based), item_id (original ids, as
text), score, model (the model directory's content hash), partition (YYYY-MM-DD, or the label given).

The DuckDB table lives in its own file under `serve.recommendations_dir`, not in the warehouse:
the ingest stage rebuilds data/warehouse.duckdb from the raw files (a swap of the whole file),
which would drop any table written into it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slmrec.days import day_bounds
from slmrec.lineage import atomic_write
from slmrec.serve.history import active_users
from slmrec.serve.recommender import RECOMMENDATION_COLUMNS, Recommender

COLUMNS = [*RECOMMENDATION_COLUMNS, "partition"]
SCHEMA = pa.schema([
    ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float64()),
    ("model", pa.string()), ("partition", pa.string()),
])  # fmt: skip
TABLE = "recommendations"
DDL = "user_id VARCHAR, rank INTEGER, item_id VARCHAR, score DOUBLE, model VARCHAR, partition VARCHAR"
DB_FILE = "recommendations.duckdb"


def select_users(rec: Recommender, day: str | None = None, users_file: str | Path | None = None) -> list[str]:
    """The users to score: those listed in `users_file` (one id a line), or active on `day`, or all in the store."""
    if users_file is not None and day is not None:
        raise ValueError("give --users or --day, not both")
    if users_file is not None:
        path = Path(users_file)
        if not path.is_file():
            raise FileNotFoundError(f"users file {path} not found")
        users = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not users:
            raise ValueError(f"users file {path} lists no user")
        return list(dict.fromkeys(users))  # first occurrence order, no duplicates
    if day is not None:
        return active_users(rec.sources.db, day)
    return sorted(rec.history.user_ids())


def batch_recommendations(rec: Recommender, users: list[str], k: int, partition: str, batch_size: int = 256,
                          as_of: int | None = None) -> pd.DataFrame:
    df = rec.recommend_users(users, k, batch_size=batch_size, as_of=as_of)
    out = df.assign(partition=str(partition))[COLUMNS]
    out.attrs.update(df.attrs)
    return out


def _table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df[COLUMNS], schema=SCHEMA, preserve_index=False)


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Atomic write (lineage.atomic_write): a reader never sees half a file."""
    path = Path(path)
    atomic_write(path, lambda tmp: pq.write_table(_table(df), tmp, compression="zstd"))
    return path


def write_duckdb(df: pd.DataFrame, db: str | Path, partitions: list[str] | None = None) -> int:
    """Replace the rows of `partitions` (default: df's) in table `recommendations`, in one transaction.

    Naming the partition explicitly matters when df is empty (no active user that day): the old
    rows of that day are still removed. Returns the rows written.
    """
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    table = _table(df)
    partitions = sorted(set(df["partition"])) if partitions is None else list(partitions)
    with duckdb.connect(str(db)) as con:
        con.begin()
        try:
            # created on the first write; every write then replaces its partitions (never a silent no-op)
            con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({DDL})")
            con.execute(f"DELETE FROM {TABLE} WHERE partition IN (SELECT unnest(?::VARCHAR[]))", [partitions])
            con.register("_new", table)
            con.execute(f"INSERT INTO {TABLE} SELECT {', '.join(COLUMNS)} FROM _new")
            con.unregister("_new")
            con.commit()
        except BaseException:
            con.rollback()
            raise
    return table.num_rows


def run_batch(
    rec: Recommender,
    k: int,
    out: str | Path,
    partition: str,
    day: str | None = None,
    users_file: str | Path | None = None,
    duckdb_file: str | Path | None = None,
    batch_size: int = 256,
    as_of: int | None = None,
) -> dict:
    """Select users, score them with their histories as of `as_of` (default: the end of `day`, if given), check
    the table (`problems`, `history_problems`) and only then write the Parquet file (and the DuckDB partition):
    a malformed table is never published (ValueError naming the problems). Returns a summary."""
    if as_of is None and day is not None:
        as_of = day_bounds(day)[1]  # point in time: a backfill or a late run sees the history of that day's end
    users = select_users(rec, day, users_file)
    df = batch_recommendations(rec, users, k, partition, batch_size, as_of) if users else pd.DataFrame(columns=COLUMNS)
    found = problems(df, k) + history_problems(df, rec, as_of)
    if found:
        raise ValueError(f"recommendations for partition {partition} not published: {found[:5]}")
    write_parquet(df, out)
    if duckdb_file is not None:
        write_duckdb(df, duckdb_file, [partition])
    return {
        "partition": partition,
        "users_selected": len(users),
        "users_scored": int(df["user_id"].nunique()) if len(df) else 0,
        "users_skipped": df.attrs.get("skipped", []),
        "users_fallback": len(df.attrs.get("fallback", [])),
        "rows": len(df),
        "k": k,
        "model": rec.model_hash,
        "model_dir": str(rec.sources.model_dir),
        "out": str(out),
        "duckdb": str(duckdb_file) if duckdb_file is not None else None,
        "as_of": as_of,
    }


def history_problems(df: pd.DataFrame, rec: Recommender, as_of: int | None = None) -> list[str]:
    """Users whose list holds an item of their own history (as of `as_of`) although the protocol excludes it."""
    if not rec.eval_cfg.exclude_history or df.empty:
        return []
    found = []
    for user, group in df.groupby("user_id", sort=False):
        seen = set(rec.history.get(str(user), as_of) or [])
        repeated = sorted(seen & set(group["item_id"]))
        if repeated:
            found.append(f"user {user}: recommends item(s) of their history {repeated[:5]}")
        if len(found) >= 10:
            break
    return found


def problems(df: pd.DataFrame, k: int) -> list[str]:
    """What is wrong with a recommendations table (empty list = well-formed): the check on the asset."""
    found = []
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        return [f"missing column(s) {missing}"]
    if df[["user_id", "item_id", "model", "partition"]].isna().any().any():
        found.append("null ids, model or partition")
    if not df["score"].map(lambda s: s == s and abs(s) != float("inf")).all():
        found.append("non-finite scores")
    for user, group in df.groupby("user_id", sort=False):
        ranks = group["rank"].tolist()
        if ranks != list(range(1, len(ranks) + 1)) or len(ranks) > k:
            found.append(f"user {user}: ranks {ranks[:12]} are not 1..n with n <= {k}")
        elif group["item_id"].duplicated().any():
            found.append(f"user {user}: an item is recommended twice")
        elif not group["score"].is_monotonic_decreasing:
            found.append(f"user {user}: scores do not decrease with rank")
        if len(found) >= 10:
            break
    if df["model"].nunique() > 1:
        found.append(f"{df['model'].nunique()} models in one table")
    return found
