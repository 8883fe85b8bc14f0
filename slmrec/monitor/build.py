"""Build monitoring windows from what the pipeline leaves on disk, and monitor one day.

    ref = reference_window(rec, load_splits("data/splits"), k=10)   # the model's lists on its test period
    cur = day_window("results/recommendations/1998-03-01.parquet", "data/warehouse.duckdb",
                     "1998-03-01", known_items, truth_days=7)     # that day's lists + what came after
    summary = monitor_day(...)                                      # both, the Evidently report, the verdict

The reference is the promoted model's top-K for every test user from the history it was evaluated on
(train + validation items), with the held-out test item as the known next item: the quality the
model had when it was promoted. It is stored per model (`reference_path`), so a new promoted model
gets a new reference and an old report stays comparable with what it was judged against.

A day's current window: the batch recommendations (contract (a)) of the `window_days` partitions
ending with that day (ML-100K has ~12 active users a day: one day alone is too few to judge), made
by the model of the reference; each user's history as the store held it at the end of their list's
day for the input features; and the interactions the store holds from that day's end to
`truth_days` later as delayed ground truth — empty until later days are ingested, so the quality
part of a day's report fills in when it is re-run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd

from slmrec.config import MonitoringConfig
from slmrec.data.sequences import Splits, load_splits
from slmrec.monitor.report import monitor, save_report
from slmrec.monitor.verdict import judge
from slmrec.monitor.window import Window, input_features, read_window, write_window

DAY = 86_400


def day_bounds(day: str) -> tuple[int, int]:
    """'YYYY-MM-DD' -> [start, end) in unix seconds, UTC (the store's ts unit)."""
    try:
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError as err:
        raise ValueError(f"day must be YYYY-MM-DD, got {day!r}") from err
    return int(start.timestamp()), int(start.timestamp()) + DAY


def train_interactions(splits: Splits) -> pd.DataFrame:
    """user_id, item_id of everything the model saw in training (train lists + validation targets), original ids."""
    rows = [(splits.user_ids[u], splits.item_ids[i]) for u, (history, _target) in enumerate(splits.test)
            for i in history]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


def reference_window(rec, splits: Splits, k: int, batch_size: int = 256) -> Window:
    """The model's top-k for each test user from its evaluation history, the test item as ground truth.

    `rec` is a slmrec.serve.Recommender (the one inference path: same ranking and exclusion as evaluation).
    """
    from slmrec.serve.recommender import Query  # the serving side is imported only where it is used

    histories = [[splits.item_ids[i] for i in history] for history, _t in splits.test]
    rows = []
    for start in range(0, len(histories), batch_size):
        answers = rec.answer([Query(k=k, items=h) for h in histories[start:start + batch_size]])
        for offset, answer in enumerate(answers):
            if isinstance(answer, Exception):
                raise answer  # every test user has a known history: a failure here is a real error
            user = splits.user_ids[start + offset]
            rows += [(user, r + 1, item, score) for r, (item, score) in enumerate(zip(answer.items, answer.scores))]
    recs = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
    truth = pd.DataFrame({"user_id": splits.user_ids, "item_id": [splits.item_ids[t] for _h, t in splits.test]})
    inputs = pd.DataFrame({"user_id": splits.user_ids, "history_len": [float(len(h)) for h in histories],
                           "unknown_share": 0.0, "cold_start": 0.0})
    return Window(recs=recs, truth=truth, inputs=inputs)


def reference_path(reference_dir: str | Path, model_hash: str) -> Path:
    return Path(reference_dir) / f"{model_hash[:16]}.parquet"


def ensure_reference(model_dir: str | Path, reference_dir: str | Path, k: int, splits: str | Path | None = None,
                     db: str | Path | None = None) -> tuple[Path, bool]:
    """The reference window file of the model in `model_dir`, built when missing. Returns (path, built)."""
    from slmrec.serve.recommender import Recommender

    rec = Recommender.load(model_dir, splits, db)
    path = reference_path(reference_dir, rec.model_hash)
    if path.is_file():
        return path, False
    write_window(reference_window(rec, load_splits(rec.sources.splits_dir), k), path)
    return path, True


def _interactions(con, users: list[str], end_ts: int) -> pd.DataFrame:
    con.register("_users", pd.DataFrame({"user_id": users}))
    rows = con.execute(
        """SELECT r.user_id, r.item_id, r.ts FROM raw_interactions r JOIN _users u USING (user_id)
           WHERE r.ts < ? ORDER BY r.user_id, r.ts, r.source_file, r.row_number, r.item_pos""", [end_ts]).df()
    con.unregister("_users")
    return rows.astype({"user_id": str, "item_id": str})


def window_days(day: str, days: int) -> list[str]:
    """The `days` partitions ending with `day`, oldest first."""
    start, _ = day_bounds(day)
    return [dt.datetime.fromtimestamp(start - n * DAY, dt.timezone.utc).strftime("%Y-%m-%d")
            for n in range(days - 1, -1, -1)]


def current_window(recs: pd.DataFrame, db: str | Path, days: list[str], known_items: set[str],
                   truth_days: int) -> Window:
    """The current window over the partitions `days`: each user's latest list (column `partition`), the
    inputs of the listed users and of every user active in those days (history at the end of the user's
    list day, or of the window), and each listed user's interactions in the `truth_days` after the list."""
    recs = recs.astype({"user_id": str, "partition": str})
    latest = recs.groupby("user_id")["partition"].max()
    recs = recs[recs["partition"] == recs["user_id"].map(latest)]
    start, _ = day_bounds(days[0])
    _, end = day_bounds(days[-1])
    user_end = {u: day_bounds(p)[1] for u, p in latest.items()}
    with duckdb.connect(str(db), read_only=True) as con:
        # a user the model could not serve (no known item) gets no list, and must still count as cold start
        active = con.execute("SELECT DISTINCT user_id FROM raw_interactions WHERE ts >= ? AND ts < ?",
                             [start, end]).df()["user_id"].astype(str)
        users = sorted(set(latest.index) | set(active))
        rows = _interactions(con, users, end + truth_days * DAY)
    cut = rows["user_id"].map(lambda u: user_end.get(u, end))
    histories: dict[str, list[str] | None] = {u: None for u in users}
    for user, group in rows[rows["ts"] < cut].groupby("user_id", sort=False):
        histories[user] = group["item_id"].tolist()
    later = rows[(rows["ts"] >= cut) & (rows["ts"] < cut + truth_days * DAY) & rows["user_id"].isin(user_end)]
    return Window(recs=recs, truth=later[["user_id", "item_id"]] if len(later) else None,
                  inputs=input_features(histories, known_items))


def monitor_windows(reference: Window, current: Window, train: pd.DataFrame, cfg: MonitoringConfig,
                    out_dir: str | Path, extra: dict | None = None) -> dict:
    """Report + verdict, saved under out_dir; returns the summary (also in out_dir/summary.json)."""
    report = monitor(reference, current, train, cfg)
    verdict = judge(report, cfg)
    summary = {"verdict": verdict.to_dict(), "verdict_markdown": verdict.markdown(), **(extra or {})}
    paths = save_report(report, out_dir, summary)
    return {"k": report.k, "values": report.values, "counts": report.counts, **summary,
            "files": {name: str(p) for name, p in paths.items()}}


def reference_model(reference_file: str | Path) -> str:
    """The model (content hash prefix) a reference window belongs to: its file name (reference_path)."""
    return Path(reference_file).stem


def monitor_day(day: str, recs_dir: str | Path, db: str | Path, splits_dir: str | Path, reference_file: str | Path,
                cfg: MonitoringConfig, out_dir: str | Path | None = None) -> dict:
    """Monitor the batch recommendations of the `monitoring.window_days` partitions ending with `day`
    (recs_dir/<day>.parquet, contract (a)), made by the reference's model, against that reference.
    The report goes under out_dir (default monitoring.out_dir/day)."""
    recs_dir = Path(recs_dir)
    if not (recs_dir / f"{day}.parquet").is_file():
        raise FileNotFoundError(f"no recommendations for {day}: {recs_dir / f'{day}.parquet'} "
                                "(materialize `recommendations` for that partition first)")
    days = window_days(day, cfg.window_days)
    model = reference_model(reference_file)
    frames = [pd.read_parquet(recs_dir / f"{d}.parquet") for d in days if (recs_dir / f"{d}.parquet").is_file()]
    recs = pd.concat(frames, ignore_index=True)
    recs = recs[recs["model"].astype(str).str.startswith(model)]
    if recs.empty:
        raise ValueError(f"no recommendation lists of model {model} in {recs_dir} for {days[0]}..{day}")
    splits = load_splits(splits_dir)
    current = current_window(recs, db, days, {i for i in splits.item_ids[1:]}, cfg.truth_days)
    reference = read_window(reference_file)
    return monitor_windows(reference, current, train_interactions(splits), cfg,
                           out_dir or Path(cfg.out_dir) / day,
                           {"partition": day, "window": [days[0], day], "model": model,
                            "partitions_read": sorted(set(recs["partition"])), "reference": str(reference_file)})
