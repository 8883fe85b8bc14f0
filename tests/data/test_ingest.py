"""Batches, idempotence, transactions, the Parquet snapshot and the CLI of the ingestion."""

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from slmrec.data import commands
from slmrec.data import ingest as ingest_module
from slmrec.data.ingest import TABLES, export_snapshot, ingest, make_batch_id

FIX = Path(__file__).parents[1] / "fixtures" / "ingest"
ML = (str(FIX / "ml_small.inter"), str(FIX / "ml_small.item"))


def counts(db) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


def cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="slmrec")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- batches


def test_new_store_gets_all_tables_and_batch_row(tmp_path):
    db = tmp_path / "w.duckdb"
    r = ingest("recbole", ML[0], str(db), items=ML[1])
    assert counts(db) == {"raw_interactions": 12, "quarantine": 0, "ingest_batches": 1, "items": 11,
                          "item_quarantine": 0}  # fmt: skip
    with duckdb.connect(str(db), read_only=True) as con:
        query = "SELECT batch_id, format, rows_read, accepted, quarantined, sha256 FROM ingest_batches"
        batch = con.execute(query).fetchall()
    sha = hashlib.sha256(Path(ML[0]).read_bytes()).hexdigest()
    assert batch == [(r.batch_id, "recbole", 12, 12, 0, sha)]


def test_reingest_writes_nothing_and_says_so(tmp_path):
    db = tmp_path / "w.duckdb"
    first = ingest("recbole", str(FIX / "ml_bad.inter"), str(db))
    before = counts(db)
    again = ingest("recbole", str(FIX / "ml_bad.inter"), str(db))
    assert (first.already_ingested, again.already_ingested) == (False, True)
    assert again.batch_id == first.batch_id
    assert counts(db) == before
    # nothing was written now: zero counts; the counts recorded for the batch sit under their own key
    assert (again.rows_read, again.accepted, again.quarantined, again.quarantine_reasons) == (0, 0, 0, {})
    assert (again.users, again.items, again.catalog_items) == (0, 0, 0)
    same = ("rows_read", "accepted", "quarantined", "quarantine_reasons", "users", "items", "catalog_items")
    assert {k: again.original_batch[k] for k in same} == {k: first.to_dict()[k] for k in same}
    assert first.original_batch is None and again.original_batch["source_file"].endswith("ml_bad.inter")
    assert again.original_batch["accepted"] > 0


def test_same_bytes_elsewhere_is_the_same_batch(tmp_path):
    db = tmp_path / "w.duckdb"
    ingest("seqtxt", str(FIX / "seq_bad.txt"), str(db))
    copy = tmp_path / "copy.txt"
    shutil.copy(FIX / "seq_bad.txt", copy)
    assert ingest("seqtxt", str(copy), str(db)).already_ingested


def test_batch_id_depends_on_format_items_and_column_map():
    base = make_batch_id("events", "a" * 64, None, {"user_id": "u"})
    assert len(base) == 16 and base == make_batch_id("events", "a" * 64, None, {"user_id": "u"})
    others = {
        make_batch_id("seqtxt", "a" * 64, None, {"user_id": "u"}),
        make_batch_id("events", "b" * 64, None, {"user_id": "u"}),
        make_batch_id("events", "a" * 64, "c" * 64, {"user_id": "u"}),
        make_batch_id("events", "a" * 64, None, {"user_id": "v"}),
    }
    assert base not in others and len(others) == 4


def test_events_already_stored_are_duplicates(tmp_path):
    db = tmp_path / "w.duckdb"
    (tmp_path / "day1.csv").write_text("user_id,item_id,ts\nu1,i1,100\nu1,i2,200\n")
    (tmp_path / "day2.csv").write_text("user_id,item_id,ts\nu1,i2,200\nu2,i1,300\n")
    ingest("events", str(tmp_path / "day1.csv"), str(db))
    r = ingest("events", str(tmp_path / "day2.csv"), str(db))
    assert (r.rows_read, r.accepted, r.quarantine_reasons) == (2, 1, {"duplicate_event": 1})
    assert counts(db)["raw_interactions"] == 3


def test_lost_batch_record_still_doubles_nothing(tmp_path):
    db = tmp_path / "w.duckdb"
    ingest("seqtxt", str(FIX / "beauty_head.txt"), str(db))
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM ingest_batches").fetchall()
    r = ingest("seqtxt", str(FIX / "beauty_head.txt"), str(db))
    assert not r.already_ingested
    assert (r.accepted, r.quarantine_reasons) == (0, {"duplicate_event": 2798})
    assert counts(db)["raw_interactions"] == 2798


def test_failure_inside_the_transaction_rolls_back(tmp_path, monkeypatch):
    db = tmp_path / "w.duckdb"
    ingest("seqtxt", str(FIX / "seq_bad.txt"), str(db))
    before = counts(db)
    bad_items = tmp_path / "attrs.json"
    bad_items.write_text('{"5": [1], " ": [2]}')  # an empty id is quarantined, then the catalog write fails

    def failing(*args):  # runs after the interactions and the catalog were inserted
        raise ValueError("boom")

    monkeypatch.setattr(ingest_module, "_write_item_rejects", failing)
    with pytest.raises(ValueError, match="boom"):
        ingest("seqtxt", str(FIX / "beauty_head.txt"), str(db), items=str(bad_items))
    assert counts(db) == before


def test_unreadable_file_leaves_existing_store_unchanged(tmp_path):
    db = tmp_path / "w.duckdb"
    ingest("recbole", ML[0], str(db), items=ML[1])
    before = counts(db)
    (tmp_path / "bad.inter").write_text("not a header\n1\t2\n")
    with pytest.raises(ValueError, match="bad.inter: no valid RecBole header"):
        ingest("recbole", str(tmp_path / "bad.inter"), str(db))
    assert counts(db) == before


def test_incompatible_store_is_refused(tmp_path):
    db = tmp_path / "w.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE raw_interactions (user_id VARCHAR, item_id VARCHAR)").fetchall()
    with pytest.raises(ValueError, match="incompatible store"):
        ingest("recbole", ML[0], str(db))


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        ingest("csv", ML[0], str(tmp_path / "w.duckdb"))


# ----------------------------------------------------------------------------- snapshot


def build(db, order):
    jobs = {
        "recbole": ("recbole", str(FIX / "ml_bad.inter"), None, None),
        "seqtxt": ("seqtxt", str(FIX / "beauty_head.txt"), str(FIX / "beauty_head_item2attributes.json"), None),
        "events": ("events", str(FIX / "events_bad.csv"), None,
                   {"user_id": "user", "item_id": "item", "ts": "time", "rating": "rating"}),  # fmt: skip
    }
    for name in order:
        fmt, path, items, cmap = jobs[name]
        ingest(fmt, path, str(db), items=items, column_map=cmap)


def test_snapshot_bytes_are_deterministic(tmp_path):
    build(tmp_path / "a.duckdb", ["recbole", "seqtxt", "events"])
    build(tmp_path / "b.duckdb", ["events", "seqtxt", "recbole"])  # another order, another ingested_at
    a = export_snapshot(str(tmp_path / "a.duckdb"), str(tmp_path / "snap_a"))
    b = export_snapshot(str(tmp_path / "b.duckdb"), str(tmp_path / "snap_b"))
    assert {k: (v["rows"], v["sha256"]) for k, v in a.items()} == {k: (v["rows"], v["sha256"]) for k, v in b.items()}
    for name in ("interactions.parquet", "items.parquet", "quarantine.parquet"):
        assert (tmp_path / "snap_a" / name).read_bytes() == (tmp_path / "snap_b" / name).read_bytes()
    assert a["interactions"]["rows"] == 6 + 2798 + 6 and a["quarantine"]["rows"] == 9 + 9
    written = sorted(p.name for p in (tmp_path / "snap_a").iterdir())  # no temp files left
    assert written == ["interactions.parquet", "items.parquet", "quarantine.parquet"]
    assert hashlib.sha256((tmp_path / "snap_a" / "items.parquet").read_bytes()).hexdigest() == a["items"]["sha256"]


def test_snapshot_is_sorted_and_has_no_run_columns(tmp_path):
    import pyarrow.parquet as pq

    build(tmp_path / "a.duckdb", ["recbole"])
    export_snapshot(str(tmp_path / "a.duckdb"), str(tmp_path / "snap"))
    table = pq.read_table(tmp_path / "snap" / "interactions.parquet")
    assert "ingested_at" not in table.column_names
    keys = list(zip(table["user_id"].to_pylist(), table["ts"].to_pylist()))
    assert keys == sorted(keys)


def test_snapshot_of_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such DuckDB store"):
        export_snapshot(str(tmp_path / "none.duckdb"), str(tmp_path / "snap"))


# ----------------------------------------------------------------------------- CLI


def test_cli_ingest_json_is_one_object_and_idempotent(tmp_path, capsys):
    db = str(tmp_path / "w.duckdb")
    argv = ["ingest", "--format", "recbole", "--path", ML[0], "--items", ML[1], "--db", db, "--json"]
    code, out, err = cli(argv, capsys)
    report = json.loads(out)
    assert code == 0 and out.count("\n") == 1
    assert {k: report[k] for k in ("rows_read", "accepted", "quarantined", "users", "items")} == {
        "rows_read": 12, "accepted": 12, "quarantined": 0, "users": 10, "items": 10}  # fmt: skip
    assert report["quarantine_reasons"] == {} and len(report["batch_id"]) == 16
    code, out, err = cli(argv, capsys)
    assert code == 0 and json.loads(out)["already_ingested"] is True


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    db = tmp_path / "w.duckdb"
    cli(["ingest", "--format", "seqtxt", "--path", str(FIX / "seq_bad.txt"), "--db", str(db)], capsys)
    before = counts(db)
    missing = str(tmp_path / "missing.inter")
    code, out, err = cli(["ingest", "--format", "recbole", "--path", missing, "--db", str(db)], capsys)
    assert code == 2 and "missing.inter" in err and "Traceback" not in err and out == ""
    (tmp_path / "bad.json").write_text("{broken")
    argv = ["ingest", "--format", "usermap-json", "--path", str(tmp_path / "bad.json"), "--db", str(db), "--json"]
    code, out, err = cli(argv, capsys)
    assert code == 2 and "bad.json: not JSON" in err and out == ""
    assert counts(db) == before


def test_cli_needs_params_or_the_three_flags(tmp_path, capsys):
    code, out, err = cli(["ingest", "--format", "seqtxt"], capsys)
    assert code == 2 and "--path --db" in err


def test_cli_column_map_and_snapshot(tmp_path, capsys):
    snap = tmp_path / "snap"
    argv = ["ingest", "--format", "events", "--path", str(FIX / "events_bad.csv"), "--db", str(tmp_path / "w.duckdb"),
            "--column-map", "user_id=user,item_id=item,ts=time,rating=rating",
            "--snapshot", str(snap), "--json"]  # fmt: skip
    code, out, err = cli(argv, capsys)
    report = json.loads(out)
    assert code == 0 and report["accepted"] == 6 and report["quarantined"] == 9
    assert report["snapshot"]["interactions"]["rows"] == 6 and (snap / "quarantine.parquet").exists()


def test_column_map_parsing():
    got = commands.parse_column_map("user_id=uid, item_id=iid,ts=time")
    assert got == {"user_id": "uid", "item_id": "iid", "ts": "time"}
    with pytest.raises(argparse.ArgumentTypeError, match="bad column map entry 'user_id'"):
        commands.parse_column_map("user_id,item_id=iid")


def test_cli_ingest_from_params(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIX / "ml_small.inter", tmp_path / "ml.inter")
    shutil.copy(FIX / "ml_small.item", tmp_path / "ml.item")
    (tmp_path / "params.yaml").write_text(
        "data:\n  format: recbole\n  path: ml.inter\n  items: ml.item\n  db: store/w.duckdb\n  snapshot_dir: snap\n"
    )
    (tmp_path / "store").mkdir()
    code, out, err = cli(["ingest", "--params", "params.yaml", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["accepted"] == 12 and report["catalog_items"] == 11
    assert report["snapshot"]["items"]["rows"] == 11 and (tmp_path / "snap" / "interactions.parquet").exists()
    # a flag overrides params: no item file this time, another store
    code, out, err = cli(["ingest", "--params", "params.yaml", "--items", "", "--db", "other.duckdb", "--json"], capsys)
    assert code == 0 and json.loads(out)["catalog_items"] == 0


def test_cli_params_with_unknown_key_exits_2(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("data:\n  formt: recbole\n")
    code, out, err = cli(["ingest", "--params", str(tmp_path / "params.yaml")], capsys)
    assert code == 2 and "formt" in err


def test_cli_sequences_passes_params_to_the_stage(tmp_path, capsys, monkeypatch):
    import slmrec.stages.data as stage

    calls = []

    def sequences_stage(interactions_dir, cfg, stats_path=None):
        calls.append((interactions_dir, cfg, stats_path))
        return {"n_users": 3}

    monkeypatch.setattr(stage, "sequences_stage", sequences_stage)
    (tmp_path / "params.yaml").write_text("data:\n  snapshot_dir: snapdir\nsequences:\n  k_core: 3\n")
    params = str(tmp_path / "params.yaml")
    code, out, err = cli(["sequences", "--params", params, "--out", "splits_x", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"n_users": 3}
    (interactions_dir, cfg, stats_path), = calls
    assert (interactions_dir, cfg.k_core, cfg.out_dir, stats_path) == ("snapdir", 3, "splits_x", None)
    code, out, err = cli(["sequences", "--params", params, "--interactions", "other", "--stats", "s.json"], capsys)
    assert code == 0 and calls[-1][0] == "other" and calls[-1][1].out_dir == "data/splits"
    assert calls[-1][2] == "s.json"


def test_registered_in_the_main_cli(tmp_path, capsys):
    from slmrec import cli as main_cli

    db = str(tmp_path / "w.duckdb")
    code = main_cli.main(["ingest", "--format", "seqtxt", "--path", str(FIX / "seq_bad.txt"), "--db", db, "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["accepted"] == 7
