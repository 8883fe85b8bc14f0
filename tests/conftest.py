"""Shared test data: small leave-one-out splits built the way the pipeline builds them."""

from pathlib import Path

import pytest

from slmrec.config import SequenceConfig
from slmrec.lineage import write_card
from snapshots import write_snapshot


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
