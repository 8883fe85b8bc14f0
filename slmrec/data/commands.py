"""CLI: `slmrec data fetch`, `slmrec ingest`, `slmrec sequences` (registered by slmrec/cli.py).

Exit codes: 0 ok; 2 bad input (message on stderr, no traceback). With --json, stdout holds
exactly one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import duckdb
import yaml

from slmrec.config import DataConfig, load_params
from slmrec.data.fetch import fetch_ml100k
from slmrec.data.ingest import LOCK_TIMEOUT_S, export_snapshot, ingest
from slmrec.data.readers import READERS, column_map_hint
from slmrec.lineage import atomic_write_text

FETCHERS = {"ml-100k": fetch_ml100k}
# bad input -> a message and exit 2 (duckdb.IOException: the store is locked or not a DuckDB file)
EXPECTED = (ValueError, OSError, yaml.YAMLError, duckdb.IOException)


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="obtain raw data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset (sha256-checked) into a folder")
    fetch.add_argument("dataset", choices=sorted(FETCHERS))
    fetch.add_argument("--out", help="target folder (default data/raw/<dataset>)")
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    fetch.set_defaults(func=cmd_fetch)

    ing = sub.add_parser(
        "ingest",
        help="read a file into the DuckDB store (one batch)",
        description="Either --params params.yaml (its `data` group; flags given too override it) "
        "or --format/--path/--db. With --params the snapshot goes to data.snapshot_dir.",
    )
    ing.add_argument("--params", help="params.yaml: read format/path/items/db/column_map from its `data` group")
    ing.add_argument("--format", choices=sorted(READERS), help="reader name")
    ing.add_argument("--path", help="interactions file")
    ing.add_argument("--items", help="item/metadata file ('' = none)")
    ing.add_argument("--db", help="DuckDB file")
    ing.add_argument(
        "--column-map",
        type=parse_column_map,
        help="events: user_id=uid,item_id=iid,ts=time[,rating=..,event=..]; columns not named here are "
        "recognised by their usual names (userId, visitorid, movieId, itemid, asin, timestamp, ...)",
    )
    ing.add_argument("--snapshot", help="also export the Parquet snapshot into this folder")
    ing.add_argument(
        "--rebuild",
        action="store_true",
        help="pipeline stage: rebuild the store from data.path + every landing file, check the contracts, "
        "then snapshot (see slmrec/stages/data.py)",
    )
    ing.add_argument(
        "--lock-timeout",
        type=float,
        default=LOCK_TIMEOUT_S,
        help=f"seconds to wait while another process holds the store (default {LOCK_TIMEOUT_S:g}), then fail",
    )
    ing.add_argument("--report", help="also write the JSON report to this file (a DVC metric)")
    ing.add_argument("--json", action="store_true", help="print one JSON object")
    ing.set_defaults(func=cmd_ingest)

    seq = sub.add_parser("sequences", help="interactions snapshot -> sequences and leave-one-out splits")
    seq.add_argument("--params", default="params.yaml", help="params.yaml (`sequences` group)")
    seq.add_argument("--interactions", help="snapshot folder (default: data.snapshot_dir)")
    seq.add_argument("--out", help="output folder (default: sequences.out_dir)")
    seq.add_argument("--stats", help="also write stats.json here (a DVC metric)")
    seq.add_argument("--json", action="store_true", help="print one JSON object")
    seq.set_defaults(func=cmd_sequences)


def parse_column_map(text: str) -> dict[str, str]:
    """'user_id=uid,item_id=iid,ts=time' -> {'user_id': 'uid', ...}."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"bad column map entry {part!r}: want canonical=file_column")
        mapping[key.strip()] = value.strip()
    return mapping


def _fail(command: str, err: BaseException) -> int:
    print(f"slmrec {command}: error: {err}", file=sys.stderr)
    return 2


def _emit(obj: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(obj, sort_keys=False))
    else:
        print("\n".join(lines))


def cmd_fetch(args: argparse.Namespace) -> int:
    out = args.out or f"data/raw/{args.dataset}"
    try:
        result = FETCHERS[args.dataset](out)
    except (*EXPECTED, RuntimeError) as err:  # RuntimeError: pip could not download
        return _fail("data fetch", err)
    lines = [f"{f['action']:>8}  {f['path']}  sha256={f['sha256'][:12]}" for f in result["files"].values()]
    _emit(result, args.json, lines)
    return 0


def resolve_data_config(args: argparse.Namespace) -> DataConfig:
    """DataConfig from --params (if given) with the flags on top; without --params all of format/path/db."""
    if args.params:
        cfg = load_params(args.params).data
    else:
        missing = [f"--{n}" for n in ("format", "path", "db") if getattr(args, n) is None]
        if missing:
            raise ValueError(f"give --params, or all of --format, --path, --db (missing {' '.join(missing)})")
        cfg = DataConfig(items=None, snapshot_dir="")
    overrides = {k: getattr(args, k) for k in ("format", "path", "items", "db") if getattr(args, k) is not None}
    if args.column_map is not None:
        overrides["column_map"] = args.column_map
    if args.snapshot is not None:
        overrides["snapshot_dir"] = args.snapshot
    cfg = dataclasses.replace(cfg, **overrides)
    return dataclasses.replace(cfg, items=cfg.items or None)


def cmd_ingest(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_data_config(args)
        if args.rebuild:
            return _rebuild(cfg, args)
        report = ingest(cfg.format, cfg.path, cfg.db, items=cfg.items, column_map=cfg.column_map,
                        lock_timeout=args.lock_timeout).to_dict()
        if cfg.snapshot_dir:
            report["snapshot"] = export_snapshot(cfg.db, cfg.snapshot_dir)
        if args.report:
            atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    except EXPECTED as err:
        return _fail("ingest", err)
    lines = [f"{report['source_file']} -> {report['db']} (batch {report['batch_id']})"]
    if report["column_map"]:
        lines.append(f"columns: {column_map_hint(report['column_map'])}")
    counts = report["original_batch"] if report["already_ingested"] else report
    reasons = ", ".join(f"{k}={v}" for k, v in counts["quarantine_reasons"].items()) or "none"
    summary = [
        f"rows read {counts['rows_read']}: accepted {counts['accepted']}, quarantined {counts['quarantined']} ({reasons})",
        f"users {counts['users']}, items {counts['items']}, catalog items {counts['catalog_items']}",
    ]
    if counts.get("catalog_quarantined"):
        item_reasons = ", ".join(f"{k}={v}" for k, v in counts["catalog_quarantine_reasons"].items())
        summary.append(f"item records quarantined {counts['catalog_quarantined']} ({item_reasons})")
    if report["already_ingested"]:
        lines.append(f"already ingested ({counts['ingested_at']}): nothing written now; when it was stored:")
        summary = ["  " + line for line in summary]
    lines += summary
    if "snapshot" in report:
        for v in report["snapshot"].values():
            lines.append(f"snapshot {v['path']}: {v['rows']} rows, sha256={v['sha256'][:12]}")
    _emit(report, args.json, lines)
    return 0


def _rebuild(cfg: DataConfig, args: argparse.Namespace) -> int:
    from slmrec.stages.data import rebuild_store  # lazy: pulls in Great Expectations

    if not cfg.snapshot_dir:
        raise ValueError("--rebuild needs a snapshot folder (--snapshot or data.snapshot_dir)")
    report = rebuild_store(cfg, cfg.snapshot_dir)
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    reasons = ", ".join(f"{k}={v}" for k, v in report["quarantine_reasons"].items()) or "none"
    lines = [f"{s['file']}: read {s['rows_read']}, accepted {s['accepted']}, quarantined {s['quarantined']}"
             for s in report["sources"]]
    lines.append(f"store {report['db']}: {report['accepted']} interactions, {report['users']} users, "
                 f"{report['items']} items; quarantined {report['quarantined']} ({reasons}); contracts passed")
    if report.get("catalog_quarantined"):
        lines.append(f"item records quarantined {report['catalog_quarantined']} "
                     f"({', '.join(f'{k}={v}' for k, v in report['catalog_quarantine_reasons'].items())})")
    _emit(report, args.json, lines)
    return 0


def cmd_sequences(args: argparse.Namespace) -> int:
    from slmrec.stages.data import sequences_stage  # lazy: pulls in Great Expectations

    try:
        params = load_params(args.params)
        cfg = params.sequences if args.out is None else dataclasses.replace(params.sequences, out_dir=args.out)
        stats = sequences_stage(args.interactions or params.data.snapshot_dir, cfg, args.stats)
    except EXPECTED as err:
        return _fail("sequences", err)
    _emit(stats, args.json, [f"{k}: {v}" for k, v in stats.items()])
    return 0
