"""Sequences and leave-one-out splits on hand-built snapshots whose ids and splits are known exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_contracts import ContractViolation, validate
from slmrec.config import SequenceConfig
from slmrec.data import sequences as seq
from slmrec.data.sequences import SPLIT_FILES, build_splits, k_core, load_splits, natural_order


def snapshot(path: Path, rows: list[tuple], items: dict[str, str] | None = None, rating=None, event=None) -> Path:
    """Write interactions.parquet (+ items.parquet) as export_snapshot does. rows: (user, item, ts[, source_file])."""
    path.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "item_id": pa.array([r[1] for r in rows], pa.string()),
            "ts": pa.array([r[2] for r in rows], pa.int64()),
            "rating": pa.array(rating if rating is not None else [None] * n, pa.float64()),
            "event": pa.array(event if event is not None else [None] * n, pa.string()),
            "source_file": pa.array([r[3] if len(r) > 3 else "log.csv" for r in rows], pa.string()),
            "row_number": pa.array(range(1, n + 1), pa.int64()),
            "item_pos": pa.array([0] * n, pa.int32()),
            "batch_id": pa.array(["b1"] * n, pa.string()),
        }
    )
    pq.write_table(table, path / "interactions.parquet")
    items = items or {}
    catalog = pa.table({"item_id": pa.array(list(items), pa.string()), "title": pa.array(list(items.values()), pa.string())})
    pq.write_table(catalog, path / "items.parquet")
    return path


# user "10": c@50, b@100 (row 1), a@100 (row 2), d@200 — the two ts=100 events keep file order
# user "2":  a@10, c@20, d@30
HAND_ROWS = [
    ("10", "b", 100), ("10", "a", 100), ("10", "c", 50), ("2", "a", 10), ("2", "c", 20), ("2", "d", 30), ("10", "d", 200)
]  # fmt: skip


def file_hashes(split_dir: Path) -> dict[str, str]:
    return {name: hashlib.sha256((split_dir / name).read_bytes()).hexdigest() for name in SPLIT_FILES}


def accounted(stats) -> int:
    d = stats.dropped
    return (
        stats.n_interactions
        + sum(d["filter"].values())
        + d["k_core"]["interactions"]
        + d["short_users"]["interactions"]
        + d["truncation"]["interactions"]
    )


def test_hand_built_example(tmp_path):
    src = snapshot(tmp_path / "snap", HAND_ROWS, items={"a": "Apple", "b": "Banana", "d": "Date", "z": "unused"})
    stats = build_splits(src, SequenceConfig(k_core=0, out_dir=str(tmp_path / "splits")))
    # items by first appearance: a@10, c@20, d@30, b@100; users numerically: "2" < "10"
    s = load_splits(tmp_path / "splits")
    assert s.item_ids == [None, "a", "c", "d", "b"]
    assert s.item_titles == [None, "Apple", None, "Date", "Banana"]
    assert s.user_ids == ["2", "10"]
    assert s.train == [[1], [2, 4]]
    assert s.valid == [([1], 2), ([2, 4], 1)]
    assert s.test == [([1, 2], 3), ([2, 4, 1], 3)]
    assert (s.n_users, s.n_items) == (2, 4)
    assert stats.n_interactions == 7 and accounted(stats) == 7
    assert stats.length == {"min": 3, "p25": 3.25, "median": 3.5, "p75": 3.75, "p90": 3.9, "max": 4, "mean": 3.5}
    assert stats.contracts == {
        "sequences": {"passed": True, "expectations": 22},
        "splits": {"passed": True, "expectations": 24},
    }
    on_disk = json.loads((tmp_path / "splits" / "stats.json").read_text())
    assert on_disk.pop("stats_sha256") == seq.stats_digest(on_disk)  # stats.json's own checksum
    assert on_disk == stats.to_dict()
    assert on_disk["dataset_hash"] == s.dataset_hash == seq.dataset_hash(file_hashes(tmp_path / "splits"))
    assert on_disk["input"]["sha256"] == hashlib.sha256((src / "interactions.parquet").read_bytes()).hexdigest()
    # the files follow docs/ARCHITECTURE.md "Split files"
    schema = pq.read_schema(tmp_path / "splits" / "test.parquet")
    assert schema.names == ["user_idx", "history", "target"]
    assert schema.field("user_idx").type == schema.field("target").type == pa.int32()
    assert pa.types.is_list(schema.field("history").type) and schema.field("history").type.value_type == pa.int32()
    assert pq.read_schema(tmp_path / "splits" / "item_map.parquet").names == ["item_idx", "item_id", "title"]
    # what a Dagster asset check re-runs on the files
    tables, stats_json = seq.read_split_tables(tmp_path / "splits")
    assert validate(tables, "splits").success and stats_json == on_disk


def test_natural_order():
    ids = pa.array(["10", "9", "007", "7", "1", "0"])
    assert ids.take(pa.array(natural_order(ids))).to_pylist() == ["0", "1", "007", "7", "9", "10"]
    mixed = pa.array(["b", "a10", "a9", "10", "B"])
    assert mixed.take(pa.array(natural_order(mixed))).to_pylist() == ["10", "B", "a10", "a9", "b"]


def test_item_id_breaks_first_appearance_ties(tmp_path):
    # items "10" and "9" first appear at the same ts: all ids are integers, so "9" comes first
    rows = [("u", "10", 1), ("u", "9", 1), ("u", "5", 2), ("v", "5", 0), ("v", "9", 5), ("v", "10", 6)]
    build_splits(snapshot(tmp_path / "snap", rows), SequenceConfig(k_core=0, out_dir=str(tmp_path / "s")))
    s = load_splits(tmp_path / "s")
    assert s.item_ids == [None, "5", "9", "10"]
    assert s.train == [[3], [1]]  # u: 10 (row 1) before 9 (row 2) at ts=1, then 5; v: 5, 9, 10
    assert s.valid[0] == ([3], 2)


def test_k_core_needs_more_than_one_pass(tmp_path):
    # q occurs once: dropping it leaves user D with 2 < 3 items, which only a second pass removes
    rows = [(u, i, t) for t, (u, i) in enumerate((u, i) for u in "ABC" for i in "xyz")]
    rows += [("D", "x", 100), ("D", "y", 101), ("D", "q", 102)]
    users = np.array([ord(r[0]) - ord("A") for r in rows])
    items = np.array(["xyzq".index(r[1]) for r in rows])
    one_pass, passes = k_core(users, items, np.arange(len(rows)), 3)
    assert passes == 2 and len(one_pass) == 9
    stats = build_splits(snapshot(tmp_path / "snap", rows), SequenceConfig(k_core=3, out_dir=str(tmp_path / "s")))
    assert stats.dropped["k_core"] == {"k": 3, "interactions": 3, "users": 1, "items": 1, "passes": 2}
    assert (stats.n_users, stats.n_items, stats.n_interactions) == (3, 3, 9)
    assert load_splits(tmp_path / "s").user_ids == ["A", "B", "C"]


def test_short_users_dropped_and_counted_when_k_core_below_3(tmp_path):
    rows = HAND_ROWS + [("1", "a", 5), ("1", "b", 6)]  # user "1" has only two items
    stats = build_splits(snapshot(tmp_path / "snap", rows), SequenceConfig(k_core=2, out_dir=str(tmp_path / "s")))
    assert stats.dropped["short_users"] == {"users": 1, "interactions": 2, "items": 0}
    assert stats.n_users == 2 and accounted(stats) == len(rows)


def test_min_rating_filter(tmp_path):
    ratings = [5.0, 2.0, 4.0, 4.0, 5.0, 3.0, 4.0]
    src = snapshot(tmp_path / "snap", HAND_ROWS + [("10", "e", 300)], rating=ratings + [None])
    stats = build_splits(src, SequenceConfig(min_rating=3.5, k_core=0, out_dir=str(tmp_path / "s")))
    # dropped: ("10","a",2.0), ("2","d",3.0), ("10","e",no rating) -> user "2" keeps a, c (too short)
    assert stats.dropped["filter"] == {"min_rating": 3}
    assert stats.dropped["short_users"]["users"] == 1
    s = load_splits(tmp_path / "s")
    assert s.user_ids == ["10"] and s.item_ids == [None, "c", "b", "d"]
    assert s.test == [([1, 2], 3)]
    assert accounted(stats) == 8

    unrated = snapshot(tmp_path / "unrated", HAND_ROWS)
    with pytest.raises(ValueError, match="min_rating=3.5 but the interactions have no ratings"):
        build_splits(unrated, SequenceConfig(min_rating=3.5, k_core=0, out_dir=str(tmp_path / "s2")))


def test_event_type_filter(tmp_path):
    events = ["buy", "view", "buy", "buy", "buy", "buy", "buy"]
    src = snapshot(tmp_path / "snap", HAND_ROWS, event=events)
    stats = build_splits(src, SequenceConfig(event_types=["buy"], k_core=0, out_dir=str(tmp_path / "s")))
    assert stats.dropped["filter"] == {"event_types": 1}
    assert load_splits(tmp_path / "s").test[1] == ([2, 4], 3)  # user "10": c, b, d


def test_max_len_keeps_last_max_len_plus_2(tmp_path):
    rows = [("u", f"i{t}", t) for t in range(8)] + [("v", f"i{t}", 10 + t) for t in range(3)]
    cfg = SequenceConfig(k_core=0, max_len=2, out_dir=str(tmp_path / "s"))
    stats = build_splits(snapshot(tmp_path / "snap", rows), cfg)
    s = load_splits(tmp_path / "s")
    # u loses i0..i3; of those only i3 disappears (v has i0..i2)
    assert stats.dropped["truncation"] == {"interactions": 4, "items": 1}
    assert [s.item_ids[i] for i in s.train[0]] == ["i4", "i5"]
    assert s.test[0][1] == s.item_ids.index("i7")
    assert s.train[1] == [s.item_ids.index("i0")]
    assert stats.length["max"] == 4 and accounted(stats) == len(rows)


def test_two_builds_give_identical_bytes(tmp_path):
    src = snapshot(tmp_path / "snap", HAND_ROWS, items={"a": "Apple"})
    a = build_splits(src, SequenceConfig(k_core=0, out_dir=str(tmp_path / "a")))
    b = build_splits(src, SequenceConfig(k_core=0, out_dir=str(tmp_path / "b")))
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b") == a.files
    assert a.dataset_hash == b.dataset_hash


def test_shuffled_input_rows_give_same_splits(tmp_path):
    rng = np.random.default_rng(0)
    times = [rng.choice(1000, size=6, replace=False) for _ in range(40)]  # distinct times per user: no duplicates
    rows = [(f"u{u}", f"i{rng.integers(30)}", int(t)) for u in range(40) for t in times[u]]
    src = snapshot(tmp_path / "snap", rows)
    table = pq.read_table(src / "interactions.parquet")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    pq.write_table(table.take(pa.array(rng.permutation(table.num_rows))), shuffled / "interactions.parquet")
    pq.write_table(pq.read_table(src / "items.parquet"), shuffled / "items.parquet")
    a = build_splits(src, SequenceConfig(k_core=2, out_dir=str(tmp_path / "a")))
    b = build_splits(shuffled, SequenceConfig(k_core=2, out_dir=str(tmp_path / "b")))
    assert a.n_interactions > 100
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    assert a.dataset_hash == b.dataset_hash


def test_contract_failure_leaves_previous_split_dir(tmp_path, monkeypatch):
    src = snapshot(tmp_path / "snap", HAND_ROWS)
    out = tmp_path / "splits"
    build_splits(src, SequenceConfig(k_core=0, out_dir=str(out)))
    before = file_hashes(out)

    make_splits = seq.make_splits

    def padding_as_target(*args, **kwargs):  # a bug that writes the padding id as a test target
        built = make_splits(*args, **kwargs)
        test = built.tables["test.parquet"]
        built.tables["test.parquet"] = test.set_column(2, "target", pa.array([0] * test.num_rows, pa.int32()))
        return built

    monkeypatch.setattr(seq, "make_splits", padding_as_target)
    with pytest.raises(ContractViolation, match="expect_column_values_to_not_be_in_set") as err:
        build_splits(src, SequenceConfig(k_core=0, out_dir=str(out)))
    assert err.value.result.suite == "splits"
    assert file_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap", "splits"]  # no temp dir left behind


def test_crash_while_writing_leaves_previous_split_dir(tmp_path, monkeypatch):
    src = snapshot(tmp_path / "snap", HAND_ROWS)
    out = tmp_path / "splits"
    build_splits(src, SequenceConfig(k_core=0, out_dir=str(out)))
    before = file_hashes(out)
    write_table = pq.write_table

    def crash_on_test(table, where, **kwargs):
        if Path(where).name == "test.parquet":
            raise OSError("disk full")
        return write_table(table, where, **kwargs)

    monkeypatch.setattr(seq.pq, "write_table", crash_on_test)
    with pytest.raises(OSError, match="disk full"):
        build_splits(src, SequenceConfig(k_core=0, max_len=1, out_dir=str(out)))
    assert file_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap", "splits"]


def test_bad_snapshots_are_rejected(tmp_path):
    dup = snapshot(tmp_path / "dup", HAND_ROWS + [("2", "c", 20)])
    with pytest.raises(ValueError, match=r"1 duplicate event\(s\) on \(user_id, item_id, ts\)"):
        build_splits(dup, SequenceConfig(k_core=0, out_dir=str(tmp_path / "s")))

    items = snapshot(tmp_path / "items", HAND_ROWS)
    pq.write_table(pa.table({"item_id": ["a", "a"], "title": ["x", "y"]}), items / "items.parquet")
    with pytest.raises(ContractViolation, match="contract 'items': FAILED"):
        build_splits(items, SequenceConfig(k_core=0, out_dir=str(tmp_path / "s")))

    missing = snapshot(tmp_path / "missing", HAND_ROWS)
    table = pq.read_table(missing / "interactions.parquet").drop_columns(["row_number"])
    pq.write_table(table, missing / "interactions.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['row_number'\]"):
        build_splits(missing, SequenceConfig(k_core=0, out_dir=str(tmp_path / "s")))

    with pytest.raises(ValueError, match="no user has >= 3 interactions after filters and 5-core"):
        build_splits(snapshot(tmp_path / "tiny", HAND_ROWS), SequenceConfig(k_core=5, out_dir=str(tmp_path / "s")))
    with pytest.raises(FileNotFoundError, match="interactions.parquet not found"):
        build_splits(tmp_path / "nowhere", SequenceConfig(out_dir=str(tmp_path / "s")))
    with pytest.raises(ValueError, match="max_len must be None or an integer >= 1"):
        build_splits(tmp_path / "dup", SequenceConfig(max_len=0, out_dir=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()


def test_load_splits_detects_changed_files(tmp_path):
    out = tmp_path / "s"
    build_splits(snapshot(tmp_path / "snap", HAND_ROWS), SequenceConfig(k_core=0, out_dir=str(out)))
    table = pq.read_table(out / "train.parquet")
    pq.write_table(table.slice(0, 1), out / "train.parquet")
    with pytest.raises(ValueError, match="train.parquet: sha256 .* differs from stats.json"):
        load_splits(out)


def test_load_splits_checks_histories_against_train(tmp_path):
    out = tmp_path / "s"
    build_splits(snapshot(tmp_path / "snap", HAND_ROWS), SequenceConfig(k_core=0, out_dir=str(out)))
    valid = pq.read_table(out / "valid.parquet")
    history = pa.array([[1], [4, 2]], pa.list_(pa.int32()))  # user 1's history reordered
    pq.write_table(valid.set_column(1, "history", history), out / "valid.parquet", **seq.PARQUET_OPTIONS)
    stats = json.loads((out / "stats.json").read_text())
    stats["files"] = file_hashes(out)  # a consistent but wrong split dir: only the history check can see it
    stats["dataset_hash"] = seq.dataset_hash(stats["files"])
    stats["stats_sha256"] = seq.stats_digest(stats)
    (out / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="valid.parquet: histories do not match train.parquet"):
        load_splits(out)
