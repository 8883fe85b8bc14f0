"""The `ingest` pipeline stage: rebuild the DuckDB store from the raw files, snapshot it, check it.

The store is derived data: `rebuild_store` ingests the configured source (data.path) and then
every landing file (data.landing_dir, sorted by name) into a *new* DuckDB file, exports the
deterministic Parquet snapshot, validates the raw-interaction and item contracts, and only then
swaps the new store in. So a changed or removed raw file can never linger in the snapshot, a
failed contract leaves the previous store and snapshot untouched, and DVC (which hashes the
snapshot) and Dagster (which runs this same stage) see the same bytes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb

from data_contracts import require, validate
from slmrec.config import DataConfig, SequenceConfig
from slmrec.data.ingest import export_snapshot, ingest
from slmrec.data.sequences import build_splits
from slmrec.lineage import atomic_write_text, write_card

# One rule for the landing folder, shared with the Dagster sensor and partitions (orchestration/landing.py):
# YYYY-MM-DD[.suffix].<csv|tsv|parquet|jsonl|json>[.gz]; the date is the daily partition key.
LANDING_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[._-][^,]*)?\.(csv|tsv|parquet|jsonl|json)(\.gz)?$")


def landing_sources(cfg: DataConfig) -> list[Path]:
    folder = Path(cfg.landing_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and LANDING_NAME.match(p.name))


def rebuild_store(cfg: DataConfig, snapshot_dir: str) -> dict:
    """Fresh store + snapshot from data.path (+ items) and the landing files. Returns the stage report."""
    db = Path(cfg.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp_db = db.with_name(f".{db.name}.rebuild")
    for leftover in (tmp_db, tmp_db.with_name(tmp_db.name + ".wal")):
        leftover.unlink(missing_ok=True)  # an interrupted earlier rebuild: start over

    landing = landing_sources(cfg)  # listed once: the card must name exactly the files ingested
    reports = [ingest(cfg.format, cfg.path, str(tmp_db), items=cfg.items, column_map=cfg.column_map or None)]
    for f in landing:
        reports.append(ingest(cfg.landing_format, str(f), str(tmp_db), column_map=cfg.landing_column_map or None))

    with duckdb.connect(str(tmp_db), read_only=True) as con:
        interactions = con.sql("SELECT user_id, item_id, ts, rating, event FROM raw_interactions").df()
        catalog = con.sql("SELECT * FROM items").df()
    contracts = {"raw_interactions": validate(interactions, "raw_interactions")}
    if len(catalog):
        contracts["items"] = validate(catalog, "items")
    for result in contracts.values():
        require(result)  # ContractViolation (a ValueError): readable message, nothing swapped in

    snapshot = export_snapshot(str(tmp_db), snapshot_dir)
    os.replace(tmp_db, db)

    reasons: dict[str, int] = {}
    for r in reports:
        for reason, n in r.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    report = {
        "rows_read": sum(r.rows_read for r in reports),
        "accepted": sum(r.accepted for r in reports),
        "quarantined": sum(r.quarantined for r in reports),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "users": int(interactions["user_id"].nunique()),
        "items": int(interactions["item_id"].nunique()),
        "catalog_items": int(len(catalog)),
        "catalog_quarantined": sum(r.catalog_quarantined for r in reports),
        "catalog_quarantine_reasons": _sum_reasons(r.catalog_quarantine_reasons for r in reports),
        "sources": [
            {"file": r.source_file, "format": r.format, "batch_id": r.batch_id, "rows_read": r.rows_read,
             "accepted": r.accepted, "quarantined": r.quarantined}
            for r in reports
        ],
        "contracts": {name: res.success for name, res in contracts.items()},
        "snapshot": {name: {"rows": v["rows"], "sha256": v["sha256"]} for name, v in snapshot.items()},
        "db": str(db),
    }
    raw_files = [cfg.path] + ([cfg.items] if cfg.items else []) + [str(f) for f in landing]
    write_card(
        snapshot_dir,
        "interactions",
        params={"data": {k: v for k, v in vars(cfg).items()}},
        parents=raw_files,
        metrics={k: report[k] for k in ("rows_read", "accepted", "quarantined", "users", "items")},
        reproducible=True,
    )
    return report


def _sum_reasons(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))


def sequences_stage(
    interactions_dir: str, cfg: SequenceConfig, stats_path: str | None = None, max_users: int | None = None
) -> dict:
    """The `sequences` stage: build the splits, give them a lineage card, copy the stats out as a DVC metric.

    max_users: a deterministic user sample of the k-cored data; its rule and counts go into the card."""
    stats = build_splits(interactions_dir, cfg, max_users=max_users).to_dict()
    params = {"sequences": vars(cfg), **({"sample": stats["sample"]} if "sample" in stats else {})}
    write_card(cfg.out_dir, "splits", params=params, parents=[interactions_dir],
               metrics={k: stats[k] for k in ("n_users", "n_items", "n_interactions", "dataset_hash")},
               reproducible=True)
    if stats_path:
        atomic_write_text(stats_path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
