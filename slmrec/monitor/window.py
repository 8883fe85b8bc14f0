"""A monitoring window: what a model recommended, what the users did afterwards, and what came in.

    window = Window(recs=..., truth=..., inputs=...)     # DataFrames, see the column lists below
    write_window(window, "ref.parquet"); read_window("ref.parquet")

- `recs`   user_id, rank (1-based), item_id, score — the top-K lists (contract (a) of the batch
           recommendations; the serving log's `items`/`scores` lists exploded, see `from_serving_log`).
- `truth`  user_id, item_id — the items each user interacted with after the list was made (delayed
           ground truth). None = not arrived yet: the quality metrics are left out.
- `inputs` one row per user: user_id, history_len (items in the history the model saw),
           unknown_share (share of those history items the model does not know), cold_start (1.0 when
           the user had no usable history: unknown to the store or every history item unknown).
           None = not known (e.g. a bare recommendations file): the input-drift metrics are left out.

A window file is one Parquet table with a `part` column (rec | truth | input) holding the three
frames; a plain recommendations Parquet file (no `part` column) reads as a window with recs only.
All ids are strings (the original ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REC_COLUMNS = ["user_id", "rank", "item_id", "score"]
TRUTH_COLUMNS = ["user_id", "item_id"]
INPUT_COLUMNS = ["user_id", "history_len", "unknown_share", "cold_start"]
WINDOW_COLUMNS = ["part", "user_id", "item_id", "rank", "score", "history_len", "unknown_share", "cold_start"]


def _require(df: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")
    return df


@dataclass
class Window:
    recs: pd.DataFrame
    truth: pd.DataFrame | None = None
    inputs: pd.DataFrame | None = None

    def __post_init__(self):
        recs = _require(self.recs, REC_COLUMNS, "recommendations")[REC_COLUMNS].copy()
        recs["user_id"] = recs["user_id"].astype(str)
        recs["item_id"] = recs["item_id"].astype(str)
        recs["rank"] = recs["rank"].astype(int)
        recs["score"] = recs["score"].astype(float)
        if len(recs) and recs["rank"].min() < 1:
            raise ValueError(f"recommendations: rank is 1-based, found {recs['rank'].min()}")
        if recs.duplicated(["user_id", "rank"]).any():
            dup = recs[recs.duplicated(["user_id", "rank"], keep=False)].head(3).to_dict("records")
            raise ValueError(f"recommendations: two items at the same (user_id, rank), e.g. {dup}")
        self.recs = recs.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
        if self.truth is not None:
            truth = _require(self.truth, TRUTH_COLUMNS, "ground truth")[TRUTH_COLUMNS].astype(str)
            self.truth = truth.drop_duplicates().reset_index(drop=True)
        if self.inputs is not None:
            inputs = _require(self.inputs, INPUT_COLUMNS, "inputs")[INPUT_COLUMNS].copy()
            inputs["user_id"] = inputs["user_id"].astype(str)
            if inputs["user_id"].duplicated().any():
                raise ValueError("inputs: one row per user expected, found duplicate user_id values")
            for c in INPUT_COLUMNS[1:]:
                inputs[c] = inputs[c].astype(float)
            self.inputs = inputs.reset_index(drop=True)

    @property
    def users(self) -> int:
        return int(self.recs["user_id"].nunique())

    @property
    def truth_users(self) -> int:
        """Users that have both a list and at least one later interaction (the users quality is measured on)."""
        if self.truth is None:
            return 0
        return int(len(set(self.truth["user_id"]) & set(self.recs["user_id"])))


def write_window(window: Window, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [window.recs.assign(part="rec")]
    if window.truth is not None:
        parts.append(window.truth.assign(part="truth"))
    if window.inputs is not None:
        parts.append(window.inputs.assign(part="input"))
    table = pd.concat(parts, ignore_index=True).reindex(columns=WINDOW_COLUMNS)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_window(path: str | Path) -> Window:
    """A window file, or a plain recommendations Parquet file / folder of them (recs only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"window {path} not found")
    table = pd.read_parquet(path)
    if "part" not in table.columns:
        return Window(recs=table)
    unknown = set(table["part"]) - {"rec", "truth", "input"}
    if unknown:
        raise ValueError(f"{path}: unknown part value(s) {sorted(unknown)}")
    truth = table[table["part"] == "truth"]
    inputs = table[table["part"] == "input"]
    return Window(
        recs=table[table["part"] == "rec"][REC_COLUMNS],
        truth=truth[TRUTH_COLUMNS] if len(truth) else None,
        inputs=inputs[INPUT_COLUMNS] if len(inputs) else None,
    )


def input_features(histories: dict[str, list[str] | None], known_items: set[str]) -> pd.DataFrame:
    """Per user: history length, share of history items the model does not know, cold start.

    `histories[user]` is the user's history as the serving side saw it (None: the store has no such user).
    """
    rows = []
    for user, history in histories.items():
        history = history or []
        unknown = sum(1 for item in history if item not in known_items)
        rows.append({
            "user_id": str(user),
            "history_len": float(len(history)),
            "unknown_share": unknown / len(history) if history else 0.0,
            "cold_start": float(len(history) - unknown == 0),
        })
    return pd.DataFrame(rows, columns=INPUT_COLUMNS)


def truth_after(interactions: pd.DataFrame, users, start_ts: int, end_ts: int) -> pd.DataFrame:
    """Delayed ground truth: what `users` interacted with in [start_ts, end_ts) (unix seconds)."""
    _require(interactions, ["user_id", "item_id", "ts"], "interactions")
    users = {str(u) for u in users}
    later = interactions[(interactions["ts"] >= start_ts) & (interactions["ts"] < end_ts)]
    later = later[later["user_id"].astype(str).isin(users)]
    return later[TRUTH_COLUMNS].astype(str).drop_duplicates().reset_index(drop=True)


def from_serving_log(log: pd.DataFrame) -> Window:
    """A window from served answers (contract (b)): one list per request; anonymous requests count as
    distinct users (keyed by request id). The inputs come from the log's history_len / unknown_items."""
    _require(log, ["request_id", "user_id", "history_len", "unknown_items", "items", "scores", "fallback"],
             "serving log")
    key = np.where(log["user_id"].astype(str) == "anonymous", "anonymous:" + log["request_id"].astype(str),
                   log["user_id"].astype(str))
    log = log.assign(key=key).drop_duplicates("key", keep="last")  # a user's latest answer of the window
    recs = []
    inputs = []
    for row in log.itertuples(index=False):
        items, scores = list(row.items), list(row.scores)
        if len(items) != len(scores):
            raise ValueError(f"serving log request {row.request_id}: {len(items)} items but {len(scores)} scores")
        recs += [{"user_id": row.key, "rank": r + 1, "item_id": i, "score": s}
                 for r, (i, s) in enumerate(zip(items, scores))]
        # unknown_count is exact (the log keeps only a sample of the ids since issue 18); older logs: the list
        count = getattr(row, "unknown_count", None)
        n_unknown = (int(count) if count is not None and pd.notna(count)
                     else len(row.unknown_items) if row.unknown_items is not None else 0)
        history_len = int(row.history_len)
        inputs.append({
            "user_id": row.key,
            "history_len": float(history_len),
            "unknown_share": n_unknown / history_len if history_len else 0.0,
            "cold_start": float(bool(pd.notna(row.fallback)) or history_len - n_unknown <= 0),
        })
    return Window(recs=pd.DataFrame(recs, columns=REC_COLUMNS), inputs=pd.DataFrame(inputs, columns=INPUT_COLUMNS))
