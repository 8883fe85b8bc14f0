"""Cold-item evaluation: the seeded split takes the cold items out of every training/validation input, and only
a model that reads text ranks them (items whose text equals that of seen items)."""

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from snapshots import write_snapshot
from slmrec.config import EvalConfig, ItemTextConfig, Params, SASRecConfig, SequenceConfig, TrainConfig
from slmrec.data.sequences import build_splits, load_splits
from slmrec.eval.cold import cold_evaluate, cold_items_of, make_cold_splits, pick_cold_items
from slmrec.lineage import write_card
from slmrec.stages.item_text import MASK, META, TABLE
from slmrec.stages.models import train_sasrec

N, HALF = 40, 20  # items i and i + 20 have the same text


def ring_splits(root: Path, n_users: int = 240, seed: int = 0) -> Path:
    """Users walk the ring 1 -> 2 -> ... -> 40 -> 1 from a random start (8..12 items)."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        start, n = rng.randrange(N), rng.randrange(8, 13)
        rows += [(f"u{u:03d}", f"i{(start + k) % N + 1:02d}", k) for k in range(n)]
    snap = write_snapshot(root / "snap", rows)
    build_splits(snap, SequenceConfig(k_core=0, out_dir=str(root / "splits")))
    write_card(root / "splits", "splits", reproducible=True)
    return root / "splits"


def twin_text_table(split_dir: Path, out: Path) -> None:
    """A stand-in for the item text stage: item i and i + 20 get one random vector."""
    item_ids = pq.read_table(split_dir / "item_map.parquet")["item_id"].to_pylist()
    g = np.random.default_rng(0)
    base = g.normal(size=(HALF, 24)).astype(np.float32)
    table = np.zeros((len(item_ids) + 1, 24), np.float32)
    for idx, item in enumerate(item_ids, start=1):
        table[idx] = base[(int(item[1:]) - 1) % HALF]
    out.mkdir()
    np.save(out / TABLE, table)
    np.save(out / MASK, np.array([False] + [True] * len(item_ids)))
    (out / META).write_text(json.dumps({"key": "twins"}))
    write_card(out, "item_text", reproducible=True)


def test_cold_split_takes_cold_items_out_of_every_training_input(tmp_path):
    src = ring_splits(tmp_path)
    info = make_cold_splits(str(src), str(tmp_path / "cold"), share=0.1, seed=7)
    cold = cold_items_of(tmp_path / "cold")
    assert len(cold) == 4 and info["n_cold_items"] == 4
    assert np.array_equal(cold, pick_cold_items(N, 0.1, 7))  # seeded: the same items again
    assert not np.array_equal(cold, pick_cold_items(N, 0.1, 8))
    before, after = load_splits(src), load_splits(tmp_path / "cold")  # hash-checked like any split dir
    assert all(not set(seq) & set(cold.tolist()) for seq in after.train)
    assert all(not set(h) & set(cold.tolist()) for h, _ in after.valid)
    assert [t for _, t in after.test] == [t for _, t in before.test]  # targets kept
    assert [t for _, t in after.valid] == [t for _, t in before.valid]
    assert info["cold_test_targets"] == sum(t in set(cold.tolist()) for _, t in before.test) > 0
    assert info["removed_train_interactions"] == sum(len(a) - len(b) for a, b in zip(before.train, after.train)) > 0
    assert after.dataset_hash != before.dataset_hash
    with pytest.raises(ValueError, match="share"):
        pick_cold_items(N, 1.5, 0)


def test_only_a_text_model_ranks_cold_items(tmp_path):
    src = ring_splits(tmp_path)
    make_cold_splits(str(src), str(tmp_path / "cold"), share=0.1, seed=7)
    twin_text_table(src, tmp_path / "item_text")
    base = Params(
        train_sasrec=TrainConfig(epochs=12, batch_size=64, lr=1e-2, patience=0, metric="mrr", eval_batch_size=512),
        eval=EvalConfig(bootstrap=10),
        item_text=ItemTextConfig(out_dir=str(tmp_path / "item_text")),
    )
    models = {}
    for side in ("id", "text", "id+text"):
        p = Params(**{**base.__dict__, "sasrec": SASRecConfig(hidden=32, max_len=12, dropout=0.0, item_side=side)})
        models[f"sasrec_{side}"] = str(tmp_path / f"m_{side}")
        train_sasrec(str(tmp_path / "cold"), p, models[f"sasrec_{side}"], str(tmp_path / "runs"), log=lambda m: None)
    result = cold_evaluate(str(tmp_path / "cold"), base, models, str(tmp_path / "cold.json"), str(tmp_path / "cold.md"),
                           log=lambda m: None)  # fmt: skip
    m = result["models"]
    assert result["cold_targets"] > 10
    assert m["popularity"]["cold"]["ndcg@10"] == 0.0  # no training count: ranked behind every seen item
    assert m["sasrec_id"]["cold"]["hr@10"] <= 0.35, m  # an unseen ID vector: no better than chance (10 of 40)
    assert m["sasrec_text"]["cold"]["hr@10"] >= 0.9, m  # the cold item's text is its seen twin's
    # id+text reads a cold item through its text alone (its ID vector never trained): as good as `text`
    assert m["sasrec_id+text"]["cold"]["hr@10"] >= 0.9, m
    for name in m:
        assert m[name]["warm"]["hr@10"] > 0.5 or name == "popularity"
    table = (tmp_path / "cold.md").read_text()
    assert "sasrec_id (no text: an unseen item keeps its untrained vector)" in table and "| sasrec_text | text |" in table
