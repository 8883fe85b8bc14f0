"""Item files of any shape with any sequence format; unusable item records are quarantined and counted."""

import json
from pathlib import Path

import duckdb
import pytest

from slmrec.data.ingest import ingest
from slmrec.data.readers import ITEM_SHAPES, read_item_file

FIX = Path(__file__).parents[1] / "fixtures" / "ingest"
BEAUTY_ITEMS = FIX / "beauty_head.item.json"  # Beauty.item.json shape: {"id": {asin, title, categories}}


def rows(db, sql):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_beauty_item_json_with_seqtxt(tmp_path):
    """The case issue 19 names: `--format seqtxt --items Beauty.item.json` was refused."""
    db = tmp_path / "w.duckdb"
    r = ingest("seqtxt", str(FIX / "beauty_head.txt"), str(db), items=str(BEAUTY_ITEMS))
    assert (r.accepted, r.catalog_items, r.catalog_quarantined, r.catalog_shape) == (2798, 180, 0, "item-map")
    title, cats, attrs = rows(db, "SELECT title, categories, attributes FROM items WHERE item_id = '1'")[0]
    assert title == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert json.loads(cats) == ["Beauty", "Makeup", "Nails", "Nail Polish"]
    assert json.loads(attrs) == {"asin": "B004756YJA"}
    assert rows(db, "SELECT title FROM items WHERE item_id = '495'") == [(None,)]  # empty title in the source


def test_s3rec_attribute_lists_still_read(tmp_path):
    r = ingest("seqtxt", str(FIX / "beauty_head.txt"), str(tmp_path / "w.duckdb"),
               items=str(FIX / "beauty_head_item2attributes.json"))  # fmt: skip
    assert (r.catalog_items, r.catalog_quarantined) == (2022, 0)
    attrs = rows(tmp_path / "w.duckdb", "SELECT attributes FROM items WHERE item_id = '4'")[0][0]
    assert json.loads(attrs) == {"attribute_ids": [1, 2, 3]}


@pytest.mark.parametrize(
    "fmt, path, cmap",
    [
        ("seqtxt", "beauty_head.txt", None),
        ("usermap-json", "scientific_head.inter.json", None),
        ("events", "events_small.tsv", {"user_id": "uid", "item_id": "iid", "ts": "when", "event": "kind"}),
        ("recbole", "ml_small.inter", None),
    ],
)
def test_every_format_takes_every_item_shape(tmp_path, fmt, path, cmap):
    for items, shape in [("beauty_head.item.json", "item-map"), ("scientific_head.item.json", "item-map"),
                         ("ml_small.item", "recbole-item"), ("amazon2018_meta.json", "amazon-meta"),
                         ("amazon2014_meta.json", "amazon-meta")]:  # fmt: skip
        db = tmp_path / f"{items}.duckdb"
        r = ingest(fmt, str(FIX / path), str(db), items=str(FIX / items), column_map=cmap)
        assert r.catalog_shape == shape and r.catalog_items > 0, items


def test_malformed_item_records_are_quarantined_and_counted(tmp_path):
    items = tmp_path / "items.json"
    items.write_text(json.dumps({
        "1": {"title": "Good one", "categories": "A,B", "brand": "Acme"},
        " ": {"title": "no id"},                          # missing_item_id
        "3": "just a string",                             # bad_record
        "4": {"title": ["not", "text"]},                  # bad_field
        "5": {"title": "ok", "categories": 7},            # bad_field
        "6": [11, 12],                                    # S3-Rec attribute ids: fine in the same file
        "7": {"title": "  ", "categories": ["X", ["Y"]]},  # blank title -> NULL; nested category list flattened
    }))  # fmt: skip
    db = tmp_path / "w.duckdb"
    r = ingest("seqtxt", str(FIX / "seq_bad.txt"), str(db), items=str(items))
    assert r.catalog_items == 3 and r.catalog_quarantined == 4
    assert r.catalog_quarantine_reasons == {"bad_field": 2, "bad_record": 1, "missing_item_id": 1}
    got = rows(db, "SELECT record_number, item_id, reason FROM item_quarantine ORDER BY record_number")
    assert got == [(2, None, "missing_item_id"), (3, "3", "bad_record"), (4, "4", "bad_field"), (5, "5", "bad_field")]
    raw = rows(db, "SELECT raw FROM item_quarantine WHERE item_id = '3'")[0][0]
    assert json.loads(raw) == {"3": "just a string"}  # the record as it was, for a person to fix
    assert rows(db, "SELECT title, categories FROM items WHERE item_id = '7'") == [(None, '["X", "Y"]')]
    assert json.loads(rows(db, "SELECT attributes FROM items WHERE item_id = '1'")[0][0]) == {"brand": "Acme"}

    again = ingest("seqtxt", str(FIX / "seq_bad.txt"), str(db), items=str(items))  # recorded counts come back
    assert again.already_ingested and again.original_batch["catalog_quarantined"] == 4


def test_repeated_item_id_keeps_the_first_record(tmp_path):
    items = tmp_path / "items.json"
    items.write_text('{"5": {"title": "first"}, "6": {"title": "x"}, "5": {"title": "second"}}')
    read = read_item_file(str(items))
    assert [r["title"] for r in read.items.to_pylist()] == ["first", "x", "second"]  # json.loads would keep one
    db = tmp_path / "w.duckdb"
    r = ingest("seqtxt", str(FIX / "seq_bad.txt"), str(db), items=str(items))
    assert (r.catalog_items, r.catalog_duplicates) == (2, 1)
    assert rows(db, "SELECT title FROM items WHERE item_id = '5'") == [("first",)]


def test_unknown_item_file_shape_is_refused_naming_the_shapes(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item,title\n1,x\n")
    with pytest.raises(ValueError, match="not an item file of a known shape.*recbole-item.*item-map.*amazon-meta"):
        read_item_file(str(items))
    assert list(ITEM_SHAPES) == ["recbole-item", "item-map", "amazon-meta"]
    top_level_list = tmp_path / "list.json"
    top_level_list.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an item file"):
        read_item_file(str(top_level_list))


def test_cli_ingest_takes_an_item_map(tmp_path, capsys):
    from slmrec import cli as slmrec_cli

    db = str(tmp_path / "w.duckdb")
    argv = ["ingest", "--format", "seqtxt", "--path", str(FIX / "beauty_head.txt"), "--items", str(BEAUTY_ITEMS),
            "--db", db, "--json"]  # fmt: skip
    assert slmrec_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["catalog_items"], report["catalog_quarantined"], report["catalog_shape"]) == (180, 0, "item-map")


def test_experiment_takes_an_item_map(tmp_path, capsys):
    from slmrec import cli as slmrec_cli

    lines = [" ".join([f"u{u}", *[str((u * 3 + k) % 20 + 1) for k in range(8)]]) for u in range(30)]
    (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
    items = {str(i): {"title": f"item {i}", "categories": "Beauty,Makeup" if i % 2 else "Beauty,Skin Care"}
             for i in range(1, 21)}  # fmt: skip
    items["21"] = 5  # a record that is no object: quarantined, the experiment goes on
    (tmp_path / "items.json").write_text(json.dumps(items))
    (tmp_path / "params.yaml").write_text("sequences: {k_core: 2}\nsasrec: {hidden: 16, max_len: 8}\n"
                                          "train_sasrec: {epochs: 1, batch_size: 32, patience: 0}\n"
                                          "eval: {bootstrap: 10}\n")  # fmt: skip
    argv = ["experiment", "--profile", "tiny", "--format", "seqtxt", "--path", str(tmp_path / "seq.txt"),
            "--items", str(tmp_path / "items.json"), "--models", "sasrec", "--out", str(tmp_path / "out"),
            "--params", str(tmp_path / "params.yaml"), "--json"]  # fmt: skip
    assert slmrec_cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ingest"]["catalog_items"], summary["ingest"]["catalog_quarantined"]) == (20, 1)
