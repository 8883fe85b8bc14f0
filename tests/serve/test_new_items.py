"""Issue 19: an item added to the catalogue after training (a new row in DuckDB `items`) is recommendable
without retraining, through its text encoded at load like the model's own items; ID-only models cannot."""

import json
import random
from pathlib import Path

import duckdb
import pytest
import torch

from slmrec.config import (DataConfig, EvalConfig, ItemTextConfig, LLMRecConfig, Params, SASRecConfig, SequenceConfig,
                           TrainConfig)
from slmrec.models.backbones import load_backbone
from slmrec.serve.deploy import deploy
from slmrec.serve.recommender import Recommender
from slmrec.stages.data import rebuild_store, sequences_stage
from slmrec.stages.item_text import build_item_text
from slmrec.stages.models import train_sasrec

ADJ = ["red", "blue", "green", "gold", "pink", "black", "white", "silver"]
NOUN = ["lipstick", "mascara", "serum", "cream", "polish"]
N = 40  # the ring i01 -> i02 -> ... -> i40 -> i01; item i has the title ADJ[i % 8] NOUN[i // 8]


def title(i: int) -> dict:
    return {"title": f"{ADJ[(i - 1) % 8]} {NOUN[(i - 1) // 8]}", "categories": f"Beauty,Makeup,{NOUN[(i - 1) // 8]}"}


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(LLMRecConfig(profile="tiny", device="cpu"), 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny):
    """Ingest (seqtxt + an item file shaped like Beauty.item.json), splits, the item text table (tiny backbone),
    and SASRec with each item side, trained on users walking the ring."""
    root = tmp_path_factory.mktemp("new_items")
    rng = random.Random(0)
    lines = []
    for u in range(240):
        start, n = rng.randrange(N), rng.randrange(8, 13)
        lines.append(" ".join([f"u{u:03d}", *[f"i{(start + k) % N + 1:02d}" for k in range(n)]]))
    (root / "raw").mkdir()
    (root / "raw" / "ring.txt").write_text("\n".join(lines) + "\n")
    (root / "raw" / "items.json").write_text(json.dumps({f"i{i:02d}": title(i) for i in range(1, N + 1)}))
    data = DataConfig(format="seqtxt", path=str(root / "raw" / "ring.txt"), items=str(root / "raw" / "items.json"),
                      db=str(root / "warehouse.duckdb"), landing_dir=str(root / "landing"))
    rebuild_store(data, str(root / "interactions"))
    sequences_stage(str(root / "interactions"), SequenceConfig(k_core=0, out_dir=str(root / "splits")))
    params = Params(
        llm=LLMRecConfig(profile="tiny", device="cpu"),
        item_text=ItemTextConfig(layers=2, template="{title} | {categories}", out_dir=str(root / "item_text"),
                                 runs_dir=str(root / "runs" / "item_text")),
        train_sasrec=TrainConfig(epochs=15, batch_size=64, lr=1e-2, patience=0, metric="mrr", eval_batch_size=512),
        eval=EvalConfig(bootstrap=10),
    )
    build_item_text(str(root / "splits"), str(root / "interactions"), params, params.item_text.out_dir,
                    log=lambda m: None, backbone=tiny)
    models = {}
    for side in ("text", "id+text", "id"):
        p = Params(**{**params.__dict__, "sasrec": SASRecConfig(hidden=32, max_len=12, dropout=0.0, item_side=side)})
        models[side] = root / "models" / side.replace("+", "_")
        train_sasrec(str(root / "splits"), p, str(models[side]), str(root / "runs"), log=lambda m: None)
    return root, models


def add_catalogue_row(db: Path, item_id: str, fields: dict) -> None:
    """What an item-file ingest does for a new item: one row in DuckDB `items` (slmrec/data/ingest.py)."""
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM items WHERE item_id = ?", [item_id])
        con.execute("INSERT INTO items VALUES (?, ?, ?, ?, 'new.json')",
                    [item_id, fields["title"], json.dumps(fields["categories"].split(",")), None])


def test_a_new_item_is_scored_through_its_text_without_retraining(trained, tiny):
    root, models = trained
    db = root / "warehouse.duckdb"
    before = Recommender.load(models["text"], backbone=tiny)
    assert before.new_items.added == [] and before.model.n_items == N
    # the model learned the ring: after ... i03, i04 comes i05
    assert before.recommend_history(["i02", "i03", "i04"], k=1).items == ["i05"]
    weights = {k: v.clone() for k, v in before.model.state_dict().items()}

    add_catalogue_row(db, "n-relisted", title(5))  # i05 listed again under a new id: the same words
    add_catalogue_row(db, "n-unrelated", {"title": "violet shampoo", "categories": "Beauty,Hair,shampoo"})
    add_catalogue_row(db, "n-empty", {"title": "", "categories": ""})  # no text: nothing to read it by

    for side in ("text", "id+text"):
        rec = Recommender.load(models[side], backbone=tiny)
        assert rec.new_items.added == ["n-relisted", "n-unrelated"], side
        assert set(rec.new_items.skipped) == {"n-empty"} and "no text" in rec.new_items.skipped["n-empty"]
        assert rec.model.n_items == N + 2 and rec.item_ids[-2:] == ["n-relisted", "n-unrelated"]
        assert rec.describe()["new_items"] == {"added": 2, "skipped": 1, "reads_text": True}
        scores = rec.model.items()  # (N + 3, d): the trained items' vectors are those of the trained model
        trained_rows = Recommender.load(models[side], new_items="ignore").model.items()
        torch.testing.assert_close(scores[: N + 1], trained_rows)
        # the new item is read through its text alone, as an unseen item of training is
        # recommended where its text says, of 42 items: text side right after i05 (the same vector, the tie to
        # the lower index), id+text (i05's trained ID vector adds to the text) within the top 3
        ans = rec.recommend_history(["i02", "i03", "i04"], k={"text": 2, "id+text": 3}[side])
        assert ans.items[0] == "i05" and "n-relisted" in ans.items, (side, ans)
        assert "n-unrelated" not in rec.recommend_history(["i02", "i03", "i04"], k=10).items
        # a history may hold a new item too: it is read, not ignored
        assert rec.recommend_history(["i03", "n-relisted"], k=5).ignored_items == []
    text = Recommender.load(models["text"], backbone=tiny)
    s = text.model.items()
    torch.testing.assert_close(s[N + 1], s[text.item_ids.index("i05")])  # text side: same words, same vector
    # nothing was retrained: the trunk's weights are as loaded
    assert all(torch.equal(weights[k], v) for k, v in text.model.state_dict().items() if k in weights
               and v.shape == weights[k].shape)

    id_only = Recommender.load(models["id"], backbone=tiny)  # an ID model serves its training catalogue
    assert id_only.model.n_items == N and id_only.describe()["new_items"]["reads_text"] is False
    assert "n-relisted" not in id_only.recommend_history(["i02", "i03", "i04"], k=N - 3).items
    ignored = Recommender.load(models["text"], new_items="ignore")
    assert ignored.model.n_items == N


def test_a_deployment_carries_the_text_table_and_a_foreign_table_is_refused(trained, tiny, tmp_path):
    root, models = trained
    add_catalogue_row(root / "warehouse.duckdb", "n-relisted", title(5))
    dep = deploy(models["id+text"], models_root=tmp_path / "models")
    assert (dep.dir / "item_text" / "table.npy").is_file()  # the deployment is self-contained
    rec = Recommender.load(dep.model_dir, backbone=tiny)
    assert rec.sources.item_text_dir == dep.dir / "item_text"

    other = load_backbone(LLMRecConfig(profile="tiny", device="cpu"), 1)  # not the encoder of the table
    with pytest.raises(ValueError, match="encoded by"):
        Recommender.load(models["text"], backbone=other)

    import numpy as np  # a table that is not the model's: its prepared rows differ from the model's buffer

    table = root / "item_text" / "table.npy"
    original = np.load(table)
    np.save(table, original[::-1].copy())
    try:
        with pytest.raises(ValueError, match="not the one the model was trained with"):
            Recommender.load(models["text"], backbone=tiny, root=root)
    finally:
        np.save(table, original)
    with pytest.raises(ValueError, match="must be one of"):
        Recommender.load(models["text"], new_items="sometimes")
