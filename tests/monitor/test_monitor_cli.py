"""`slmrec monitor` on an unshifted and a shifted window, and a short replay through the Dagster definitions
(tiny data, SASRec 1 epoch)."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmrec.cli import main
from orchestration.replay import Replay, ReplayConfig
from slmrec.monitor.window import Window, write_window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import write_events  # noqa: E402

ITEMS = [f"i{n}" for n in range(200)]
POP = 1 / np.arange(1, 201) ** 0.8
POP /= POP.sum()


def window(rng, users: int, shifted: bool, prefix: str) -> Window:
    """Lists drawn from one popularity law; shifted = half the users bring unknown items and no history."""
    recs, inputs, truth = [], [], []
    for u in range(users):
        user = f"{prefix}{u}"
        items = rng.choice(ITEMS, size=10, replace=False, p=POP)
        scores = np.sort(rng.normal(5.0, 1.0, 10))[::-1]
        recs += [(user, r + 1, i, s) for r, (i, s) in enumerate(zip(items, scores))]
        cold = shifted and u % 2 == 0
        inputs.append((user, float(rng.integers(5, 60)), 1.0 if cold else 0.0, 1.0 if cold else 0.0))
        target = rng.choice(ITEMS, p=POP)
        listed = list(items).index(target) + 1 if target in items else int(rng.integers(11, 200))
        truth.append((user, target, listed))  # the rank the model gave it (its list's rank when listed)
    return Window(recs=pd.DataFrame(recs, columns=["user_id", "rank", "item_id", "score"]),
                  truth=pd.DataFrame(truth, columns=["user_id", "item_id", "rank"]),
                  inputs=pd.DataFrame(inputs, columns=["user_id", "history_len", "unknown_share", "cold_start"]))


def run_cli(tmp_path, name, current, probe: Window | None = None) -> dict:
    rng = np.random.default_rng(1)
    write_window(window(rng, 300, False, "r"), tmp_path / "ref.parquet")
    extra = []
    if probe is not None:
        write_window(probe, tmp_path / f"{name}-probe.parquet")
        extra = ["--probe", str(tmp_path / f"{name}-probe.parquet")]
    write_window(current, tmp_path / f"{name}.parquet")
    train = pd.DataFrame({"user_id": [f"t{n % 50}" for n in range(2000)],
                          "item_id": np.random.default_rng(2).choice(ITEMS, 2000, p=POP)})
    train.to_parquet(tmp_path / "train.parquet")
    out = tmp_path / name
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["monitor", "--reference", str(tmp_path / "ref.parquet"), "--current", str(tmp_path / f"{name}.parquet"),
                   "--train", str(tmp_path / "train.parquet"), "--out", str(out), "--json", "--fail-on-drift", *extra])
    summary = json.loads(buf.getvalue())
    assert (out / "report.html").stat().st_size > 10_000 and (out / "summary.json").is_file()
    return {"rc": rc, **summary}


def test_monitor_cli_no_drift_on_an_unshifted_window_and_drift_on_a_shifted_one(tmp_path):
    same = run_cli(tmp_path, "same", window(np.random.default_rng(3), 60, False, "c"))
    assert same["rc"] == 0 and not same["verdict"]["drift"], same["verdict_markdown"]
    shifted = run_cli(tmp_path, "shifted", window(np.random.default_rng(3), 60, True, "c"))
    assert shifted["rc"] == 2 and shifted["verdict"]["drift"]
    assert set(shifted["verdict"]["failing"]) == {"unknown_item_increase", "cold_user_share"}
    assert shifted["values"]["cold_user_share"]["current"] == pytest.approx(0.5)


def test_monitor_cli_judges_scores_on_the_probe_only(tmp_path):
    """--probe: the reference users re-scored by the model now. The reference itself (an unchanged model): score
    drift exactly 0, no drift; the same lists with every score lowered by 1 (the reference scores' std is ~1): a
    normed distance of ~1 > params.yaml's threshold, the rule fails. Without --probe the rule is skipped."""
    reference = window(np.random.default_rng(1), 300, False, "r")
    same = run_cli(tmp_path, "same", window(np.random.default_rng(3), 60, False, "c"), probe=reference)
    rule = next(r for r in same["verdict"]["rules"] if r["name"] == "score_drift")
    assert rule["status"] == "pass" and rule["value"] == 0.0 and same["rc"] == 0
    damaged = Window(recs=reference.recs.assign(score=reference.recs["score"] - 1.0))
    moved = run_cli(tmp_path, "moved", window(np.random.default_rng(3), 60, False, "c"), probe=damaged)
    rule = next(r for r in moved["verdict"]["rules"] if r["name"] == "score_drift")
    spread = reference.recs["score"].std(ddof=0)
    assert rule["status"] == "fail" and rule["value"] == pytest.approx(1.0 / spread) and moved["rc"] == 2
    bare = run_cli(tmp_path, "bare", window(np.random.default_rng(3), 60, False, "c"))
    rule = next(r for r in bare["verdict"]["rules"] if r["name"] == "score_drift")
    assert rule["status"] == "skipped" and "no probe" in rule["reason"]


@pytest.mark.slow
def test_short_replay_through_the_dagster_definitions_catches_a_planted_shift_and_retrains(tmp_path):
    write_events(tmp_path / "events.csv")  # 40 users on a ring of 30 items, January 1998
    # every user has the same history length: normed Wasserstein (/ reference std ~ 0) is degenerate here
    overrides = {"sasrec": {"hidden": 16, "max_len": 12}, "train_sasrec": {"batch_size": 64},
                 "monitoring": {"k": 5, "min_users": 5, "window_days": 1, "truth_days": 1,
                                "input_drift_threshold": 1e9,
                                "recent_popularity_threshold": 1e9, "max_popularity_change": 1e9,
                                "max_ndcg_drop": 1e9, "retrain_cooldown_hours": 1.0}}
    cfg = ReplayConfig(inter=str(tmp_path / "events.csv"), cutoff="1998-01-10", start="1998-01-10", days=3,
                       scenario="cold_ids", shift_day=2, shift_share=0.5, epochs=1)
    result = Replay(cfg, tmp_path / "replay", overrides=overrides, log=lambda m: None).run()
    days = {r["day"]: r for r in result["days"]}
    assert list(days) == ["1998-01-10", "1998-01-11", "1998-01-12"]
    assert days["1998-01-10"]["verdict"] == "ok" and days["1998-01-10"]["values"]["cold_user_share"] == 0.0
    # the score rule at params.yaml's threshold: the served model re-scores its reference users exactly, every day
    assert all(r["values"]["score_drift"] == 0.0 for r in result["days"]), [r["values"] for r in result["days"]]
    assert days["1998-01-11"]["verdict"] == "drift"
    assert {"cold_user_share", "unknown_item_increase"} <= set(days["1998-01-11"]["failing"])
    # the sensor (its clock = the simulated day) requested a retrain, which went through the gate and ran
    assert days["1998-01-11"]["sensor"]["requested"].startswith("drift-")
    # drift again on day 3 (new shifted users), with new data and past the 1 h cooldown: a second retrain,
    # max_drift_retrains (2) not yet reached
    assert [(r["day"], r["version"]) for r in result["retrains"]] == [("1998-01-11", 2), ("1998-01-12", 3)]
    assert result["summary"]["caught_on"] == "1998-01-11" and result["summary"]["days_to_detection"] == 1
    out = tmp_path / "replay"
    assert (out / "replay.md").read_text().count("\n") == 2 + 3
    assert (out / "project/results/monitoring/1998-01-11/report.html").is_file()
