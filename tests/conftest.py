"""Shared test data: small leave-one-out splits built the way the pipeline builds them."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slmrec.config import SequenceConfig
from slmrec.lineage import write_card


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


def write_tiny_splits(root: Path, n_users: int = 16, n_items: int = 12, length: int = 10) -> Path:
    """Leave-one-out splits (build_splits) of users walking an item cycle: every train sequence fills a
    window of llm.max_len, so every example has the same number of targets (1 vs 2 processes agree)."""
    from slmrec.data.sequences import build_splits

    rows = [(f"u{u:02d}", f"i{(u + k) % n_items:02d}", k) for u in range(n_users) for k in range(length)]
    snap = write_snapshot(root / "snap", rows)
    build_splits(snap, SequenceConfig(k_core=0, out_dir=str(root / "splits")))
    write_card(root / "splits", "splits", reproducible=True)
    return root / "splits"



@pytest.fixture
def tiny_splits(tmp_path) -> Path:
    """tmp_path/splits: 16 users walking a 12-item cycle (10 items each), with a lineage card."""
    return write_tiny_splits(tmp_path)
