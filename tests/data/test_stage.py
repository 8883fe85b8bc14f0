"""The `ingest` pipeline stage: fresh rebuild from source + landing files, contracts, atomic swap, card."""

import json
import shutil
from pathlib import Path

import duckdb
import pytest

import slmrec.stages.data as stage
from data_contracts import ContractViolation, validate
from slmrec.config import DataConfig, SequenceConfig
from slmrec.lineage import read_card, trace, mismatches

FIX = Path(__file__).parent.parent / "fixtures" / "ingest"


def config(tmp_path) -> DataConfig:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(FIX / "ml_small.inter", raw / "ml.inter")
    shutil.copy(FIX / "ml_small.item", raw / "ml.item")
    (raw / "landing").mkdir()
    return DataConfig(format="recbole", path=str(raw / "ml.inter"), items=str(raw / "ml.item"),
                      db=str(tmp_path / "w.duckdb"), landing_dir=str(raw / "landing"),
                      snapshot_dir=str(tmp_path / "snap"))


def count(db: str, table: str) -> int:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_rebuild_counts_landing_files_and_writes_a_card(tmp_path):
    cfg = config(tmp_path)
    first = stage.rebuild_store(cfg, cfg.snapshot_dir)
    base = first["accepted"]
    assert first["rows_read"] == first["accepted"] + first["quarantined"]
    (Path(cfg.landing_dir) / "1998-05-01.csv").write_text(
        "user_id,item_id,ts,rating\n900,50,893286638,4\n900,51,893286639,5\nbroken-line-without-fields\n")
    report = stage.rebuild_store(cfg, cfg.snapshot_dir)
    assert report["accepted"] == base + 2 and report["quarantined"] == first["quarantined"] + 1
    assert report["rows_read"] == report["accepted"] + report["quarantined"]
    assert [s["file"] for s in report["sources"]] == ["ml.inter", "1998-05-01.csv"]
    assert count(cfg.db, "raw_interactions") == base + 2  # a fresh store: nothing doubled
    card = read_card(cfg.snapshot_dir)
    assert [Path(p["path"]).name for p in card["parents"]] == ["ml.inter", "ml.item", "1998-05-01.csv"]
    assert mismatches(trace(cfg.snapshot_dir, verify=True)) == []


def test_rebuild_twice_gives_the_same_snapshot_bytes(tmp_path):
    cfg = config(tmp_path)
    a = stage.rebuild_store(cfg, cfg.snapshot_dir)["snapshot"]
    card = (Path(cfg.snapshot_dir) / "card.json").read_bytes()
    b = stage.rebuild_store(cfg, cfg.snapshot_dir)["snapshot"]
    assert a == b and (Path(cfg.snapshot_dir) / "card.json").read_bytes() == card


def test_failed_contract_keeps_the_previous_store_and_snapshot(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    stage.rebuild_store(cfg, cfg.snapshot_dir)
    before = {p.name: p.read_bytes() for p in Path(cfg.snapshot_dir).iterdir()}
    rows = count(cfg.db, "raw_interactions")

    def strict_validate(df, suite):  # a contract that this data cannot meet: every ts must be 0
        if suite == "raw_interactions":
            df = df.assign(ts=-1)
        return validate(df, suite)

    monkeypatch.setattr(stage, "validate", strict_validate)
    (Path(cfg.landing_dir) / "1998-05-02.csv").write_text("user_id,item_id,ts\n901,50,893286638\n")
    with pytest.raises(ContractViolation, match="raw_interactions"):
        stage.rebuild_store(cfg, cfg.snapshot_dir)
    assert {p.name: p.read_bytes() for p in Path(cfg.snapshot_dir).iterdir()} == before
    assert count(cfg.db, "raw_interactions") == rows


def test_sequences_stage_writes_card_and_stats(tmp_path):
    cfg = config(tmp_path)
    stage.rebuild_store(cfg, cfg.snapshot_dir)
    seq = SequenceConfig(k_core=1, out_dir=str(tmp_path / "splits"))
    stats = stage.sequences_stage(cfg.snapshot_dir, seq, str(tmp_path / "stats.json"))
    assert json.loads((tmp_path / "stats.json").read_text())["dataset_hash"] == stats["dataset_hash"]
    card = read_card(seq.out_dir)
    assert card["artifact"] == "splits" and card["metrics"]["n_users"] == stats["n_users"]
    assert Path(card["parents"][0]["path"]) == Path(cfg.snapshot_dir)
