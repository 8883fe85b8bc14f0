"""Ingest snapshots for tests (imported by name: tests/ is on sys.path through tests/conftest.py)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_snapshot(snap: Path, rows: list[tuple[str, str, int]], items: pa.Table | None = None) -> Path:
    """An ingest snapshot (interactions.parquet + items.parquet) of (user, item, ts) rows, as export_snapshot
    writes it; `items`: the catalogue (default: none)."""
    snap.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    pq.write_table(
        pa.table(
            {
                "user_id": [r[0] for r in rows],
                "item_id": [r[1] for r in rows],
                "ts": pa.array([r[2] for r in rows], pa.int64()),
                "rating": pa.array([None] * n, pa.float64()),
                "event": pa.array([None] * n, pa.string()),
                "source_file": ["log.csv"] * n,
                "row_number": pa.array(range(1, n + 1), pa.int64()),
                "item_pos": pa.array([0] * n, pa.int32()),
                "batch_id": ["b1"] * n,
            }
        ),
        snap / "interactions.parquet",
    )
    no_titles = pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())})
    pq.write_table(items if items is not None else no_titles, snap / "items.parquet")
    return snap
