"""Evidently reports comparing a reference window with a current one (pinned evidently 0.7.23).

    report = monitor(reference, current, train, MonitoringConfig())
    report.values["ndcg@10"]            # {"reference": 0.061, "current": 0.044}
    save_report(report, "results/monitoring/1998-03-01")   # report.html, inputs.html, evidently.json, summary.json

Three Evidently datasets, three reports, nothing synthetic in any:
- **recommendations** (`ranking_frame`): the top-K rows (rank 1..K, score, target = in the ground truth) and
  the ground-truth items the list missed, each at the rank the model really gave it over the catalogue
  (the window's `truth.rank`; score empty). Every relevant item sits at its true rank, so NDCG@i, HitRate@i
  and Recall@i are exact at every cut-off i Evidently draws (1..max(k, 10)) — no jump past K. Quality,
  popularity bias, personalization and novelty run on it (report.html).
- **inputs** (`inputs_frame`): one row per user (history_len, unknown_share, cold_start, recent_popularity):
  the input means and the input drifts (inputs.html).
- **probe** (the reference users re-scored by the model now, slmrec.monitor.build.probe_window): the score
  drift, ValueDrift(score) of the probe's top-K scores against the reference's (probe.html). Same users, same
  histories: 0 while the model behaves as it did when its reference was built.

Every drift metric gets `threshold=` from params.yaml, so the HTML's "drift detected / not detected" is the
verdict's rule (slmrec/monitor/verdict.py) on the same number.

What each value is and how it is read from the snapshot is pinned by tests/monitor/test_monitor_report.py
against hand-computed numbers. Known 0.7.23 behaviours handled here:
- the top-K metrics return a table (rank, value) per cut-off; for NDCG its `rank` column is off by one
  (the value of NDCG@k sits in the row labelled k+1) while HitRate/Recall are labelled correctly, so
  values are taken by position (row k-1), never by the label;
- the reference-side value of PopularityBias(coverage) is computed over every reference row (not only
  the top-K, and without intersecting with the training items; so the HTML's "reference coverage" is
  not comparable), so every value is read from a run with that window alone as the current data: both
  windows through one formula. The drift values come from the current-vs-reference runs (the HTML);
- `save_html`/`save_json` silently write nothing for a pathlib.Path: we pass str and check the files;
- ScoreDistribution fails on rank-type recommendations: not used (score drift is ValueDrift on `score`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Recsys, Report
from evidently.metrics import (
    NDCG,
    HitRate,
    MeanValue,
    Novelty,
    Personalization,
    PopularityBiasMetric,
    RecallTopK,
    RowCount,
    ValueDrift,
)

from slmrec.config import MonitoringConfig
from slmrec.monitor.window import Window

RANKING = ["rank", "target", "score"]
DEFINITION = DataDefinition(
    numerical_columns=RANKING,
    categorical_columns=["user_id", "item_id"],
    ranking=[Recsys(user_id="user_id", item_id="item_id", target="target", prediction="rank",
                    recommendations_type="rank")],
)
INPUT_NUMERIC = ["history_len", "unknown_share", "cold_start", "recent_popularity"]
TRAIN_DEFINITION = DataDefinition(categorical_columns=["user_id", "item_id"])

# metric groups: which values a report holds depends on what both windows carry
QUALITY = ("ndcg", "hit_rate", "recall")
LISTS = ("popularity_arp", "coverage", "gini", "personalization", "novelty")
INPUTS = ("mean_history_len", "unknown_item_share", "cold_user_share")
DRIFTS = ("score_drift", "history_len_drift", "recent_popularity_drift")


def ranking_frame(window: Window, k: int) -> pd.DataFrame:
    """The recommendations dataset: top-K rows + the truth items the list missed, at their true ranks."""
    recs = window.recs[window.recs["rank"] <= k].copy()
    recs["target"] = 0.0
    parts = [recs]
    if window.truth is not None:
        relevant = set(zip(window.truth["user_id"], window.truth["item_id"]))
        recs["target"] = [float((u, i) in relevant) for u, i in zip(recs["user_id"], recs["item_id"])]
        listed = set(zip(recs["user_id"], recs["item_id"]))
        users = set(recs["user_id"])  # quality is measured on users that got a list
        missed = window.truth[[(u in users and (u, i) not in listed)
                               for u, i in zip(window.truth["user_id"], window.truth["item_id"])]]
        # a truth item the model ranks inside the top-k now but its list did not hold: the model that ranks
        # today does not reproduce its own list (a damaged or non-deterministic deployment). Not a row of the
        # metrics (its served rank is unknown); counted by `list_conflicts` and judged by its rule.
        missed = missed[missed["rank"] > k]
        parts = [recs, missed.assign(target=1.0, score=np.nan)]
    frame = pd.concat(parts, ignore_index=True).reindex(columns=["user_id", "item_id", *RANKING])
    return frame.astype({"rank": int, "target": float, "score": float})


ARP_BOOTSTRAP = 1000  # resamples of the users for the 95% interval of the ARP change (popularity_shift)
ARP_SEED = 2025


def user_arp(frame: pd.DataFrame, popularity: pd.Series, k: int) -> np.ndarray:
    """Per user, the mean training popularity of the top-k items with a known popularity (users,): the terms
    whose mean is Evidently's ARP (PopularityBias.get_apr, without normalisation)."""
    top = frame[frame["rank"] <= k]
    top = top.assign(popularity=top["item_id"].map(popularity)).dropna(subset=["popularity"])
    return top.groupby("user_id")["popularity"].mean().to_numpy(np.float64)


def arp_change_interval(reference: pd.DataFrame, current: pd.DataFrame, train: pd.DataFrame, k: int,
                        n_boot: int = ARP_BOOTSTRAP, seed: int = ARP_SEED) -> tuple[float, float, float] | None:
    """(change, lo, hi): the relative change of ARP, (ref - cur) / ref, and its 95% percentile-bootstrap
    interval, users of both windows resampled (seeded). None when a window has no user with a known item.
    A window of 20-70 users moves ARP by several per cent on honest days: the rule judges the interval."""
    popularity = train["item_id"].astype(str).value_counts()  # item -> training interactions
    ref, cur = user_arp(reference, popularity, k), user_arp(current, popularity, k)
    if not len(ref) or not len(cur) or ref.mean() == 0:
        return None
    rng = np.random.default_rng(seed)
    ref_b = ref[rng.integers(0, len(ref), (n_boot, len(ref)))].mean(1)  # (n_boot,)
    cur_b = cur[rng.integers(0, len(cur), (n_boot, len(cur)))].mean(1)  # (n_boot,)
    lo, hi = np.quantile((ref_b - cur_b) / ref_b, [0.025, 0.975])
    return float((ref.mean() - cur.mean()) / ref.mean()), float(lo), float(hi)


def list_conflicts(window: Window, k: int) -> tuple[int, int]:
    """(truth items of listed users the model now ranks inside the top-k although their list missed them,
    truth items of listed users): 0 for a model that reproduces its own lists."""
    if window.truth is None:
        return 0, 0
    listed = set(zip(window.recs.loc[window.recs["rank"] <= k, "user_id"], window.recs.loc[window.recs["rank"] <= k,
                                                                                           "item_id"]))
    users = set(window.recs["user_id"])
    truth = window.truth[window.truth["user_id"].isin(users)]
    conflicts = sum(1 for u, i, r in zip(truth["user_id"], truth["item_id"], truth["rank"])
                    if r <= k and (u, i) not in listed)
    return conflicts, len(truth)


def inputs_frame(window: Window) -> pd.DataFrame:
    """The inputs dataset: one row per user."""
    return window.inputs.reindex(columns=["user_id", *[c for c in INPUT_NUMERIC if c in window.inputs.columns]])


def _metrics(k: int, quality: bool, html: bool = False) -> dict[str, object]:
    """Our name -> Evidently metric on the recommendations dataset. `html`: the set shown in the report (one
    popularity widget: the ARP, coverage and Gini variants render the same three counters), else the set the
    values are read from."""
    m: dict[str, object] = {"rows": RowCount()}
    if quality:
        m.update({"ndcg": NDCG(k=k), "hit_rate": HitRate(k=k), "recall": RecallTopK(k=k)})
    m["popularity_arp"] = PopularityBiasMetric(k=k, metric="arp")
    if not html:
        m.update({"coverage": PopularityBiasMetric(k=k, metric="coverage"),
                  "gini": PopularityBiasMetric(k=k, metric="gini")})
    m.update({"personalization": Personalization(k=k), "novelty": Novelty(k=k)})
    return m


def _probe_metrics(cfg: MonitoringConfig) -> dict[str, object]:
    """Our name -> Evidently metric on the probe (current) against the reference's lists."""
    return {"probe_rows": RowCount(),
            "score_drift": ValueDrift(column="score", method=cfg.score_drift_method, threshold=cfg.score_drift_threshold)}


def _input_metrics(cfg: MonitoringConfig, popularity: bool, drift: bool) -> dict[str, object]:
    """Our name -> Evidently metric on the inputs dataset."""
    m: dict[str, object] = {"input_rows": RowCount(),
                            "mean_history_len": MeanValue(column="history_len"),
                            "unknown_item_share": MeanValue(column="unknown_share"),
                            "cold_user_share": MeanValue(column="cold_start")}
    if popularity:
        m["mean_recent_popularity"] = MeanValue(column="recent_popularity")
    if drift:
        m["history_len_drift"] = ValueDrift(column="history_len", method=cfg.input_drift_method,
                                            threshold=cfg.input_drift_threshold)
        if popularity:
            m["recent_popularity_drift"] = ValueDrift(column="recent_popularity", method=cfg.input_drift_method,
                                                      threshold=cfg.recent_popularity_threshold)
    return m


def _value(result, k: int) -> float:
    """A float out of a metric result: SingleValue -> value; top-K table -> the row of cut-off k (by position)."""
    value = result.value
    if isinstance(value, pd.DataFrame):
        if value.empty:
            return math.nan
        return float(value["value"].iloc[min(k, len(value)) - 1])  # rows are cut-offs 1, 2, ...: see module doc
    return float(value)


def _run(current: pd.DataFrame, reference: pd.DataFrame | None, train: pd.DataFrame | None, metrics: dict):
    """One Evidently run; `train` None = the inputs dataset (no ranking definition, no training data)."""
    report = Report(list(metrics.values()))
    if train is None:
        definition = DataDefinition(numerical_columns=[c for c in INPUT_NUMERIC if c in current.columns],
                                    categorical_columns=["user_id"])
        return report.run(current_data=Dataset.from_pandas(current, data_definition=definition),
                          reference_data=None if reference is None
                          else Dataset.from_pandas(reference, data_definition=definition))
    train_ds = Dataset.from_pandas(train, data_definition=TRAIN_DEFINITION)
    snapshot = report.run(
        current_data=Dataset.from_pandas(current, data_definition=DEFINITION),
        reference_data=None if reference is None else Dataset.from_pandas(reference, data_definition=DEFINITION),
        additional_data={"current_train_data": train_ds, "reference_train_data": train_ds},
    )
    return snapshot


@dataclass
class MonitorReport:
    k: int
    values: dict[str, dict[str, float | None]]  # name -> {"reference": x, "current": y}
    counts: dict[str, int]  # users / users with ground truth, per window
    snapshot: object = field(repr=False)  # the Evidently snapshot of the recommendations (current vs reference)
    inputs_snapshot: object = field(default=None, repr=False)  # the inputs' snapshot (None: no inputs)
    probe_snapshot: object = field(default=None, repr=False)  # the probe's snapshot (None: no probe)
    metric_names: dict[str, str] = field(default_factory=dict)  # our name -> Evidently's metric name

    def value(self, name: str, side: str = "current") -> float | None:
        return self.values.get(name, {}).get(side)


def _key(name: str, k: int) -> str:
    return f"{name}@{k}" if name in QUALITY else name


def monitor(reference: Window, current: Window, train: pd.DataFrame, cfg: MonitoringConfig,
            probe: Window | None = None) -> MonitorReport:
    """Run the Evidently report of `current` against `reference`; `train` = the model's training interactions
    (user_id, item_id), the popularity that ARP, coverage and novelty are measured against; `probe` = the
    reference users re-scored by the model now (the score drift; None: no score drift value)."""
    k = cfg.k
    train = train[["user_id", "item_id"]].astype(str)
    if train.empty:
        raise ValueError("training interactions are empty: popularity bias and novelty need them")
    for name, w in (("reference", reference), ("current", current), ("probe", probe)):
        if w is None:
            continue
        if w.users == 0:
            raise ValueError(f"the {name} window holds no recommendation lists")
    inputs = reference.inputs is not None and current.inputs is not None
    ref_frame, cur_frame = ranking_frame(reference, k), ranking_frame(current, k)
    quality = all(w.truth_users > 0 and (f["target"] > 0).any() for w, f in ((reference, ref_frame), (current, cur_frame)))

    # the report a user reads: current against reference (the score drift is the probe's own report, below)
    shown = _metrics(k, quality, html=True)
    snapshot = _run(cur_frame, ref_frame, train, shown)
    # the values: each window alone as the current data, so both go through the same formulas (module doc)
    single = _metrics(k, quality)
    runs = [(single, _run(cur_frame, None, train, single).metric_results,
             _run(ref_frame, None, train, single).metric_results)]
    drift_runs = []
    probe_snapshot = None
    if probe is not None:
        shown_probe = _probe_metrics(cfg)
        probe_snapshot = _run(ranking_frame(probe, k), ref_frame, train, shown_probe)
        drift_runs.append((shown_probe, probe_snapshot.metric_results))
    inputs_snapshot = None
    if inputs:
        popularity = all("recent_popularity" in w.inputs.columns for w in (reference, current))
        ref_in, cur_in = inputs_frame(reference), inputs_frame(current)
        shown_in = _input_metrics(cfg, popularity, drift=True)
        inputs_snapshot = _run(cur_in, ref_in, None, shown_in)
        single_in = _input_metrics(cfg, popularity, drift=False)
        runs.append((single_in, _run(cur_in, None, None, single_in).metric_results,
                     _run(ref_in, None, None, single_in).metric_results))
        drift_runs.append((shown_in, inputs_snapshot.metric_results))

    values: dict[str, dict[str, float | None]] = {}
    names: dict[str, str] = {}
    for metrics, cur_results, ref_results in runs:
        for name, metric in metrics.items():
            if name not in ("rows", "input_rows"):
                values[_key(name, k)] = {"reference": _clean(_value(ref_results[metric.metric_id], k)),
                                         "current": _clean(_value(cur_results[metric.metric_id], k))}
                names[_key(name, k)] = cur_results[metric.metric_id].display_name
    for metrics, results in drift_runs:
        for name in DRIFTS:
            if name in metrics:
                values[name] = {"reference": None, "current": _clean(_value(results[metrics[name].metric_id], k))}
                names[name] = results[metrics[name].metric_id].display_name
    interval = arp_change_interval(ref_frame, cur_frame, train, k)
    if interval is not None and "popularity_arp" in values:
        values["popularity_arp"].update(change=interval[0], change_lo=interval[1], change_hi=interval[2])
    counts = {
        "reference_users": reference.users, "current_users": current.users,
        "reference_truth_users": reference.truth_users, "current_truth_users": current.truth_users,
        "reference_input_users": 0 if reference.inputs is None else len(reference.inputs),
        "current_input_users": 0 if current.inputs is None else len(current.inputs),
        "probe_users": 0 if probe is None else probe.users,
    }
    counts["current_list_conflicts"], counts["current_truth_items"] = list_conflicts(current, k)
    return MonitorReport(k=k, values=values, counts=counts, snapshot=snapshot, metric_names=names,
                         inputs_snapshot=inputs_snapshot, probe_snapshot=probe_snapshot)


def _clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def save_report(report: MonitorReport, out_dir: str | Path, summary: dict) -> dict[str, Path]:
    """report.html + evidently.json (the recommendations), inputs.html + inputs.json (when the windows carry
    inputs), probe.html + probe.json (the score drift, when there is a probe; Evidently's own) and summary.json
    (our values, counts and `summary`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "evidently_json": out / "evidently.json", "summary": out / "summary.json"}
    optional = {"inputs": report.inputs_snapshot, "probe": report.probe_snapshot}
    for name, snap in optional.items():
        if snap is not None:
            paths.update({f"{name}_html": out / f"{name}.html", f"{name}_json": out / f"{name}.json"})
    for p in [*paths.values(), *(out / f"{name}.{ext}" for name in optional for ext in ("html", "json"))]:
        p.unlink(missing_ok=True)
    report.snapshot.save_html(str(paths["html"]))  # str: a Path is silently ignored by evidently 0.7.23
    report.snapshot.save_json(str(paths["evidently_json"]))
    for name, snap in optional.items():
        if snap is not None:
            snap.save_html(str(paths[f"{name}_html"]))
            snap.save_json(str(paths[f"{name}_json"]))
    body = {"k": report.k, "values": report.values, "counts": report.counts,
            "evidently_metrics": report.metric_names, **summary}
    paths["summary"].write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    for name, p in paths.items():
        if not p.is_file() or p.stat().st_size == 0:
            raise RuntimeError(f"monitoring report: {name} was not written to {p}")
    return paths
