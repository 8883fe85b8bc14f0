"""Event logs in the common layouts ingest without --column-map; unclear headers get a ready-to-paste map."""

import argparse
import json

import duckdb
import pandas as pd
import pytest

from slmrec.config import DataConfig
from slmrec.data import commands
from slmrec.data.ingest import ingest
from slmrec.data.readers import resolve_column_map

# MovieLens ratings.csv (ml-latest): seconds
MOVIELENS = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n7,31,4.0,851866703\n"
# RetailRocket events.csv: milliseconds, extra columns, an empty transactionid
RETAILROCKET = (
    "timestamp,visitorid,event,itemid,transactionid\n"
    "1433221332117,257597,view,355908,\n"
    "1433224214164,992329,view,248676,\n"
    "1433221999827,111016,addtocart,318965,\n"
    "1433221955914,483717,transaction,253185,4000\n"
)


def cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="slmrec")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def stored(db) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT user_id, item_id, ts, rating, event FROM raw_interactions ORDER BY row_number").fetchall()


def test_movielens_ratings_csv_needs_no_column_map(tmp_path, capsys):
    (tmp_path / "ratings.csv").write_text(MOVIELENS)
    db = tmp_path / "w.duckdb"
    code, out, err = cli(["ingest", "--format", "events", "--path", str(tmp_path / "ratings.csv"), "--db", str(db),
                          "--json"], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["column_map"] == {"user_id": "userId", "item_id": "movieId", "ts": "timestamp", "rating": "rating"}
    assert (report["accepted"], report["quarantined"]) == (3, 0)
    assert stored(db)[0] == ("1", "31", 1260759144, 2.5, None)


def test_retailrocket_events_milliseconds_and_event_column(tmp_path, capsys):
    (tmp_path / "events.csv").write_text(RETAILROCKET)
    db = tmp_path / "w.duckdb"
    code, out, err = cli(["ingest", "--format", "events", "--path", str(tmp_path / "events.csv"), "--db", str(db)],
                         capsys)  # fmt: skip
    assert code == 0, err
    assert "columns: user_id=visitorid,item_id=itemid,ts=timestamp,event=event" in out
    rows = stored(db)
    assert rows[0] == ("257597", "355908", 1433221332, None, "view")  # ms floored to seconds
    assert {r[4] for r in rows} == {"view", "addtocart", "transaction"}


def test_parquet_and_jsonl_are_detected_too(tmp_path):
    pd.DataFrame({"customer_id": ["a", "b"], "product_id": [10, 11], "event_time": pd.to_datetime(
        ["2020-05-01 00:00:00", "2020-05-01 00:00:30"]), "score": [1.0, 2.0]}).to_parquet(tmp_path / "e.parquet")
    r = ingest("events", str(tmp_path / "e.parquet"), str(tmp_path / "p.duckdb"))
    assert r.column_map == {"user_id": "customer_id", "item_id": "product_id", "ts": "event_time", "rating": "score"}
    assert stored(tmp_path / "p.duckdb") == [("a", "10", 1588291200, 1.0, None), ("b", "11", 1588291230, 2.0, None)]

    # JSON lines: keys may differ per line (the union is mapped; a key a line lacks reads as null there)
    (tmp_path / "e.jsonl").write_text('{"reviewerID": "u1", "asin": "B1", "unixReviewTime": 1400000000, "overall": 5}\n'
                                      '{"reviewerID": "u2", "asin": "B2", "unixReviewTime": 1400000100}\n')
    r = ingest("events", str(tmp_path / "e.jsonl"), str(tmp_path / "j.duckdb"))
    assert r.column_map == {"user_id": "reviewerID", "item_id": "asin", "ts": "unixReviewTime", "rating": "overall"}
    assert stored(tmp_path / "j.duckdb") == [("u1", "B1", 1400000000, 5.0, None), ("u2", "B2", 1400000100, None, None)]


def test_names_are_case_and_separator_insensitive():
    got = resolve_column_map("f.csv", ["USER ID", "Item-Id", "Time", "extra"], {})
    assert got == {"user_id": "USER ID", "item_id": "Item-Id", "ts": "Time"}
    # an explicit entry wins; the rest is still recognised; a map may name a column in another case
    got = resolve_column_map("f.csv", ["userId", "movieId", "ts", "when"], {"ts": "WHEN"})
    assert got == {"user_id": "userId", "item_id": "movieId", "ts": "when"}


def test_ambiguous_and_missing_columns_list_the_columns_and_the_map_to_write(tmp_path):
    with pytest.raises(ValueError) as err:
        resolve_column_map("f.csv", ["user_id", "item_id", "timestamp", "datetime"], {})
    msg = str(err.value)
    assert "ts could be any of ['timestamp', 'datetime']" in msg
    assert "columns found: ['user_id', 'item_id', 'timestamp', 'datetime']" in msg
    assert "--column-map user_id=user_id,item_id=item_id,ts=timestamp" in msg

    (tmp_path / "odd.csv").write_text("who,what,when\na,b,1\n")
    with pytest.raises(ValueError) as err:
        ingest("events", str(tmp_path / "odd.csv"), str(tmp_path / "w.duckdb"))
    msg = str(err.value)
    assert "no column recognised as ['user_id', 'item_id', 'ts']" in msg and "['who', 'what', 'when']" in msg
    assert "--column-map user_id=COLUMN,item_id=COLUMN,ts=COLUMN" in msg
    assert not (tmp_path / "w.duckdb").exists()
    # the hint, filled in, works
    r = ingest("events", str(tmp_path / "odd.csv"), str(tmp_path / "w.duckdb"),
               column_map=commands.parse_column_map("user_id=who,item_id=what,ts=when"))
    assert r.accepted == 1


def test_cli_error_for_an_unmappable_header_is_one_line(tmp_path, capsys):
    (tmp_path / "odd.csv").write_text("who,what,when\na,b,1\n")
    code, out, err = cli(["ingest", "--format", "events", "--path", str(tmp_path / "odd.csv"),
                          "--db", str(tmp_path / "w.duckdb"), "--json"], capsys)  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1 and "--column-map user_id=COLUMN" in err


def test_repeated_batch_reports_its_column_map_and_original_counts(tmp_path, capsys):
    (tmp_path / "ratings.csv").write_text(MOVIELENS)
    argv = ["ingest", "--format", "events", "--path", str(tmp_path / "ratings.csv"), "--db", str(tmp_path / "w.duckdb")]
    assert cli(argv + ["--json"], capsys)[0] == 0
    code, out, err = cli(argv + ["--json"], capsys)
    again = json.loads(out)
    assert (again["already_ingested"], again["rows_read"], again["accepted"], again["quarantined"]) == (True, 0, 0, 0)
    assert again["original_batch"]["accepted"] == 3 and again["column_map"]["user_id"] == "userId"
    code, out, err = cli(argv, capsys)
    assert "nothing written now" in out and "accepted 3" in out


@pytest.mark.parametrize(
    "values, expected",
    [
        (["1433221332117", "1433221332999"], [1433221332, 1433221332]),  # ms
        (["1433221332117000", "1433221332000001"], [1433221332, 1433221332]),  # us
        (["1433221332117000000", "1433221333000000000"], [1433221332, 1433221333]),  # ns
        (["2015-06-02T05:02:12Z", "2015-06-02 07:02:12+02:00", "2015-06-02"], [1433221332, 1433221332, 1433203200]),
        (["1433221332.9", "-5"], [1433221332]),  # fractions floored; before 1970: bad_timestamp
    ],
)
def test_timestamp_units(tmp_path, values, expected):
    lines = "".join(f"u,i{k},{v}\n" for k, v in enumerate(values))
    (tmp_path / "t.csv").write_text("user_id,item_id,ts\n" + lines)
    r = ingest("events", str(tmp_path / "t.csv"), str(tmp_path / "w.duckdb"))
    assert sorted(t for _, _, t, _, _ in stored(tmp_path / "w.duckdb")) == sorted(expected)
    assert r.accepted + r.quarantined == r.rows_read == len(values)


def test_a_seconds_value_in_a_milliseconds_log_is_quarantined_not_moved_to_1970(tmp_path):
    (tmp_path / "t.csv").write_text("user_id,item_id,ts\nu,a,1433221332117\nu,b,1433221332999\nu,c,1433221332\n")
    r = ingest("events", str(tmp_path / "t.csv"), str(tmp_path / "w.duckdb"))
    assert (r.accepted, r.quarantine_reasons) == (2, {"bad_timestamp": 1})


def test_landing_files_without_a_column_map_are_detected(tmp_path):
    from slmrec.stages.data import rebuild_store

    (tmp_path / "ratings.csv").write_text(MOVIELENS)
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "2015-06-02.csv").write_text(RETAILROCKET)
    cfg = DataConfig(format="events", path=str(tmp_path / "ratings.csv"), items=None, db=str(tmp_path / "w.duckdb"),
                     column_map={}, landing_dir=str(landing), landing_format="events", landing_column_map={},
                     snapshot_dir=str(tmp_path / "snap"))  # fmt: skip
    report = rebuild_store(cfg, cfg.snapshot_dir)
    assert [s["accepted"] for s in report["sources"]] == [3, 4]
