"""--max-users: a user sample of the k-cored data that stays usable (issue 10, item 2)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slmrec import cli
from slmrec.config import SequenceConfig
from slmrec.data.sequences import build_splits, k_core, load_splits, make_splits, sample_users


def regular_five_core(n: int = 3000, stride: int = 601) -> list[list[str]]:
    """n users x 5 items, every item bought by exactly 5 users: 5-core, but any user sample breaks it."""
    return [[f"B{(u + k * stride) % n:07d}" for k in range(5)] for u in range(n)]


def interactions_table(seqs: list[list[str]]) -> pa.Table:
    users = [f"A{u:06d}X" for u, s in enumerate(seqs) for _ in s]
    items = [i for s in seqs for i in s]
    ts = [p for s in seqs for p in range(len(s))]
    n = len(users)
    return pa.table({
        "user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string()),
        "ts": pa.array(ts, pa.int64()), "source_file": pa.array(["s.txt"] * n, pa.string()),
        "row_number": pa.array(np.arange(1, n + 1), pa.int64()), "item_pos": pa.array([0] * n, pa.int32()),
    })  # fmt: skip


ITEMS = pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())})


def test_sample_users_is_a_deterministic_stable_hash_rank():
    ids = [f"u{k}" for k in range(50)]
    keep = sample_users(ids, 10)
    assert keep.sum() == 10 and np.array_equal(keep, sample_users(pa.array(ids), 10))
    assert np.array_equal(sample_users(ids[::-1], 10)[::-1], keep)  # input order does not matter
    assert (sample_users(ids, 20) >= keep).all()  # a bigger sample only adds users
    assert sample_users(ids, 500).all()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_users"):
            sample_users(ids, bad)


def test_the_old_way_empties_this_data_and_the_new_way_does_not():
    seqs = regular_five_core()
    table = interactions_table(seqs)
    cfg = SequenceConfig(k_core=5)
    # the reported failure: sample users first, then k-core the sample -> nothing is left
    users = np.repeat(np.arange(len(seqs)), 5)
    items = np.unique([i for s in seqs for i in s], return_inverse=True)[1]
    sampled = np.flatnonzero(sample_users([f"A{u:06d}X" for u in range(len(seqs))], 2000)[users])
    assert len(k_core(users, items, sampled, 5)[0]) == 0

    full = make_splits(table, ITEMS, cfg)
    built = make_splits(table, ITEMS, cfg, max_users=2000)
    st = built.stats
    assert (st["n_users"], st["n_items"], st["n_interactions"]) == (2000, full.stats["n_items"], 2000 * 5)
    assert st["sample"]["users_before"] == 3000 and st["sample"]["interactions_before"] == 15000
    assert "not re-filtered" in st["sample"]["rule"]
    # the whole catalogue, with the ids the unsampled dataset gives: same item_map
    assert built.tables["item_map.parquet"].equals(full.tables["item_map.parquet"])
    # each sampled user's splits are exactly that user's splits in the full dataset
    full_rows = {u: (h, t) for u, h, t in zip(*(full.tables["test.parquet"][c].to_pylist()
                                                for c in ("user_idx", "history", "target")))}
    full_users = full.tables["user_map.parquet"]["user_id"].to_pylist()
    by_id = {full_users[u]: v for u, v in full_rows.items()}
    got = built.tables["test.parquet"]
    ids = built.tables["user_map.parquet"]["user_id"].to_pylist()
    for u, h, t in zip(*(got[c].to_pylist() for c in ("user_idx", "history", "target"))):
        assert by_id[ids[u]] == (h, t)
    assert ids == sorted(ids)  # user ids keep their natural order, renumbered 0..S-1


def test_sampled_split_dir_passes_the_contracts_and_records_the_rule(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    pq.write_table(interactions_table(regular_five_core(600, 101)), snap / "interactions.parquet")
    pq.write_table(ITEMS, snap / "items.parquet")
    from slmrec.lineage import write_card
    from slmrec.stages.data import sequences_stage

    write_card(snap, "interactions", reproducible=True)

    cfg = SequenceConfig(k_core=5, out_dir=str(tmp_path / "splits"))
    stats = sequences_stage(str(snap), cfg, max_users=100)  # contracts run inside; a failure raises
    splits = load_splits(tmp_path / "splits")
    assert (splits.n_users, splits.n_items) == (100, 600)
    card = json.loads((tmp_path / "splits" / "card.json").read_text())
    assert card["params"]["sample"]["max_users"] == 100 and "sha256(user_id)" in card["params"]["sample"]["rule"]
    assert json.loads((tmp_path / "splits" / "stats.json").read_text())["sample"] == stats["sample"]
    # without a sample, stats have no `sample` key at all (their bytes do not change)
    plain = build_splits(snap, SequenceConfig(k_core=5, out_dir=str(tmp_path / "plain"))).to_dict()
    assert "sample" not in plain


def write_experiment_inputs(tmp_path):
    seqs = regular_five_core()
    path = tmp_path / "Beauty.txt"
    path.write_text("".join(f"A{u:06d}X {' '.join(s)}\n" for u, s in enumerate(seqs)))
    (tmp_path / "params.yaml").write_text(
        "sequences: {k_core: 5}\n"
        "sasrec: {hidden: 16, layers: 1, max_len: 5}\nllm: {max_len: 5}\n"
        "train_sasrec: {epochs: 1, batch_size: 512, patience: 0}\n"
        "train_llm: {epochs: 1, batch_size: 512, patience: 0}\neval: {bootstrap: 20, sampled_negatives: 0}\n"
    )
    return path


@pytest.mark.slow  # ~20 s of CPU
def test_experiment_max_users_sasrec_only(tmp_path, capsys):
    """The same sample through `slmrec experiment --models sasrec` (fast; the full chain is the slow test)."""
    path = write_experiment_inputs(tmp_path)
    argv = ["experiment", "--profile", "tiny", "--format", "seqtxt", "--path", str(path), "--max-users", "2000",
            "--models", "sasrec", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out"),
            "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["dataset"]["n_users"], summary["dataset"]["n_items"]) == (2000, 3000)
    assert set(summary["models"]) == {"sasrec"}


@pytest.mark.slow  # ~2 min on 2 shared cores: four tiny models trained and evaluated on 2000 users
def test_experiment_max_users_on_a_five_core_amazon_style_file(tmp_path, capsys):
    """`slmrec experiment --profile tiny --max-users 2000` on a 3000-user 5-core sequence file."""
    seqs = regular_five_core()
    path = tmp_path / "Beauty.txt"
    path.write_text("".join(f"A{u:06d}X {' '.join(s)}\n" for u, s in enumerate(seqs)))
    (tmp_path / "params.yaml").write_text(
        "sequences: {k_core: 5}\n"
        "sasrec: {hidden: 16, layers: 1, max_len: 5}\nllm: {max_len: 5}\n"
        "train_sasrec: {epochs: 1, batch_size: 512, patience: 0}\n"
        "train_llm: {epochs: 1, batch_size: 512, patience: 0}\neval: {bootstrap: 20, sampled_negatives: 0}\n"
    )
    argv = ["experiment", "--profile", "tiny", "--format", "seqtxt", "--path", str(path), "--max-users", "2000",
            "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dataset"]["n_users"] == 2000 and summary["dataset"]["n_items"] == 3000
    assert set(summary["models"]) == {"sasrec", "teacher", "student_nokd", "student"}
    card = json.loads((tmp_path / "out" / "splits" / "card.json").read_text())
    assert card["params"]["sample"]["users"] == 2000
