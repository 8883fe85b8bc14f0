"""Replay real logs day by day through the Dagster definitions, in process, with planted shifts.

    python -m orchestration.replay run --scenario honest --start 1998-02-01 --days 42 --out results/replay/honest
    python -m orchestration.replay run --scenario taste --start 1998-02-01 --days 21 --shift-day 8 --out ...
    python -m orchestration.replay calibrate --cutoff 1997-12-01 --start 1997-12-01 --days 21 --out cal/dec
    python -m orchestration.replay thresholds --from cal/dec/replay.json cal/jan/replay.json --out cal/thresholds.json

A simulator, so it lives here and not in the library. ML-100K is split in time: a SASRec (the cheap
model) trains on every interaction before `--cutoff` and is deployed + promoted (slmrec.serve.deploy).
Then each replayed day D is one tick of the real loop, with the project's own definitions:

1. D's rows land as data/raw/landing/D.csv and the `landing_interactions` asset ingests them;
2. the `daily_recommendations` schedule's requests for the tick after D (orchestration/defs/automation/
   schedules.py: `recommendations` + `recommendation_monitoring` of D, and `recommendation_monitoring`
   again for the day whose delayed ground truth just completed) are materialized;
3. the `retrain_on_drift` sensor ticks (its clock = the simulated time); a RunRequest it returns is run as
   `replay_retrain_job` with the request's tags: rebuild the store (base + landing files), new splits, a
   new SASRec, and the champion/challenger gate of `promoted_model` (`champion_challenger`: candidate vs
   the deployed champion on the fresh validation split, as served) -> deploy + promote, or refuse and
   fail the run, as `promoted_model` does. (The real `retrain_job` runs the DVC stages down to the LLM
   students — minutes each; the replay trains the cheap model through the same gate.)

Scenarios (each planted from `--shift-day` on; 1 = the first replayed day):
- honest        the real days, nothing planted;
- cold_ids      a `--shift-share` of each day's users become new users on new item ids;
- taste         a `--shift-share` of each day's users turn to the three genres least watched in training:
                every item of theirs is replaced by a (seeded) item of those genres, known items only;
- popularity    the head changes: the 100 most popular training items and 100 items from the long tail
                swap places in every interaction (known items only);
- degraded      the served model is damaged after loading (its item vectors shuffled in memory; the files
                and their hash are intact — a bad kernel or a precision fault, not a changed file);
- pipeline      the feature pipeline truncates every history the model is fed to its last 3 items.

Writes replay.json (config, per-day rows: verdict, failing rules, values, retrains, alerts) and replay.md.
`calibrate` replays honest days with every rule recording only; `thresholds` sets each threshold to
`--margin` x the largest value those days reached (at least 0.02), to be copied into params.yaml; the
false alarms are then counted on other honest days (`run --scenario honest` on a later period).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from contextlib import ExitStack, chdir
from pathlib import Path
from unittest import mock

import dagster as dg
import numpy as np
import pandas as pd
import yaml

from orchestration.defs.automation import schedules
from orchestration.defs.deployment.assets import champion_challenger
from orchestration.defs.deployment.recommendations import recommendations
from orchestration.defs.ingestion.assets import landing_interactions
from orchestration.defs.monitoring import sensors
from orchestration.defs.monitoring.assets import recommendation_monitoring
from orchestration.pipeline import PROJECT_DIR, DvcPipeline

from slmrec.days import day_bounds, shift_day

SCENARIOS = ("honest", "cold_ids", "taste", "popularity", "degraded", "pipeline")
RULES = ("score_drift", "history_len_drift", "recent_popularity_drift", "unknown_item_increase", "cold_user_share",
         "ndcg_drop", "popularity_shift", "list_conflicts")
THRESHOLD_OF = {"score_drift": "score_drift_threshold", "history_len_drift": "input_drift_threshold",
                "recent_popularity_drift": "recent_popularity_threshold",
                "unknown_item_increase": "max_unknown_item_increase", "cold_user_share": "max_cold_user_share",
                "ndcg_drop": "max_ndcg_drop", "popularity_shift": "max_popularity_change",
                "list_conflicts": "max_list_conflict_share"}


@dataclasses.dataclass
class ReplayConfig:
    inter: str = "data/raw/ml-100k/ml-100k.inter"  # RecBole atomic file (user_id, item_id, rating, timestamp)
    items: str = "data/raw/ml-100k/ml-100k.item"  # genres, for the taste shift
    cutoff: str = "1998-01-01"  # the first model trains on everything before this day (UTC)
    start: str = "1998-01-01"  # the first replayed day (>= cutoff)
    days: int = 14
    scenario: str = "honest"
    shift_day: int = 8
    shift_share: float = 0.5
    epochs: int = 5  # SASRec epochs per (re)training
    seed: int = 7
    record_only: bool = False  # every threshold at infinity: values only (calibration)


def read_inter(path: str | Path) -> pd.DataFrame:
    """A RecBole .inter file (typed header) or a CSV with user_id, item_id, ts[, rating]."""
    if str(path).endswith(".csv"):
        df = pd.read_csv(path)
        return df.reindex(columns=["user_id", "item_id", "ts", "rating"]).astype(
            {"user_id": str, "item_id": str, "ts": "int64"})
    df = pd.read_csv(path, sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.rename(columns={"timestamp": "ts"})
    return df[["user_id", "item_id", "ts", "rating"]].astype({"user_id": str, "item_id": str, "ts": "int64"})


def read_genres(path: str | Path) -> dict[str, list[str]]:
    df = pd.read_csv(path, sep="\t", encoding="latin-1")
    df.columns = [c.split(":")[0] for c in df.columns]
    col = next(c for c in ("class", "genre", "genres") if c in df.columns)
    return {str(i): str(g).split() for i, g in zip(df["item_id"], df[col].fillna(""))}


# ------------------------------------------------------------------------------------ the planted shifts
class Shift:
    """Rewrites a day's rows (`rows`) and/or patches the serving side (`patches`) from the shift day on."""

    def __init__(self, train: pd.DataFrame, genres: dict[str, list[str]], share: float, seed: int):
        self.rng = np.random.default_rng(seed)
        self.share, self.train, self.genres = share, train, genres

    def rows(self, day_rows: pd.DataFrame) -> pd.DataFrame:
        return day_rows

    def patches(self) -> list:
        return []

    def _movers(self, day_rows: pd.DataFrame) -> set:
        users = np.array(sorted(day_rows["user_id"].unique()))
        return set(users[self.rng.random(len(users)) < self.share])


class ColdIds(Shift):
    def rows(self, day_rows):
        moved = self._movers(day_rows)
        out = day_rows.copy()
        mask = out["user_id"].isin(moved)
        out.loc[mask, "user_id"] = "shift-" + out.loc[mask, "user_id"]
        out.loc[mask, "item_id"] = "new-" + out.loc[mask, "item_id"]
        return out


class Taste(Shift):
    def __init__(self, *args):
        super().__init__(*args)
        known = set(self.train["item_id"])
        watched: dict[str, int] = {}
        counts = self.train["item_id"].value_counts()
        for item, gs in self.genres.items():
            for g in gs:
                watched[g] = watched.get(g, 0) + int(counts.get(item, 0))
        rare = [g for g, _ in sorted(watched.items(), key=lambda kv: kv[1]) if g not in ("unknown",)][:3]
        self.target_genres = rare
        self.pool = np.array(sorted(i for i, gs in self.genres.items() if set(gs) & set(rare) and i in known))

    def rows(self, day_rows):
        moved = self._movers(day_rows)
        out = day_rows.copy()
        mask = out["user_id"].isin(moved).to_numpy()
        out.loc[mask, "item_id"] = self.rng.choice(self.pool, size=int(mask.sum()))
        return out.drop_duplicates(["user_id", "item_id"])  # a user rates an item once


class Popularity(Shift):
    def __init__(self, *args):
        super().__init__(*args)
        ranked = self.train["item_id"].value_counts().index.tolist()
        head, tail = ranked[:100], ranked[400:500]
        self.swap = {**dict(zip(head, tail)), **dict(zip(tail, head))}

    def rows(self, day_rows):
        out = day_rows.copy()
        out["item_id"] = out["item_id"].map(lambda i: self.swap.get(i, i))
        return out.drop_duplicates(["user_id", "item_id"])


class Degraded(Shift):
    def patches(self):
        from slmrec.serve.recommender import Recommender

        real = Recommender.load.__func__
        rng = self.rng

        def damaged(cls, *args, **kwargs):
            rec = real(cls, *args, **kwargs)
            with __import__("torch").no_grad():
                table = rec.model.item_emb.weight  # (n_items + 1, d): rows shuffled, padding row kept
                perm = rng.permutation(table.shape[0] - 1) + 1
                table[1:] = table[perm].clone()
            return rec

        return [mock.patch.object(Recommender, "load", classmethod(damaged))]


class Pipeline(Shift):
    def patches(self):
        from slmrec.serve.history import HistoryStore

        real = HistoryStore.get

        def truncated(store, user_id, as_of=None):
            history = real(store, user_id, as_of)
            return None if history is None else history[-3:]

        return [mock.patch.object(HistoryStore, "get", truncated)]


SHIFTS = {"honest": Shift, "cold_ids": ColdIds, "taste": Taste, "popularity": Popularity, "degraded": Degraded,
          "pipeline": Pipeline}


# ------------------------------------------------------------------------------------ the replay
@dg.op(required_resource_keys={"replay"})
def retrain_and_gate(context):
    """What retrain_job does, for the cheap model: new store, splits, SASRec, then the promotion gate."""
    context.resources.replay.retrain(context.run.run_id)


@dg.job(description="The replay's retrain_job: rebuild, SASRec, champion/challenger gate, deploy or refuse.")
def replay_retrain_job():
    retrain_and_gate()


class Replay:
    def __init__(self, cfg: ReplayConfig, out: str | Path, params_file: str | Path = PROJECT_DIR / "params.yaml",
                 overrides: dict | None = None, log=print):
        if cfg.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {cfg.scenario!r}")
        self.cfg, self.log = cfg, log
        self.out = Path(out).resolve()
        self.root = self.out / "project"
        params = yaml.safe_load(Path(params_file).read_text())
        params["data"].update(format="events", path="data/base.csv", items=None, column_map={},
                              landing_format="events", landing_column_map={})
        params["train_sasrec"]["epochs"] = cfg.epochs
        params["promotion"]["candidate"] = "sasrec"
        for section, values in (overrides or {}).items():
            params[section].update(values)
        if cfg.record_only:
            params["monitoring"].update({THRESHOLD_OF[r]: 1e9 for r in RULES})
        self.params_dict = params
        self.version = 0
        self.retrains: list[dict] = []

    # --------------------------------------------------------------- the project the definitions run in
    def setup(self, rows: pd.DataFrame) -> None:
        if self.out.exists():
            shutil.rmtree(self.out)
        (self.root / "data/raw/landing").mkdir(parents=True)
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params_dict, sort_keys=False))
        rows[rows["ts"] < day_bounds(self.cfg.cutoff)[0]].to_csv(self.root / "data/base.csv", index=False)
        self.pipeline = DvcPipeline(project_dir=str(self.root))
        self.params = self.pipeline.params()

    def train(self) -> tuple[Path, dict]:
        """Rebuild the store from base + landing files, new splits, a new SASRec: the candidate's folder."""
        from slmrec.stages.data import rebuild_store, sequences_stage
        from slmrec.stages.models import train_sasrec

        self.version += 1
        t0 = time.monotonic()
        with chdir(self.root):
            rebuild_store(self.params.data, self.params.data.snapshot_dir)
            stats = sequences_stage(self.params.data.snapshot_dir, self.params.sequences)
            model = Path(f"models/candidates/sasrec_v{self.version}")
            train_sasrec(self.params.sequences.out_dir, self.params, str(model), "runs", log=lambda m: None)
        info = {"version": self.version, "users": stats["n_users"], "items": stats["n_items"],
                "seconds": round(time.monotonic() - t0, 1)}
        return self.root / model, info

    def promote_first(self) -> None:
        from slmrec.lineage import read_card
        from slmrec.serve.deploy import deploy, promote

        model, info = self.train()
        dep = deploy(model, self.root / self.params.serve.models_dir, self.root)
        promote(self.root / self.params.promotion.record, dep, "sasrec", who="replay", why="first model",
                root=self.root)
        self.log(f"model v1 ({info['users']} users, {info['items']} items, {info['seconds']}s), "
                 f"promoted {read_card(model)['content_hash'][:12]}")

    def retrain(self, run_id: str) -> None:
        """The replay_retrain_job's op: candidate, gate (champion_challenger), deploy + promote or refuse."""
        from slmrec.lineage import read_card
        from slmrec.serve.deploy import deploy, promote, refuse

        model, info = self.train()
        record = self.root / self.params.promotion.record
        duel = champion_challenger(self.pipeline, model)
        entry = {"day": self.today, "version": info["version"], "run_id": run_id, "seconds": info["seconds"],
                 "promoted": duel is None or bool(duel["promote"])}
        if duel is not None:
            entry["gate"] = [{k: r[k] for k in ("metric", "diff", "lo", "hi", "threshold")} for r in duel["rows"]]
        self.retrains.append(entry)
        if duel is not None and not duel["promote"]:
            refuse(record, "sasrec", read_card(model)["content_hash"], who=f"replay run {run_id}",
                   why="not non-inferior to the deployed champion", evidence={"champion_challenger": duel})
            raise dg.Failure(description=f"candidate v{info['version']} refused: not non-inferior to the champion")
        dep = deploy(model, self.root / self.params.serve.models_dir, self.root)
        promote(record, dep, "sasrec", who=f"replay run {run_id}", why="gate passed",
                evidence={"champion_challenger": duel}, root=self.root)

    # --------------------------------------------------------------- one simulated day = one tick of the loop
    def materialize(self, assets, partition: str) -> list:
        result = dg.materialize(assets, partition_key=partition, instance=self.instance,
                                resources={"pipeline": self.pipeline}, raise_on_error=False)
        if not result.success:
            errors = [_cause(e.event_specific_data.error) for e in result.all_events
                      if e.event_type_value == "STEP_FAILURE"]
            raise RuntimeError(f"{[a.key.to_user_string() for a in assets]} {partition}: {errors}")
        return result.asset_materializations_for_node("recommendation_monitoring") \
            if recommendation_monitoring in assets else []

    def tick_sensor(self, t: float) -> dict:
        with mock.patch.object(sensors, "now", lambda: t):
            ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"pipeline": self.pipeline})
            out = sensors.retrain_on_drift(ctx)
            self.cursor = ctx.cursor
        if isinstance(out, dg.RunRequest):
            result = replay_retrain_job.execute_in_process(instance=self.instance, tags=out.tags, raise_on_error=False,
                                                           resources={"replay": self})
            return {"requested": out.tags[sensors.REQUEST_TAG], "retrain_run_ok": result.success}
        return {"skip": out.skip_message if out is not None else ""}

    def run(self) -> dict:
        cfg = self.cfg
        rows = read_inter(cfg.inter)
        self.setup(rows)
        self.promote_first()
        train = rows[rows["ts"] < day_bounds(cfg.cutoff)[0]]
        from slmrec.data.sequences import load_splits

        known = set(load_splits(self.root / self.params.sequences.out_dir).item_ids[1:])
        train = train[train["item_id"].isin(known)]  # the shifts among known items draw from the model's vocabulary
        shift = SHIFTS[cfg.scenario](train, read_genres(cfg.items) if cfg.scenario == "taste" else {},
                                     cfg.shift_share, cfg.seed)
        self.cursor = None
        table, started = [], time.monotonic()
        (self.out / "dagster").mkdir(parents=True, exist_ok=True)
        with ExitStack() as patches, dg.instance_for_test(temp_dir=str(self.out / "dagster")) as instance:
            self.instance = instance
            for n in range(1, cfg.days + 1):
                day = shift_day(cfg.start, n - 1)
                self.today = day
                start, end = day_bounds(day)
                day_rows = rows[(rows["ts"] >= start) & (rows["ts"] < end)]
                shifted = n >= cfg.shift_day and cfg.scenario != "honest"
                if shifted:
                    day_rows = shift.rows(day_rows)
                    if n == cfg.shift_day:
                        for p in shift.patches():
                            patches.enter_context(p)
                row = {"day": day, "n": n, "shifted": shifted, "interactions": len(day_rows)}
                if len(day_rows):
                    day_rows.to_csv(self.root / "data/raw/landing" / f"{day}.csv", index=False)
                    self.materialize([landing_interactions], day)
                tick = end + 2 * 3600  # the schedule's tick the next day at 02:00
                for request in schedules.daily_requests(tick, self.params.monitoring.truth_days, cfg.start):
                    key = request.partition_key
                    if request.asset_selection:  # the re-monitoring of a day whose ground truth completed
                        if not (self.root / self.params.serve.recommendations_dir / f"{key}.parquet").is_file():
                            continue
                        (m,) = self.materialize([recommendation_monitoring], key)
                        row["remonitored"] = {"day": key, **_verdict(m.metadata), "values": _values(m.metadata)}
                    else:
                        self.materialize([recommendations], key)
                        (m,) = self.materialize([recommendation_monitoring], key)
                        row.update(_verdict(m.metadata), values=_values(m.metadata))
                row["sensor"] = self.tick_sensor(tick + 600)
                table.append(row)
                self.log(f"{day} {'*' if shifted else ' '} {row.get('verdict')}: {row.get('failing') or ''}"
                         f"{' | remonitor ' + row['remonitored']['day'] + ' ' + row['remonitored']['verdict'] if 'remonitored' in row else ''}"
                         f" | {row['sensor']}")
        alerts_file = self.root / self.params.automation.alerts_file
        alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()] if alerts_file.is_file() else []
        result = {"config": dataclasses.asdict(cfg), "monitoring": self.params_dict["monitoring"], "days": table,
                  "retrains": self.retrains, "alerts": alerts, "summary": summarize(table, cfg),
                  "seconds": round(time.monotonic() - started, 1)}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "replay.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (self.out / "replay.md").write_text(markdown_table(table) + "\n")
        (self.out / "replay.svg").write_text(svg_plot(
            table, f"replay {cfg.scenario} from {cfg.start}: each rule's value / its threshold", self.params_dict[
                "monitoring"], cfg.shift_day if cfg.scenario != "honest" else None))
        return result


def _cause(error) -> str:
    while error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    return f"{error.cls_name}: {error.message.strip()}"


def _verdict(metadata) -> dict:
    return {"verdict": metadata["verdict"].value, "failing": metadata["failing"].value}


def _values(metadata) -> dict:
    """Each rule's value where the rule was judged (None where it was skipped: too few users, no truth yet)."""
    summary = json.loads(Path(metadata["summary_json"].value).read_text())
    return {r["name"]: (r["value"] if r["status"] != "skipped" else None) for r in summary["verdict"]["rules"]}


def summarize(table: list[dict], cfg: ReplayConfig) -> dict:
    """Alarms per judged window (a day's partition, judged on that day and again with its ground truth).
    False alarms: windows judged drift by a verdict given before the shift began (all days when honest).
    Caught: the first verdict given on or after the shift's first day that says drift on a window holding
    shifted days, or that fails a rule an earlier verdict on the same window did not (a re-judged window whose
    ground truth or inputs the shift reached)."""
    shifted = cfg.scenario != "honest"
    before: dict[str, bool] = {}
    failing_before: dict[str, set] = {}
    caught = None
    first_shifted = shift_day(cfg.start, cfg.shift_day - 1) if shifted else None
    for r in table:
        pairs = [(r["day"], r)] + ([(r["remonitored"]["day"], r["remonitored"])] if r.get("remonitored") else [])
        for part, verdict in pairs:
            if verdict.get("verdict") is None:
                continue
            drift, failing = verdict["verdict"] == "drift", set(verdict.get("failing") or [])
            if not shifted or r["n"] < cfg.shift_day:
                before[part] = before.get(part, False) or drift
            elif drift and caught is None and (part >= first_shifted or failing - failing_before.get(part, set())):
                caught = (r["n"], r["day"], part, failing)
            failing_before[part] = failing_before.get(part, set()) | failing
    false_alarms = sum(before.values())
    return {"days": len(table), "honest_windows": len(before), "false_alarm_windows": false_alarms,
            "false_alarm_rate": round(false_alarms / max(len(before), 1), 3),
            "caught_on": caught[1] if caught else None,
            "days_to_detection": (caught[0] - cfg.shift_day + 1) if caught else None,
            "caught_by": sorted(caught[3]) if caught else None,
            "judged_window": caught[2] if caught else None,
            "requests": sum("requested" in r.get("sensor", {}) for r in table)}


def markdown_table(table: list[dict]) -> str:
    head = "| day | shifted | interactions | verdict | failing | re-monitored day: verdict | sensor |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in table:
        rm = r.get("remonitored")
        sensor = r.get("sensor", {})
        lines.append(f"| {r['day']} | {'yes' if r['shifted'] else ''} | {r['interactions']} | {r.get('verdict', '—')} | "
                     f"{', '.join(r.get('failing') or [])} | "
                     f"{rm['day'] + ': ' + rm['verdict'] + (' (' + ', '.join(rm['failing']) + ')' if rm['failing'] else '') if rm else ''} | "
                     f"{'retrain ' + sensor['requested'] + (' promoted' if sensor['retrain_run_ok'] else ' refused') if 'requested' in sensor else sensor.get('skip', '')[:80]} |")
    return "\n".join(lines)


COLOURS = {"score_drift": "#1f77b4", "history_len_drift": "#8c564b", "recent_popularity_drift": "#e377c2",
           "unknown_item_increase": "#d62728", "cold_user_share": "#ff7f0e", "ndcg_drop": "#9467bd",
           "popularity_shift": "#2ca02c", "list_conflicts": "#17becf"}


def svg_plot(table: list[dict], title: str, thresholds: dict, shift_day: int | None,
             width: int = 900, height: int = 400) -> str:
    """Each rule's value / its threshold per day (above 1 = the rule fails), as plain SVG; the shifted days
    shaded, drift days marked, retrain requests labelled."""
    left, right, top, bottom = 60, 230, 40, 60
    pw, ph = width - left - right, height - top - bottom
    series = {rule: [(r["values"] or {}).get(rule) if r.get("values") else None for r in table] for rule in RULES}
    ratios = {rule: [None if v is None or not thresholds.get(THRESHOLD_OF[rule]) else v / thresholds[THRESHOLD_OF[rule]]
                     for v in vals] for rule, vals in series.items()}
    ymax = max([2.0, *[min(x, 4.0) for xs in ratios.values() for x in xs if x is not None]])
    n = max(len(table) - 1, 1)
    x = lambda i: left + pw * i / n  # noqa: E731
    y = lambda v: top + ph * (1 - min(v, ymax) / ymax)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">{title}</text>']
    if shift_day:
        out.append(f'<rect x="{x(shift_day - 1):.1f}" y="{top}" width="{left + pw - x(shift_day - 1):.1f}" '
                   f'height="{ph}" fill="#999" opacity="0.10"/>')
    out += [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
            f'<line x1="{left}" y1="{y(1):.1f}" x2="{left + pw}" y2="{y(1):.1f}" stroke="#d62728" '
            'stroke-dasharray="5 3"/>',
            f'<text x="{left + 4}" y="{y(1) - 4:.1f}" fill="#d62728">threshold (value / threshold = 1)</text>']
    for t in np.linspace(0, ymax, 5):
        out.append(f'<text x="{left - 8}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    for i, r in enumerate(table):
        out.append(f'<text x="{x(i):.1f}" y="{top + ph + 14}" text-anchor="end" '
                   f'transform="rotate(-40 {x(i):.1f} {top + ph + 14})">{r["day"][5:]}</text>')
        if r.get("verdict") == "drift":
            out.append(f'<circle cx="{x(i):.1f}" cy="{top - 8}" r="4" fill="#d62728"/>')
        if "requested" in r.get("sensor", {}):
            out.append(f'<text x="{x(i):.1f}" y="{top + 12}" text-anchor="middle" fill="#555">retrain</text>')
    for j, rule in enumerate(RULES):
        pts = [(x(i), y(v)) for i, v in enumerate(ratios[rule]) if v is not None]
        colour = COLOURS[rule]
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{colour}"/>' for a, b in pts]
        ly = top + 16 * j
        out.append(f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 35}" y2="{ly}" stroke="{colour}" '
                   'stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 40}" y="{ly + 4}">{rule}</text>')
    out.append(f'<text x="{left + pw + 15}" y="{top + 16 * len(RULES) + 10}" fill="#555">red dot: drift verdict; '
               'grey: shifted days</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def calibrate(tables: list[list[dict]], margin: float, floor: float = 0.02, min_days: int = 5) -> dict:
    """threshold = max(floor, margin x the largest value each rule reached on the honest days of `tables`),
    rounded up to 3 digits; the day's own windows and the re-monitored ones (with their ground truth) count.
    A rule judged on fewer than `min_days` windows is not calibrated (listed under `_not_calibrated`; its
    params.yaml threshold stays)."""
    out, skipped = {}, {}
    for rule in RULES:
        seen = [v[rule] for table in tables for r in table
                for v in (r.get("values"), (r.get("remonitored") or {}).get("values")) if v and v.get(rule) is not None]
        if len(seen) >= min_days:
            out[THRESHOLD_OF[rule]] = float(np.ceil(max(floor, max(seen) * margin) * 1000) / 1000)
        else:
            skipped[rule] = f"judged on {len(seen)} window(s) < {min_days}: {[round(x, 3) for x in seen]}"
    return {**out, "_not_calibrated": skipped}


PLANTED = {
    "cold_ids": "half of each day's users become new users on new item ids",
    "taste": "half of each day's users turn to the 3 genres least watched in training",
    "popularity": "the 100 most popular items and 100 tail items swap places",
    "degraded": "the served model's item vectors shuffled in memory (files intact)",
    "pipeline": "every history fed to the model truncated to its last 3 items",
}


def _stops(alerts: list[dict]) -> str:
    """The drift sensor's stop alerts, by kind: e.g. '2 × refused retrain, 1 × streak'."""
    kinds = {"did not replace the champion": "refused retrain", "did not end the drift": "retrain streak",
             "no new data": "no new data"}
    counts: dict[str, int] = {}
    for a in alerts:
        if a.get("alert") == "drift retraining stopped":
            kind = next((v for k, v in kinds.items() if k in a["reason"]), "other")
            counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} × {k}" for k, n in counts.items()) or "—"


# the honest periods of a campaign folder, by how far they are held out (README "Replay on real data")
PERIODS = {"honest": "honest period (model cut at its start)",
           "heldout": "held-out honest period: a month's tail no earlier replay monitored",
           "unseen": "honest period no replay had monitored, registered before it ran"}


def results_table(folder: str | Path) -> str:
    """The README table from a campaign folder (make replay): false alarms, then each shift's detection."""
    folder = Path(folder)
    for f in [*(f for kind in PERIODS for f in sorted((folder / kind).glob("*/replay.json"))),
              *sorted(folder.glob("*/replay.json"))]:
        r = json.loads(f.read_text())  # the plots too, from the recorded rows
        c = r["config"]
        f.with_suffix(".svg").write_text(svg_plot(
            r["days"], f"replay {c['scenario']} from {c['start']}: each rule's value / its threshold",
            r["monitoring"], c["shift_day"] if c["scenario"] != "honest" else None))
    lines = []
    for kind, title in PERIODS.items():
        runs = sorted((folder / kind).glob("*/replay.json"))
        if not runs:
            continue
        lines += [*([""] if lines else []), f"| {title} | windows judged | windows judged drift | false-alarm rate | "
                  "failing rule(s) | drift retrains: promoted / refused | loop stopped with an alert |",
                  "|---|---|---|---|---|---|---|"]
        for f in runs:
            r = json.loads(f.read_text())
            s = summarize(r["days"], ReplayConfig(**r["config"]))
            promoted = sum(x["promoted"] for x in r["retrains"])
            rules = Counter(rule for day in r["days"] for rule in day["failing"])
            lines.append(f"| {r['config']['start']} + {s['days']} days | {s['honest_windows']} | "
                         f"{s['false_alarm_windows']} | {s['false_alarm_rate']:.0%} | "
                         f"{', '.join(f'{k} ({n})' for k, n in rules.items()) or '—'} | "
                         f"{promoted} / {len(r['retrains']) - promoted} | {_stops(r['alerts'])} |")
    lines += ["", "| shift (from day 8, 1998-02-08) | caught on | days to detection | by rule(s) | false alarms before "
              "the shift (windows) | drift retrains: promoted / refused | loop stopped with an alert |",
              "|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS[1:]:
        f = folder / scenario / "replay.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        s = summarize(r["days"], ReplayConfig(**r["config"]))
        promoted = sum(x["promoted"] for x in r["retrains"])
        caught = (f"{s['caught_on']}" + (f" (window of {s['judged_window']})" if s["judged_window"] != s["caught_on"]
                                         else "")) if s["caught_on"] else "not caught"
        lines.append(f"| {scenario}: {PLANTED[scenario]} | {caught} | {s['days_to_detection'] or '—'} | "
                     f"{', '.join(s['caught_by'] or []) or '—'} | {s['false_alarm_windows']} of {s['honest_windows']} | "
                     f"{promoted} / {len(r['retrains']) - promoted} | {_stops(r['alerts'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestration.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "calibrate", "thresholds", "table"],
                   help="run: one replay; calibrate: an honest replay with every rule recording only; thresholds: "
                   "calibrated thresholds from calibrate runs' replay.json files (--from)")
    p.add_argument("--from", dest="sources", nargs="+",
                   help="thresholds: the calibrate runs' replay.json files; table: the campaign folder")
    d = ReplayConfig()
    p.add_argument("--scenario", choices=SCENARIOS, default=d.scenario)
    for name in ("inter", "items", "cutoff", "start"):
        p.add_argument(f"--{name}", default=getattr(d, name))
    p.add_argument("--days", type=int, default=d.days)
    p.add_argument("--shift-day", type=int, default=d.shift_day)
    p.add_argument("--shift-share", type=float, default=d.shift_share)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--margin", type=float, default=1.25, help="thresholds: threshold = margin x honest maximum")
    p.add_argument("--params", default=str(PROJECT_DIR / "params.yaml"))
    p.add_argument("--thresholds", help="a calibrate run's thresholds.json, applied over params.yaml monitoring:")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.command == "table":
        table = results_table(args.sources[0] if args.sources else "results/replay")
        Path(args.out).write_text(table)
        print(table)
        return 0
    if args.command == "thresholds":
        if not args.sources:
            p.error("thresholds needs --from replay.json ...")
        tables = [json.loads(Path(f).read_text())["days"] for f in args.sources]
        thresholds = calibrate(tables, args.margin)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**thresholds, "_calibrated_on": args.sources, "_margin": args.margin,
                                              "_honest_days": sum(len(t) for t in tables)},
                                             indent=2, sort_keys=True) + "\n")
        print(json.dumps(thresholds, indent=2, sort_keys=True))
        return 0
    cfg = ReplayConfig(inter=args.inter, items=args.items, cutoff=args.cutoff, start=args.start, days=args.days,
                       scenario="honest" if args.command == "calibrate" else args.scenario, shift_day=args.shift_day,
                       shift_share=args.shift_share, epochs=args.epochs, seed=args.seed,
                       record_only=args.command == "calibrate")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    overrides = None
    if args.thresholds:
        overrides = {"monitoring": {k: v for k, v in json.loads(Path(args.thresholds).read_text()).items()
                                    if not k.startswith("_")}}
    result = Replay(cfg, args.out, args.params, overrides).run()
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
