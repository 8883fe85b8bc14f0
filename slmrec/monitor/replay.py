"""Replay real logs day by day through ingest -> recommendations -> monitoring -> drift check -> (retrain).

    slmrec replay --scenario honest --out results/replay/honest
    slmrec replay --scenario shift  --out results/replay/shift

ML-100K is split in time: SASRec (the cheap model; `--epochs`) trains on every interaction before
`--cutoff`; then each later day is written to the work folder's landing/ as YYYY-MM-DD.csv (the
landing-file rule) and, per day:

1. ingest the landing file into the DuckDB store (slmrec.data.ingest, what `landing_interactions` runs);
2. batch recommendations for the users active that day (slmrec.serve.batch.run_batch, what the
   `recommendations` asset runs) from the current model;
3. monitoring of that partition (the current window: the lists of the last `monitoring.window_days`
   days made by the current model) against that model's reference window (slmrec.monitor.build);
4. the drift verdict; on drift, and at most once per `monitoring.retrain_cooldown_hours`, retrain:
   rebuild the store from the base file + every landing file (the DVC `ingest` stage), new splits, new
   SASRec, new reference — what `retrain_on_drift` -> `retrain_job` does in Dagster.

Scenarios: `honest` replays the real later days; `shift` plants a new cohort on a block of new items
from day `--shift-day` on: a `--shift-share` of each day's users (seeded) become new users whose
every item is a new id ("new-<id>", a catalog the model has never seen) — traffic the model cannot
serve. At the end every day is monitored again with the ground truth that arrived
later (`monitoring.truth_days`), which fills the delayed NDCG@k column. Writes replay.json, replay.md
(the per-day table) and replay.svg (the monitored values per day) into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from slmrec.config import DataConfig, MonitoringConfig, Params, load_params

DAY = 86_400


@dataclasses.dataclass
class ReplayConfig:
    inter: str = "data/raw/ml-100k/ml-100k.inter"  # RecBole atomic file (user_id, item_id, rating, timestamp)
    cutoff: str = "1998-03-01"  # train on everything before this day (UTC)
    days: int = 14  # then replay this many days
    scenario: str = "honest"  # honest | shift
    shift_day: int = 4  # shift: the first shifted day (1 = the first replayed day)
    shift_share: float = 0.5  # shift: share of each shifted day's users moved to new items
    epochs: int = 5  # SASRec epochs per (re)training: the cheap model keeps a replay within minutes
    seed: int = 7
    retrain: bool = True


def read_ml100k(path: str | Path) -> pd.DataFrame:
    """A RecBole .inter file (typed header) or a CSV with user_id, item_id, ts[, rating]."""
    if str(path).endswith(".csv"):
        df = pd.read_csv(path)
        return df.reindex(columns=["user_id", "item_id", "ts", "rating"]).astype(
            {"user_id": str, "item_id": str, "ts": "int64"})
    df = pd.read_csv(path, sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.rename(columns={"timestamp": "ts"})
    return df[["user_id", "item_id", "ts", "rating"]].astype({"user_id": str, "item_id": str, "ts": "int64"})


def day_start(day: str) -> int:
    return int(dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc).timestamp())


def day_name(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d")


def plant_shift(day_rows: pd.DataFrame, share: float, rng: np.random.Generator) -> tuple[pd.DataFrame, int]:
    """A new cohort on a new block of items: `share` of the day's users become new users ("shift-<id>")
    whose every item is a new id ("new-<id>", never seen by the model). Returns (rows, users moved)."""
    users = np.array(sorted(day_rows["user_id"].unique()))
    moved = set(users[rng.random(len(users)) < share])
    out = day_rows.copy()
    mask = out["user_id"].isin(moved)
    out.loc[mask, "user_id"] = "shift-" + out.loc[mask, "user_id"]
    out.loc[mask, "item_id"] = "new-" + out.loc[mask, "item_id"]
    return out, len(moved)


class Replay:
    def __init__(self, cfg: ReplayConfig, params: Params, out: str | Path, log=print):
        if cfg.scenario not in ("honest", "shift"):
            raise ValueError(f"scenario must be honest or shift, got {cfg.scenario!r}")
        self.cfg, self.params, self.log = cfg, params, log
        self.mon: MonitoringConfig = params.monitoring
        self.out = Path(out)
        self.work = self.out / "work"
        self.data = DataConfig(format="events", path=str(self.work / "base.csv"), items=None,
                               db=str(self.work / "warehouse.duckdb"), landing_dir=str(self.work / "landing"),
                               snapshot_dir=str(self.work / "interactions"))
        self.version = 0
        self.rec = None
        self.reference_file: Path | None = None

    # ---------------------------------------------------------------- training (what retrain_job runs)
    def train(self) -> dict:
        from slmrec.monitor.build import reference_path, reference_window
        from slmrec.data.sequences import load_splits
        from slmrec.serve.recommender import Recommender
        from slmrec.stages.data import rebuild_store, sequences_stage
        from slmrec.stages.models import train_sasrec

        t0 = time.monotonic()
        self.version += 1
        rebuild_store(self.data, self.data.snapshot_dir)  # base file + every landing file so far
        splits = self.work / f"splits_v{self.version}"
        seq = dataclasses.replace(self.params.sequences, out_dir=str(splits))
        stats = sequences_stage(self.data.snapshot_dir, seq)
        model = self.work / f"models/sasrec_v{self.version}"
        train_sasrec(str(splits), self.params, str(model), str(self.work / "runs"), log=lambda m: None)
        self.rec = Recommender.load(model, splits, self.data.db)
        self.splits = str(splits)
        self.reference_file = reference_path(self.work / "reference", self.rec.model_hash)
        from slmrec.monitor.window import write_window

        write_window(reference_window(self.rec, load_splits(splits), self.mon.k), self.reference_file)
        seconds = time.monotonic() - t0
        self.log(f"model v{self.version}: {stats['n_users']} users, {stats['n_items']} items, "
                 f"{stats['n_interactions']} interactions; trained + reference in {seconds:.0f}s")
        return {"version": self.version, "users": stats["n_users"], "items": stats["n_items"],
                "interactions": stats["n_interactions"], "seconds": round(seconds, 1)}

    def run(self) -> dict:
        from slmrec.data.ingest import ingest
        from slmrec.monitor.build import monitor_day
        from slmrec.serve.batch import run_batch

        cfg = self.cfg
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "landing").mkdir(exist_ok=True)
        rows = read_ml100k(cfg.inter)
        cutoff = day_start(cfg.cutoff)
        rows[rows["ts"] < cutoff].to_csv(self.data.path, index=False)
        first = self.train()
        rng = np.random.default_rng(cfg.seed)
        cooldown_days = self.mon.retrain_cooldown_hours / 24
        last_retrain: int | None = None
        table = []
        started = time.monotonic()
        for n in range(1, cfg.days + 1):
            start = cutoff + (n - 1) * DAY
            day = day_name(start)
            day_rows = rows[(rows["ts"] >= start) & (rows["ts"] < start + DAY)]
            moved = 0
            if cfg.scenario == "shift" and n >= cfg.shift_day:
                day_rows, moved = plant_shift(day_rows, cfg.shift_share, rng)
            row = {"day": day, "n": n, "interactions": len(day_rows), "shifted_users": moved,
                   "model": f"v{self.version}"}
            if day_rows.empty:
                table.append({**row, "verdict": "no data"})
                continue
            landing = self.work / "landing" / f"{day}.csv"
            day_rows.to_csv(landing, index=False)
            ingest("events", str(landing), self.data.db)
            self.rec.history.refresh_if_changed()
            recs_file = self.work / "recommendations" / f"{day}.parquet"
            batch = run_batch(self.rec, self.mon.k, recs_file, day, day=day)
            row.update(active_users=batch["users_selected"], listed_users=batch["users_scored"])
            if batch["rows"] == 0:
                table.append({**row, "verdict": "no lists"})
                continue
            summary = monitor_day(day, recs_file.parent, self.data.db, self.splits, self.reference_file, self.mon,
                                  self.out / "monitoring" / day)
            row.update(_values(summary), reference=str(self.reference_file), splits=self.splits,
                       window_users=summary["counts"]["current_users"])
            failing = summary["verdict"]["failing"]
            row["verdict"] = "drift: " + ", ".join(failing) if failing else "ok"
            if failing and cfg.retrain and (last_retrain is None or n - last_retrain >= cooldown_days):
                row["retrained"] = self.train()["version"]
                last_retrain = n
            table.append(row)
            self.log(f"{day}: {row['verdict']}{' -> retrained v%d' % row['retrained'] if 'retrained' in row else ''}")
        # delayed ground truth: every day again, now that the later days are in the store
        for row in table:
            if "reference" not in row:
                continue
            summary = monitor_day(row["day"], self.work / "recommendations",
                                  self.data.db, row["splits"], row["reference"], self.mon,
                                  self.out / "monitoring_delayed" / row["day"])
            v = summary["values"].get(f"ndcg@{self.mon.k}")
            row["ndcg_delayed"] = v and v["current"]
            row["ndcg_reference"] = v and v["reference"]
            row["truth_users"] = summary["counts"]["current_truth_users"]
        result = {"config": dataclasses.asdict(cfg), "monitoring": dataclasses.asdict(self.mon),
                  "first_model": first, "days": table,
                  "drift_days": sum(r.get("verdict", "").startswith("drift") for r in table),
                  "retrains": sum("retrained" in r for r in table),
                  "seconds": round(time.monotonic() - started, 1)}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "replay.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (self.out / "replay.md").write_text(markdown_table(table, self.mon.k) + "\n")
        (self.out / "replay.svg").write_text(svg_plot(table, f"replay: {cfg.scenario}", self.mon))
        return result


def _values(summary: dict) -> dict:
    v = summary["values"]
    k = summary["k"]

    def cur(name):
        return (v.get(name) or {}).get("current")

    arp = v.get("popularity_arp") or {}
    change = (abs(arp["current"] - arp["reference"]) / arp["reference"]
              if arp.get("current") is not None and arp.get("reference") else None)
    return {"score_drift": cur("score_drift"), "history_len_drift": cur("history_len_drift"),
            "unknown_item_share": cur("unknown_item_share"), "cold_user_share": cur("cold_user_share"),
            "popularity_change": change, "novelty": cur("novelty"), "coverage": cur("coverage"),
            f"ndcg@{k}": cur(f"ndcg@{k}")}


def _f(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown_table(table: list[dict], k: int) -> str:
    head = ("| day | interactions | active / listed users | window users | shifted users | model | unknown item share | "
            "cold user share | score drift | history drift | ARP change | verdict | retrained | "
            f"NDCG@{k} delayed (users) | NDCG@{k} reference |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        lines.append(
            f"| {r['day']} | {r['interactions']} | {r.get('active_users', '—')} / {r.get('listed_users', '—')} | "
            f"{r.get('window_users', '—')} | "
            f"{r['shifted_users']} | {r['model']} | {_f(r.get('unknown_item_share'))} | "
            f"{_f(r.get('cold_user_share'))} | {_f(r.get('score_drift'))} | {_f(r.get('history_len_drift'))} | "
            f"{_f(r.get('popularity_change'))} | {r.get('verdict', '')} | "
            f"{'v%d' % r['retrained'] if 'retrained' in r else ''} | "
            f"{_f(r.get('ndcg_delayed'), 4)} ({r.get('truth_users', '—')}) | {_f(r.get('ndcg_reference'), 4)} |")
    return "\n".join(lines)


SERIES = [  # (row key, label, colour, threshold attribute)
    ("unknown_item_share", "unknown item share", "#d62728", "max_unknown_item_share"),
    ("cold_user_share", "cold user share", "#ff7f0e", "max_cold_user_share"),
    ("score_drift", "score drift (normed W1)", "#1f77b4", "score_drift_threshold"),
    ("popularity_change", "ARP relative change", "#2ca02c", "max_popularity_change"),
    ("ndcg_delayed", "NDCG@k delayed", "#9467bd", None),
]


def svg_plot(table: list[dict], title: str, mon: MonitoringConfig, width: int = 900, height: int = 420) -> str:
    """A line chart of the monitored values per day (plain SVG: no plotting library needed)."""
    left, right, top, bottom = 60, 220, 40, 60
    pw, ph = width - left - right, height - top - bottom
    days = [r["day"] for r in table]
    values = [r.get(key) for r in table for key, *_ in SERIES if r.get(key) is not None]
    ymax = max([1.0, *values]) if values else 1.0
    n = max(len(days) - 1, 1)

    def x(i):
        return left + pw * i / n

    def y(v):
        return top + ph * (1 - v / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>']
    for t in np.linspace(0, ymax, 5):
        out.append(f'<text x="{left - 8}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
        out.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + pw}" y2="{y(t):.1f}" stroke="#eee"/>')
    for i, r in enumerate(table):
        out.append(f'<text x="{x(i):.1f}" y="{top + ph + 14}" text-anchor="end" '
                   f'transform="rotate(-40 {x(i):.1f} {top + ph + 14})">{r["day"][5:]}</text>')
        if r.get("verdict", "").startswith("drift"):
            out.append(f'<rect x="{x(i) - 4:.1f}" y="{top}" width="8" height="{ph}" fill="#d62728" opacity="0.12"/>')
        if "retrained" in r:
            out.append(f'<text x="{x(i):.1f}" y="{top - 4}" text-anchor="middle" fill="#555">retrain</text>')
    for j, (key, label, colour, threshold) in enumerate(SERIES):
        pts = [(x(i), y(r[key])) for i, r in enumerate(table) if r.get(key) is not None]
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{colour}"/>' for a, b in pts]
        if threshold:
            t = getattr(mon, threshold)
            if t <= ymax:
                out.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + pw}" y2="{y(t):.1f}" stroke="{colour}" '
                           'stroke-dasharray="4 3" opacity="0.6"/>')
        ly = top + 16 * j
        out.append(f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 35}" y2="{ly}" stroke="{colour}" '
                   'stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 40}" y="{ly + 4}">{label}</text>')
    out.append(f'<text x="{left + pw + 15}" y="{top + 16 * len(SERIES) + 10}" fill="#555">dashed: thresholds; '
               'red band: drift</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def cmd_replay(args: argparse.Namespace) -> int:
    params = load_params(args.params) if args.params else Params()
    params.train_sasrec.epochs = args.epochs
    cfg = ReplayConfig(inter=args.inter, cutoff=args.cutoff, days=args.days, scenario=args.scenario,
                       shift_day=args.shift_day, shift_share=args.shift_share, epochs=args.epochs, seed=args.seed,
                       retrain=not args.no_retrain)
    result = Replay(cfg, params, args.out).run()
    print(markdown_table(result["days"], params.monitoring.k))
    print(f"drift days: {result['drift_days']} of {len(result['days'])}; retrains: {result['retrains']}; "
          f"{result['seconds']:.0f}s; {args.out}/replay.md, replay.svg")
    return 0


def add_replay_command(sub: argparse._SubParsersAction) -> None:
    d = ReplayConfig()
    p = sub.add_parser("replay", help="replay logs day by day: ingest -> recommend -> monitor -> drift -> retrain",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--inter", default=d.inter, help="RecBole .inter file (default: the fetched ML-100K)")
    p.add_argument("--cutoff", default=d.cutoff, help="YYYY-MM-DD: train on what came before")
    p.add_argument("--days", type=int, default=d.days)
    p.add_argument("--scenario", choices=["honest", "shift"], default=d.scenario)
    p.add_argument("--shift-day", type=int, default=d.shift_day)
    p.add_argument("--shift-share", type=float, default=d.shift_share)
    p.add_argument("--epochs", type=int, default=d.epochs, help="SASRec epochs per (re)training")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-retrain", action="store_true")
    p.add_argument("--params", default="params.yaml" if Path("params.yaml").is_file() else None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_replay)
