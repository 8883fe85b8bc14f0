"""Would a user-permutation test call the former score rule's distances beyond chance? (an analysis, not a rule)

    .venv/bin/python bench/replay_permutation.py results/replay/heldout/1997-11-22/replay.json [...]

For each monitored day of a replay: the reference window's top-k scores (the model's reference file) against the
current window's (the batch lists of the `window_days` partitions ending with the day, each user's latest list of
the model that was monitored) — what `score_drift` compared until 2026-12-03 (replays run before then recorded
exactly this number; the rule now reads the probe, the reference users re-scored) — the normed Wasserstein
distance as Evidently computes it (distance / std of the reference), and its p-value under the null "same users'
distribution": whole users (their k scores together) reshuffled between the two windows, 500 draws (seeded).
README "Replay on real data".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from slmrec.days import days_ending
from slmrec.monitor.window import read_window


def normed_wasserstein(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(wasserstein_distance(ref, cur) / max(np.std(ref), 1e-3))  # Evidently's wasserstein (normed)


def permutation_p(ref_users: list[np.ndarray], cur_users: list[np.ndarray], draws: int, seed: int) -> tuple[float, float, float]:
    """(distance, p-value, the null's 95th percentile); users keep their k scores together."""
    observed = normed_wasserstein(np.concatenate(ref_users), np.concatenate(cur_users))
    pool, n_ref = ref_users + cur_users, len(ref_users)
    rng = np.random.default_rng(seed)
    null = np.array([normed_wasserstein(np.concatenate([pool[i] for i in order[:n_ref]]),
                                        np.concatenate([pool[i] for i in order[n_ref:]]))
                     for order in (rng.permutation(len(pool)) for _ in range(draws))])
    return observed, float((null >= observed).mean()), float(np.quantile(null, 0.95))


def user_scores(recs: pd.DataFrame, k: int) -> list[np.ndarray]:
    top = recs[recs["rank"] <= k]
    return [g["score"].to_numpy(float) for _, g in top.groupby("user_id")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("replays", nargs="+", help="replay.json files of `python -m orchestration.replay run`")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| replay | day | current vs reference users | users ref / cur | p (users reshuffled) | null 95th pct | verdict |")
    print("|---|---|---|---|---|---|---|")
    for replay in args.replays:
        results = Path(replay).parent / "project" / "results"
        run = json.loads(Path(replay).read_text())
        for day in run["days"]:
            summary_file = results / "monitoring" / day["day"] / "summary.json"
            if not summary_file.is_file():
                continue
            summary = json.loads(summary_file.read_text())
            first, last = summary["window"]
            window = days_ending(last, (pd.Timestamp(last) - pd.Timestamp(first)).days + 1)
            files = [results / "recommendations" / f"{d}.parquet" for d in window]
            cur = pd.concat([pd.read_parquet(f) for f in files if f.is_file()])
            cur = cur[cur["model"].astype(str).str.startswith(summary["model"])].astype({"user_id": str, "partition": str})
            cur = cur[cur["partition"] == cur["user_id"].map(cur.groupby("user_id")["partition"].max())]
            ref_users = user_scores(read_window(summary["reference"]).recs, summary["k"])
            cur_users = user_scores(cur, summary["k"])
            if len(cur_users) < 2:
                continue
            d, p, q95 = permutation_p(ref_users, cur_users, args.draws, args.seed)
            print(f"| {Path(replay).parent.name} | {day['day']} | {d:.3f} | {len(ref_users)} / {len(cur_users)} | "
                  f"{p:.3f} | {q95:.3f} | {'drift: ' + ', '.join(day['failing']) if day['failing'] else 'ok'} |")


if __name__ == "__main__":
    main()
