"""Monitoring windows, all built by one rule, and the monitoring of one day.

    ref, built = ensure_reference("models/deployed/<hash>/model", "results/monitoring/reference", cfg)
    summary = monitor_day("1998-03-01", "results/recommendations", "data/warehouse.duckdb", splits_dir, ref, cfg)

**The rule** (`assemble_window`): for a span of days, the users active in them (at least one interaction
that passes the splits' filters); each user's latest list of the span — made with their history as of
the end of that list's day; the inputs (history length, unknown-item share, cold start, the popularity of
what they turned to in the span) from that history; and as delayed ground truth the items of their next
`truth_days` days, each with the rank the model gives it over the whole catalogue.

- A **current window** (`monitor_day`): the span = the `window_days` partitions ending with the day; the
  lists are the batch recommendations (contract (a)) the promoted model published for them.
- The **reference window** (`reference_window`): the same rule over the `window_days` days that end
  `truth_days` + 1 days before the model's training data ends (so their ground truth is complete and
  inside it); its lists are made now by the same model through the same batch function, point in time.
  An honest period therefore has no built-in difference in who is measured or how: same user selection,
  same history rule, same truth horizon. One difference remains and is known: the reference's truth
  items were training interactions (leave-one-out trains on all but each user's last two), so its
  NDCG@k is optimistic; `max_ndcg_drop` is calibrated on honest periods after the cutoff with that in.
- The **probe** (`probe_window`): the reference window's users re-scored by the model at monitoring time,
  same histories. The score drift rule compares its scores with the reference's: 0 exactly while the model
  behaves as it did, so it measures the model, not who came (current users' scores differ from reference
  users' with the model unchanged — issue 17's held-out tails: 4 of 63 windows judged drift that way). Who
  comes is what the input rules (history length, recent popularity, unknown items, cold users) judge.

Histories, the active users and the truth come from the serving side's HistoryStore (the splits' filters
and order): the one history query. Days come from slmrec.days.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from slmrec.config import MonitoringConfig
from slmrec.data.sequences import SEQUENCES_FILE, Splits, load_splits
from slmrec.days import DAY, day_bounds, day_name, days_ending, shift_day
from slmrec.monitor.report import monitor, save_report
from slmrec.monitor.verdict import judge
from slmrec.monitor.window import Window, input_features, read_window, write_window

REFERENCE_RULE = 2  # bump when the reference rule changes: old reference files are then rebuilt, not reused


def train_interactions(splits: Splits) -> pd.DataFrame:
    """user_id, item_id of everything the model saw in training (train lists + validation targets), original ids."""
    rows = [(splits.user_ids[u], splits.item_ids[i]) for u, (history, _target) in enumerate(splits.test)
            for i in history]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


def item_popularity(train: pd.DataFrame) -> dict[str, float]:
    """item -> share of training users who interacted with it (Evidently's ARP popularity)."""
    users = train["user_id"].nunique()
    return (train.drop_duplicates().groupby("item_id")["user_id"].count() / max(users, 1)).to_dict()


def data_end(splits_dir: str | Path) -> int:
    """The last interaction time (unix s) of the model's training data (the splits' sequences)."""
    ts = pq.read_table(Path(splits_dir) / SEQUENCES_FILE, columns=["ts"]).column("ts")
    if len(ts) == 0:
        raise ValueError(f"{splits_dir}: no sequences, no training period")
    return int(ts.to_numpy().max())


def reference_days(splits_dir: str | Path, cfg: MonitoringConfig) -> list[str]:
    """The reference span: `window_days` days ending truth_days + 1 days before the training data's last day."""
    return days_ending(shift_day(day_name(data_end(splits_dir)), -(cfg.truth_days + 1)), cfg.window_days)


def window_lists(rec, days: list[str], k: int) -> pd.DataFrame:
    """The lists the batch job would publish for `days`: users active each day, history as of its end."""
    from slmrec.serve.batch import batch_recommendations
    from slmrec.serve.history import active_users

    frames = [batch_recommendations(rec, users, k, day, as_of=day_bounds(day)[1])
              for day in days if (users := active_users(rec.sources.db, day))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["user_id", "rank", "item_id", "score", "model", "partition"])


def latest_lists(lists: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Each user's latest list of a span (by `partition`), and user -> that partition."""
    lists = lists.astype({"user_id": str, "partition": str})
    latest = lists.groupby("user_id")["partition"].max()
    return lists[lists["partition"] == lists["user_id"].map(latest)], latest


def assemble_window(lists: pd.DataFrame, rec, days: list[str], popularity: dict[str, float], truth_days: int,
                    truth_end: int | None = None) -> Window:
    """The one window rule (module doc). `lists`: batch recommendations of `days` (column `partition`);
    `rec`: the model that made them (its store, item vocabulary and ranks); `truth_end`: no truth at or
    after this time (the reference stays inside the training data)."""
    from slmrec.serve.challenge import serving_ranks
    from slmrec.serve.history import active_users

    lists, latest = latest_lists(lists)
    start, _ = day_bounds(days[0])
    _, end = day_bounds(days[-1])
    store = rec.history
    active = {u for day in days for u in active_users(rec.sources.db, day)}
    users = sorted(set(latest.index) | active)  # a user the model could not serve still counts (cold start)
    known = set(rec.item_index)
    histories, recent, examples, owners = {}, {}, [], []
    for user in users:
        cut = day_bounds(latest[user])[1] if user in latest.index else end
        history = store.get(user, cut)
        histories[user] = history
        before = store.get(user, start) or []
        recent[user] = (history or [])[len(before):]
        if user not in latest.index or not history:
            continue
        horizon = cut + truth_days * DAY if truth_end is None else min(cut + truth_days * DAY, truth_end)
        later = (store.get(user, horizon) or [])[len(history):]
        for item in dict.fromkeys(later):
            if item not in history:  # an item seen again is excluded from the list by the protocol: not truth
                examples.append((history, item))
                owners.append((user, item))
    truth = None
    if examples:
        ranks = serving_ranks(rec, examples)
        truth = pd.DataFrame(owners, columns=["user_id", "item_id"]).assign(rank=ranks)
    return Window(recs=lists[["user_id", "rank", "item_id", "score"]], truth=truth,
                  inputs=input_features(histories, known, recent, popularity))


def reference_window(rec, splits_dir: str | Path, cfg: MonitoringConfig) -> Window:
    """The model's reference window: the rule over `reference_days`, lists made now by `rec` (point in time)."""
    days = reference_days(splits_dir, cfg)
    splits = load_splits(splits_dir)
    lists = window_lists(rec, days, cfg.k)
    if lists.empty:
        raise ValueError(f"no active user the model can serve in its reference span {days[0]}..{days[-1]}")
    end = day_bounds(day_name(data_end(splits_dir)))[0]
    return assemble_window(lists, rec, days, item_popularity(train_interactions(splits)), cfg.truth_days, end)


def probe_window(rec, cfg: MonitoringConfig) -> Window:
    """The model's reference users re-scored now: the lists `rec` makes today for the users of its reference
    span, each with the history as of the end of their list's day — the same users and histories as the
    reference window's lists, so a model that behaves as it did when its reference was built gives the same
    scores exactly (the score drift rule compares these; a damaged or swapped model moves them, a change in
    who comes does not). Lists only: no truth, no inputs."""
    lists = window_lists(rec, reference_days(rec.sources.splits_dir, cfg), cfg.k)
    if lists.empty:
        raise ValueError("no active user the model can serve in its reference span: nothing to probe")
    return Window(recs=latest_lists(lists)[0][["user_id", "rank", "item_id", "score"]])


def reference_key(model_hash: str, cfg: MonitoringConfig) -> str:
    """<model hash[:16]>-<what else determines the reference>: the rule version, k, window and truth days."""
    spec = json.dumps({"rule": REFERENCE_RULE, "k": cfg.k, "window_days": cfg.window_days,
                       "truth_days": cfg.truth_days}, sort_keys=True)
    return f"{model_hash[:16]}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def reference_path(reference_dir: str | Path, model_hash: str, cfg: MonitoringConfig) -> Path:
    return Path(reference_dir) / f"{reference_key(model_hash, cfg)}.parquet"


def reference_model(reference_file: str | Path) -> str:
    """The model (content hash prefix) a reference window belongs to: the first part of its file name."""
    return Path(reference_file).stem.split("-")[0]


def load_recommender(model_dir, splits=None, db=None):
    from slmrec.serve.recommender import Recommender

    return Recommender.load(model_dir, splits, db)


def ensure_reference(model_dir: str | Path, reference_dir: str | Path, cfg: MonitoringConfig,
                     splits: str | Path | None = None, db: str | Path | None = None, rec=None) -> tuple[Path, bool]:
    """The reference window file of the model in `model_dir` (or `rec`, loaded), built when missing.
    Returns (path, built)."""
    rec = rec or load_recommender(model_dir, splits, db)
    path = reference_path(reference_dir, rec.model_hash, cfg)
    if path.is_file():
        return path, False
    write_window(reference_window(rec, rec.sources.splits_dir, cfg), path)
    return path, True


def monitor_windows(reference: Window, current: Window, train: pd.DataFrame, cfg: MonitoringConfig,
                    out_dir: str | Path, extra: dict | None = None, probe: Window | None = None) -> dict:
    """Report + verdict, saved under out_dir; returns the summary (also in out_dir/summary.json).
    `probe`: the reference users re-scored by the model now (probe_window); None = no score drift rule."""
    report = monitor(reference, current, train, cfg, probe=probe)
    verdict = judge(report, cfg)
    summary = {"verdict": verdict.to_dict(), "verdict_markdown": verdict.markdown(), **(extra or {})}
    paths = save_report(report, out_dir, summary)
    return {"k": report.k, "values": report.values, "counts": report.counts, **summary,
            "files": {name: str(p) for name, p in paths.items()}}


def current_window(day: str, recs_dir: str | Path, rec, cfg: MonitoringConfig, popularity: dict[str, float]) -> Window:
    """The rule over the `window_days` partitions ending with `day`, lists = rec's published batch files."""
    recs_dir = Path(recs_dir)
    if not (recs_dir / f"{day}.parquet").is_file():
        raise FileNotFoundError(f"no recommendations for {day}: {recs_dir / f'{day}.parquet'} "
                                "(materialize `recommendations` for that partition first)")
    days = days_ending(day, cfg.window_days)
    frames = [pd.read_parquet(recs_dir / f"{d}.parquet") for d in days if (recs_dir / f"{d}.parquet").is_file()]
    recs = pd.concat(frames, ignore_index=True)
    recs = recs[recs["model"].astype(str) == rec.model_hash]
    if recs.empty:
        raise ValueError(f"no recommendation lists of model {rec.model_hash[:16]} in {recs_dir} for {days[0]}..{day}")
    return assemble_window(recs, rec, days, popularity, cfg.truth_days)


def monitor_day(day: str, recs_dir: str | Path, model_dir: str | Path, reference_file: str | Path,
                cfg: MonitoringConfig, out_dir: str | Path | None = None, splits: str | Path | None = None,
                db: str | Path | None = None, rec=None) -> dict:
    """Monitor the batch recommendations of the `monitoring.window_days` partitions ending with `day`
    (recs_dir/<day>.parquet, contract (a)), made by the model in `model_dir`, against its reference.
    The report goes under out_dir (default monitoring.out_dir/day)."""
    rec = rec or load_recommender(model_dir, splits, db)
    model = reference_model(reference_file)
    if not rec.model_hash.startswith(model):
        raise ValueError(f"reference {reference_file} belongs to model {model}, not to {rec.model_hash[:16]}")
    train = train_interactions(load_splits(rec.sources.splits_dir))
    current = current_window(day, recs_dir, rec, cfg, item_popularity(train))
    reference = read_window(reference_file)
    days = days_ending(day, cfg.window_days)
    return monitor_windows(reference, current, train, cfg, out_dir or Path(cfg.out_dir) / day,
                           {"partition": day, "window": [days[0], day], "model": model,
                            "reference": str(reference_file)}, probe=probe_window(rec, cfg))
