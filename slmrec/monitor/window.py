"""A monitoring window: what a model recommended, what the users did afterwards, and what came in.

    window = Window(recs=..., truth=..., inputs=...)     # DataFrames, see the column lists below
    write_window(window, "ref.parquet"); read_window("ref.parquet")

- `recs`   user_id, rank (1-based), item_id, score — the top-K lists (contract (a) of the batch
           recommendations; the serving log's `items`/`scores` lists exploded, see `from_serving_log`).
- `truth`  user_id, item_id, rank — the items each user interacted with after the list was made (delayed
           ground truth) and the rank the model gave each over the whole catalogue (its serving rule: history
           excluded; an item it does not know ranks last, n_items + 1): a truth item the list missed is a
           real row at its real rank, so NDCG's ideal DCG and recall's denominator are right at every cut-off.
           None = not arrived yet: the quality metrics are left out.
- `inputs` one row per user: user_id, history_len (items in the history the model saw),
           unknown_share (share of those history items the model does not know), cold_start (1.0 when
           the user had no usable history: unknown to the store or every history item unknown).
           Optional: recent_popularity (mean training popularity — share of training users — of the items the
           user interacted with inside the window's days; 0 for unknown items): what users turn to now.
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

from slmrec.lineage import atomic_write

REC_COLUMNS = ["user_id", "rank", "item_id", "score"]
TRUTH_COLUMNS = ["user_id", "item_id", "rank"]
INPUT_COLUMNS = ["user_id", "history_len", "unknown_share", "cold_start"]
OPTIONAL_INPUTS = ["recent_popularity"]
WINDOW_COLUMNS = ["part", "user_id", "item_id", "rank", "score", "history_len", "unknown_share", "cold_start",
                  "recent_popularity"]


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
            truth = _require(self.truth, TRUTH_COLUMNS, "ground truth")[TRUTH_COLUMNS].copy()
            truth[["user_id", "item_id"]] = truth[["user_id", "item_id"]].astype(str)
            if truth["rank"].isna().any() or (truth["rank"] < 1).any():
                raise ValueError("ground truth: every item needs the model's 1-based rank over the catalogue")
            truth["rank"] = truth["rank"].astype(int)
            self.truth = truth.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
        if self.inputs is not None:
            columns = INPUT_COLUMNS + [c for c in OPTIONAL_INPUTS if c in self.inputs.columns]
            inputs = _require(self.inputs, INPUT_COLUMNS, "inputs")[columns].copy()
            inputs["user_id"] = inputs["user_id"].astype(str)
            if inputs["user_id"].duplicated().any():
                raise ValueError("inputs: one row per user expected, found duplicate user_id values")
            for c in columns[1:]:
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
    parts = [window.recs.assign(part="rec")]
    if window.truth is not None:
        parts.append(window.truth.assign(part="truth"))
    if window.inputs is not None:
        parts.append(window.inputs.assign(part="input"))
    table = pd.concat(parts, ignore_index=True).reindex(columns=WINDOW_COLUMNS)
    return atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


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
    optional = [c for c in OPTIONAL_INPUTS if c in inputs.columns and inputs[c].notna().all()]
    return Window(
        recs=table[table["part"] == "rec"][REC_COLUMNS],
        truth=truth[TRUTH_COLUMNS] if len(truth) else None,
        inputs=inputs[INPUT_COLUMNS + optional] if len(inputs) else None,
    )


def input_features(histories: dict[str, list[str] | None], known_items: set[str],
                   recent: dict[str, list[str]] | None = None, popularity: dict[str, float] | None = None
                   ) -> pd.DataFrame:
    """Per user: history length, share of history items the model does not know, cold start, and (with
    `recent` and `popularity`) the mean training popularity of the items the user turned to in the window.

    `histories[user]` is the user's history as the serving side saw it (None: the store has no such user);
    `recent[user]` the items of the window's days; `popularity[item]` the share of training users with it.
    """
    rows = []
    for user, history in histories.items():
        history = history or []
        unknown = sum(1 for item in history if item not in known_items)
        row = {
            "user_id": str(user),
            "history_len": float(len(history)),
            "unknown_share": unknown / len(history) if history else 0.0,
            "cold_start": float(len(history) - unknown == 0),
        }
        if recent is not None and popularity is not None:
            items = recent.get(user) or []
            row["recent_popularity"] = (sum(popularity.get(i, 0.0) for i in items) / len(items)) if items else 0.0
        rows.append(row)
    columns = INPUT_COLUMNS + (OPTIONAL_INPUTS if recent is not None and popularity is not None else [])
    return pd.DataFrame(rows, columns=columns)


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
