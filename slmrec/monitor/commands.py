"""`slmrec monitor` (compare two windows), `slmrec monitor-reference` (a model's reference window) and
`slmrec monitor-probe` (its reference users re-scored by the model now: what the score drift rule reads)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from slmrec.config import MonitoringConfig, load_params


def _config(args: argparse.Namespace) -> MonitoringConfig:
    cfg = load_params(args.params).monitoring if args.params else MonitoringConfig()
    if args.k is not None:
        cfg.k = args.k
    return cfg


def read_train(path: str) -> pd.DataFrame:
    """Training interactions: a splits folder (its train lists), or a Parquet file with user_id, item_id."""
    p = Path(path)
    if p.is_dir() and (p / "stats.json").is_file():
        from slmrec.data.sequences import load_splits
        from slmrec.monitor.build import train_interactions

        return train_interactions(load_splits(p))
    if not p.exists():
        raise FileNotFoundError(f"training interactions {p} not found")
    return pd.read_parquet(p, columns=["user_id", "item_id"])


def cmd_monitor(args: argparse.Namespace) -> int:
    from slmrec.monitor.build import monitor_windows
    from slmrec.monitor.window import from_serving_log, read_window

    cfg = _config(args)
    reference = read_window(args.reference)
    if args.current_log:
        import duckdb

        log = duckdb.sql(f"SELECT * FROM read_parquet('{Path(args.current) / '**/*.parquet'}')").df()
        current = from_serving_log(log)
    else:
        current = read_window(args.current)
    probe = read_window(args.probe) if args.probe else None
    summary = monitor_windows(reference, current, read_train(args.train), cfg, args.out,
                              {"reference": args.reference, "current": args.current, "probe": args.probe}, probe=probe)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(summary["verdict_markdown"])
        print(f"drift: {summary['verdict']['drift']}  report: {summary['files']['html']}")
    return 2 if summary["verdict"]["drift"] and args.fail_on_drift else 0


def cmd_reference(args: argparse.Namespace) -> int:
    from slmrec.monitor.build import ensure_reference

    cfg = _config(args)
    reference_dir = args.out_dir or cfg.reference_dir
    path, built = ensure_reference(args.model, reference_dir, cfg, args.splits, args.db)
    out = {"reference": str(path), "built": built}
    print(json.dumps(out) if args.json else f"{'wrote' if built else 'exists'}: {path}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from slmrec.monitor.build import load_recommender, probe_window
    from slmrec.monitor.window import write_window

    cfg = _config(args)
    window = probe_window(load_recommender(args.model, args.splits, args.db), cfg)
    path = write_window(window, args.out)
    print(json.dumps({"probe": str(path), "users": window.users}) if args.json else f"wrote: {path} ({window.users} users)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="Evidently report + drift verdict: a current window against a reference window",
        description="Windows are Parquet files written by slmrec.monitor.window.write_window, or plain batch "
        "recommendation files (user_id, rank, item_id, score; no ground truth, no inputs). Thresholds: "
        "params.yaml `monitoring:`. Writes OUT/report.html, OUT/evidently.json, OUT/summary.json.",
    )
    p.add_argument("--reference", required=True, help="reference window (e.g. from slmrec monitor-reference)")
    p.add_argument("--current", required=True, help="current window, or with --current-log a serving log folder")
    p.add_argument("--current-log", action="store_true", help="--current is a serving log folder (Parquet files)")
    p.add_argument("--train", required=True, help="the model's training interactions: splits folder or Parquet")
    p.add_argument("--probe", help="the reference users re-scored by the model now (slmrec monitor-probe); without "
                   "it the score drift rule is skipped")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--params", default="params.yaml" if Path("params.yaml").is_file() else None)
    p.add_argument("--k", type=int, help="override monitoring.k")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 2 when the verdict is drift")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_monitor)

    r = sub.add_parser("monitor-reference", help="a model's reference window (the window rule over its last training days)")
    r.add_argument("--out-dir", help="default monitoring.reference_dir; the file is <model hash[:16]>.parquet")
    _model_arguments(r, cmd_reference)

    q = sub.add_parser("monitor-probe", help="a model's reference users re-scored by it now (the score drift rule's "
                       "input: same users and histories as its reference window)")
    q.add_argument("--out", required=True, help="window file to write (Parquet)")
    _model_arguments(q, cmd_probe)


def _model_arguments(p: argparse.ArgumentParser, func) -> None:
    """What the commands that load a model share: the model, its data (default: its lineage card), params."""
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--splits", help="splits folder (default: from the model's lineage card)")
    p.add_argument("--db", help="DuckDB store (default: from the model's lineage card)")
    p.add_argument("--params", default="params.yaml" if Path("params.yaml").is_file() else None)
    p.add_argument("--k", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)
