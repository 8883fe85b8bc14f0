"""Every reader on a small real sample and on a file with planted bad rows (counts are exact)."""

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from slmrec.data.ingest import ingest
from slmrec.data.readers import READERS, read_seqtxt

FIX = Path(__file__).parents[1] / "fixtures" / "ingest"


def run(tmp_path, fmt, name, items=None, column_map=None, path=None):
    report = ingest(fmt, str(path or FIX / name), str(tmp_path / "w.duckdb"),
                    items=str(FIX / items) if items else None, column_map=column_map)  # fmt: skip
    assert report.accepted + report.quarantined == report.rows_read
    assert sum(report.quarantine_reasons.values()) == report.quarantined
    return report


def rows(tmp_path, sql, params=()):
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_registry_has_every_format():
    assert sorted(READERS) == ["amazon-json", "events", "recbole", "seqtxt", "usermap-json"]


# ----------------------------------------------------------------------------- real samples


def test_seqtxt_beauty_sample(tmp_path):
    r = run(tmp_path, "seqtxt", "beauty_head.txt", items="beauty_head_item2attributes.json")
    assert (r.rows_read, r.accepted, r.quarantined, r.users, r.items) == (2798, 2798, 0, 200, 2022)
    assert r.catalog_items == 2022
    # line 1 is "1 1 2 3 4 5": ts is the position, row_number the line
    got = rows(tmp_path, "SELECT item_id, ts, row_number, item_pos FROM raw_interactions WHERE user_id = '1' ORDER BY 2")
    assert got == [("1", 0, 1, 0), ("2", 1, 1, 1), ("3", 2, 1, 2), ("4", 3, 1, 3), ("5", 4, 1, 4)]
    attrs = rows(tmp_path, "SELECT attributes FROM items WHERE item_id = '4'")[0][0]
    assert json.loads(attrs) == {"attribute_ids": [1, 2, 3]}


def test_seqtxt_reader_positions_vectorised():
    read = read_seqtxt(str(FIX / "seq_bad.txt"), {})
    ev = read.events.to_pandas()
    good = ev[ev.reason.isna()]
    assert good.item_pos.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert good.ts.tolist() == ["0", "1", "2", "0", "1", "2", "0", "1", "2", "0"]
    assert ev[ev.reason.notna()].row_number.tolist() == [3, 4]


def test_usermap_scientific_sample(tmp_path):
    r = run(tmp_path, "usermap-json", "scientific_head.inter.json", items="scientific_head.item.json")
    assert (r.rows_read, r.accepted, r.quarantined, r.users, r.items, r.catalog_items) == (90, 90, 0, 12, 72, 72)
    first = json.loads((FIX / "scientific_head.inter.json").read_text())["0"]
    got = rows(tmp_path, "SELECT item_id FROM raw_interactions WHERE user_id = '0' ORDER BY ts")
    assert [g[0] for g in got] == [str(i) for i in first]
    cats = [json.loads(c[0]) for c in rows(tmp_path, "SELECT categories FROM items WHERE categories IS NOT NULL")]
    assert ["Industrial & Scientific", "Tapes, Adhesives & Sealants", "Adhesive Tapes"] in cats  # ", " stays in a level
    assert rows(tmp_path, "SELECT count(*) FROM items WHERE categories IS NULL")[0][0] == 1  # one empty category
    title, attrs = rows(tmp_path, "SELECT title, attributes FROM items WHERE item_id = '0'")[0]
    assert title.startswith("SUPCO SPP6") and json.loads(attrs)["brand"] == "Sealed Unit Parts Co., Inc."


def test_recbole_ml100k_like_pair(tmp_path):
    r = run(tmp_path, "recbole", "ml_small.inter", items="ml_small.item")
    assert (r.rows_read, r.accepted, r.quarantined, r.users, r.items, r.catalog_items) == (12, 12, 0, 10, 10, 11)
    got = rows(tmp_path, "SELECT ts, rating, row_number FROM raw_interactions WHERE user_id='196' AND item_id='242'")
    assert got == [(881250949, 3.0, 2)]
    title, cats, attrs = rows(tmp_path, "SELECT title, categories, attributes FROM items WHERE item_id = '543'")[0]
    assert title == "Misérables, Les" and json.loads(cats) == ["Drama", "Musical"]
    assert json.loads(attrs) == {"release_year": "1995"}


def test_amazon_2014_gz_with_literal_metadata(tmp_path):
    r = run(tmp_path, "amazon-json", "amazon2014_reviews.json.gz", items="amazon2014_meta.json")
    assert (r.rows_read, r.accepted, r.quarantined, r.users, r.items, r.catalog_items) == (21, 21, 0, 3, 19, 19)
    first = json.loads(gzip.decompress((FIX / "amazon2014_reviews.json.gz").read_bytes()).splitlines()[0])
    assert rows(tmp_path, "SELECT user_id, item_id, ts, rating FROM raw_interactions WHERE row_number = 1") == [
        (first["reviewerID"], first["asin"], first["unixReviewTime"], first["overall"])]  # fmt: skip
    query = "SELECT title, categories, attributes FROM items WHERE item_id = 'B0000YUX4O'"
    title, cats, attrs = rows(tmp_path, query)[0]
    assert title == "Beauty product 1"
    assert json.loads(cats) == ["Beauty", "Skin Care", "Face"]  # list of lists, flattened in order
    assert json.loads(attrs) == {"brand": "Brand 1 d'Or"}


def test_amazon_2018_jsonl_with_metadata(tmp_path):
    r = run(tmp_path, "amazon-json", "amazon2018_reviews.json", items="amazon2018_meta.json")
    assert (r.rows_read, r.accepted, r.users, r.items) == (9, 9, 3, 4)
    assert (r.catalog_items, r.catalog_duplicates) == (3, 1)  # the repeated asin: first record wins
    items = {row[0]: row[1:] for row in rows(tmp_path, "SELECT item_id, title, categories, attributes FROM items")}
    assert items["B000052YPE"][0] == "Beaker 250 ml"
    assert json.loads(items["B00004Z1O7"][1])[1] == "Tapes, Adhesives & Sealants"
    assert items["B0000223SI"][1:] == (None, None)  # empty category list and empty brand


def test_events_tsv_iso_offsets_and_event_column(tmp_path):
    cmap = {"user_id": "uid", "item_id": "iid", "ts": "when", "event": "kind"}
    r = run(tmp_path, "events", "events_small.tsv", column_map=cmap)
    assert (r.rows_read, r.accepted) == (3, 3)
    got = rows(tmp_path, "SELECT user_id, item_id, ts, event, row_number FROM raw_interactions ORDER BY row_number")
    # 10:00+02:00 = 08:00Z; a bare date is midnight UTC
    assert got == [
        ("u1", "i1", 1704096000, "view", 2),
        ("u1", "i2", 1704099600, "buy", 3),
        ("u2", "i1", 1704153600, "view", 4),
    ]


def test_events_jsonl_milliseconds(tmp_path):
    cmap = {"user_id": "user", "item_id": "item", "ts": "ts_ms", "rating": "rating"}
    r = run(tmp_path, "events", "events_small.jsonl", column_map=cmap)
    assert (r.rows_read, r.accepted) == (3, 3)
    got = rows(tmp_path, "SELECT ts, rating FROM raw_interactions ORDER BY row_number")
    assert got == [(1700000000, 4.0), (1700000001, None), (1700000500, 2.5)]


def test_events_parquet_typed_columns(tmp_path):
    df = pd.DataFrame({
        "u": ["a", "b", "a", None],
        "i": [1, 2, 3, 4],
        "t": pd.to_datetime(["2020-05-01 00:00:00", "2020-05-01 00:00:30", "2020-05-02", "2020-05-03"], format="ISO8601"),
        "r": [1.5, 2.0, None, 3.0],
    })  # fmt: skip
    df.to_parquet(tmp_path / "ev.parquet", index=False)
    cmap = {"user_id": "u", "item_id": "i", "ts": "t", "rating": "r"}
    r = run(tmp_path, "events", None, path=tmp_path / "ev.parquet", column_map=cmap)
    assert (r.rows_read, r.accepted, r.quarantine_reasons) == (4, 3, {"missing_user": 1})
    got = rows(tmp_path, "SELECT user_id, item_id, ts, rating, row_number FROM raw_interactions ORDER BY row_number")
    assert got == [("a", "1", 1588291200, 1.5, 1), ("b", "2", 1588291230, 2.0, 2), ("a", "3", 1588377600, None, 3)]


def test_events_default_column_names(tmp_path):
    (tmp_path / "ev.csv").write_text("user_id,item_id,ts,rating,other\nx,y,10,1,z\n")
    r = run(tmp_path, "events", None, path=tmp_path / "ev.csv")
    assert (r.accepted, rows(tmp_path, "SELECT ts, rating FROM raw_interactions")) == (1, [(10, 1.0)])


# ----------------------------------------------------------------------------- planted bad rows


BAD = {  # format, file, column map, accepted, reasons
    "recbole": ("ml_bad.inter", None, 6, {"unparseable": 2, "missing_user": 1, "missing_item": 1,
                                          "bad_timestamp": 3, "bad_rating": 1, "duplicate_event": 1}),
    "seqtxt": ("seq_bad.txt", None, 7, {"unparseable": 2, "duplicate_event": 3}),
    "usermap-json": ("usermap_bad.json", None, 9, {"unparseable": 3, "missing_item": 1}),
    "amazon-json": ("amazon_bad.json", None, 5, {"unparseable": 2, "missing_user": 1, "bad_timestamp": 1,
                                                 "bad_rating": 1, "duplicate_event": 1}),
    "events": ("events_bad.csv", {"user_id": "user", "item_id": "item", "ts": "time", "rating": "rating"}, 6,
               {"unparseable": 3, "missing_user": 1, "missing_item": 1, "bad_timestamp": 2, "bad_rating": 1,
                "duplicate_event": 1}),
}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(BAD))
def test_planted_bad_rows_are_quarantined_with_reasons(tmp_path, fmt):
    name, cmap, accepted, reasons = BAD[fmt]
    r = run(tmp_path, fmt, name, column_map=cmap)
    assert r.accepted == accepted
    assert r.quarantine_reasons == dict(sorted(reasons.items()))
    assert r.rows_read == accepted + sum(reasons.values())
    stored = rows(tmp_path, "SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason")
    assert dict(stored) == reasons
    assert rows(tmp_path, "SELECT count(*) FROM raw_interactions")[0][0] == accepted
    assert rows(tmp_path, "SELECT count(*) FROM quarantine WHERE raw IS NULL")[0][0] == 0  # raw text kept


def test_quarantine_keeps_raw_text_and_position(tmp_path):
    run(tmp_path, "recbole", "ml_bad.inter")
    got = rows(tmp_path, "SELECT row_number, raw, reason FROM quarantine ORDER BY row_number")
    assert got[0] == (5, "1\t2\t3", "unparseable")
    assert (8, "8\t9\t3\tabc", "bad_timestamp") in got
    assert (11, "", "unparseable") in got  # the blank line
    assert (14, "186\t302\t4\t891717742", "duplicate_event") in got  # same user, item, ts as line 3
    # the rating-less row is accepted with a NULL rating; fractional seconds are floored
    assert rows(tmp_path, "SELECT rating FROM raw_interactions WHERE user_id = '166'") == [(None,)]
    assert rows(tmp_path, "SELECT ts FROM raw_interactions WHERE user_id = '298'") == [(884182806,)]


def test_quarantine_of_one_event_inside_a_line(tmp_path):
    run(tmp_path, "usermap-json", "usermap_bad.json")
    got = rows(tmp_path, "SELECT row_number, item_pos, reason FROM quarantine ORDER BY row_number, item_pos")
    assert got == [(2, 0, "unparseable"), (3, 0, "unparseable"), (4, 1, "missing_item"), (5, 1, "unparseable")]


def test_gzipped_csv_reads_the_same(tmp_path):
    gz = tmp_path / "events_bad.csv.gz"
    gz.write_bytes(gzip.compress((FIX / "events_bad.csv").read_bytes()))
    name, cmap, accepted, reasons = BAD["events"]
    r = run(tmp_path, "events", None, path=gz, column_map=cmap)
    assert (r.accepted, r.quarantine_reasons) == (accepted, dict(sorted(reasons.items())))


def test_milliseconds_are_detected_per_batch(tmp_path):
    (tmp_path / "ms.csv").write_text("user_id,item_id,ts\na,1,1700000000000\na,2,1700000060000\nb,1,9999999999999999\n")
    r = run(tmp_path, "events", None, path=tmp_path / "ms.csv")
    assert (r.accepted, r.quarantine_reasons) == (2, {"bad_timestamp": 1})
    assert [t for (t,) in rows(tmp_path, "SELECT ts FROM raw_interactions ORDER BY ts")] == [1700000000, 1700000060]


def test_seqtxt_crlf_line_endings(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"1 5 6\r\n2 7\r\n")
    r = run(tmp_path, "seqtxt", None, path=crlf)
    assert (r.accepted, r.quarantined) == (3, 0)
    assert rows(tmp_path, "SELECT item_id FROM raw_interactions WHERE user_id = '1' ORDER BY ts") == [("5",), ("6",)]


# ----------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize(
    "fmt, content, cmap, message",
    [
        ("recbole", "user item\n1 2\n", None, "no valid RecBole header"),
        ("recbole", "user_id:token\trating:float\n1\t2\n", None, "no item_id column"),
        ("recbole", "", None, "empty file"),
        ("usermap-json", '{"0": [1, 2]', None, "not JSON"),
        ("usermap-json", "[1, 2]", None, "expected a JSON object"),
        ("amazon-json", "garbage\nmore garbage\n", None, "not a JSON-lines file"),
        ("seqtxt", "\x00\x01binary", None, "binary file"),
        ("seqtxt", "1\n2\n3\n", None, "wrong format"),
        ("events", "a,b\n1,2\n", {"user_id": "a", "item_id": "b", "ts": "c"}, "not in the file"),
        ("events", "a,b,c\n1,2,3\n", {"user_id": "a", "item_id": "b"}, r"no column recognised as \['ts'\]"),
        ("events", "a,b,c\n1,2,3\n", {"user": "a", "item_id": "b", "ts": "c"}, "unknown canonical"),
        ("seqtxt", "1 2 3\n", {"user_id": "x"}, "events format only"),
    ],
)
def test_unreadable_file_is_an_error_and_leaves_no_store(tmp_path, fmt, content, cmap, message):
    suffix = ".csv" if fmt == "events" else ".txt"
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content.encode("utf-8"))
    with pytest.raises(ValueError, match=message) as err:
        ingest(fmt, str(path), str(tmp_path / "w.duckdb"), column_map=cmap)
    assert str(path) in str(err.value) or "column map" in str(err.value) or "format only" in str(err.value)
    assert not (tmp_path / "w.duckdb").exists()


def test_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("1 caf\xe9 2\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        ingest("seqtxt", str(path), str(tmp_path / "w.duckdb"))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.inter"):
        ingest("recbole", str(tmp_path / "nope.inter"), str(tmp_path / "w.duckdb"))
    with pytest.raises(FileNotFoundError, match="nope.item"):
        ingest("recbole", str(FIX / "ml_small.inter"), str(tmp_path / "w.duckdb"), items=str(tmp_path / "nope.item"))


def test_broken_item_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.item"
    shutil.copy(FIX / "ml_small.item", bad)
    with open(bad, "a") as f:
        f.write("999\tonly two fields\n")
    with pytest.raises(ValueError, match=r"bad.item:13: expected 4"):
        ingest("recbole", str(FIX / "ml_small.inter"), str(tmp_path / "w.duckdb"), items=str(bad))
    assert not (tmp_path / "w.duckdb").exists()


def test_recbole_without_timestamp_uses_row_order_per_user(tmp_path):
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\nu1\ta\nu2\tb\nu1\tc\nu1\td\n")
    r = run(tmp_path, "recbole", None, path=inter)
    got = rows(tmp_path, "SELECT user_id, item_id, ts FROM raw_interactions ORDER BY row_number")
    assert r.accepted == 4 and got == [("u1", "a", 0), ("u2", "b", 0), ("u1", "c", 1), ("u1", "d", 2)]


def test_absurd_numbers_are_bad_timestamps_not_crashes(tmp_path):
    (tmp_path / "t.csv").write_text("user_id,item_id,ts\na,1,1e300\na,2,inf\na,3,nan\na,4,100\n")
    r = run(tmp_path, "events", None, path=tmp_path / "t.csv")
    assert (r.accepted, r.quarantine_reasons) == (1, {"bad_timestamp": 3})


def test_broken_amazon_metadata_line_is_an_error(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'B1', 'title': 'ok'}\n{'asin': 'B2', 'title': \n")
    with pytest.raises(ValueError, match=r"meta.json:2: neither JSON nor a Python literal"):
        ingest("amazon-json", str(FIX / "amazon_bad.json"), str(tmp_path / "w.duckdb"), items=str(meta))
