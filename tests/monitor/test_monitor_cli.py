"""`slmrec monitor` on an unshifted and a shifted window, and a short replay (tiny data, SASRec 1 epoch)."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmrec.cli import main
from slmrec.config import Params
from slmrec.monitor.replay import Replay, ReplayConfig
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
        truth.append((user, rng.choice(ITEMS, p=POP)))
    return Window(recs=pd.DataFrame(recs, columns=["user_id", "rank", "item_id", "score"]),
                  truth=pd.DataFrame(truth, columns=["user_id", "item_id"]),
                  inputs=pd.DataFrame(inputs, columns=["user_id", "history_len", "unknown_share", "cold_start"]))


def run_cli(tmp_path, name, current) -> dict:
    rng = np.random.default_rng(1)
    write_window(window(rng, 300, False, "r"), tmp_path / "ref.parquet")
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
                   "--train", str(tmp_path / "train.parquet"), "--out", str(out), "--json", "--fail-on-drift"])
    summary = json.loads(buf.getvalue())
    assert (out / "report.html").stat().st_size > 10_000 and (out / "summary.json").is_file()
    return {"rc": rc, **summary}


def test_monitor_cli_no_drift_on_an_unshifted_window_and_drift_on_a_shifted_one(tmp_path):
    same = run_cli(tmp_path, "same", window(np.random.default_rng(3), 60, False, "c"))
    assert same["rc"] == 0 and not same["verdict"]["drift"], same["verdict_markdown"]
    shifted = run_cli(tmp_path, "shifted", window(np.random.default_rng(3), 60, True, "c"))
    assert shifted["rc"] == 2 and shifted["verdict"]["drift"]
    assert set(shifted["verdict"]["failing"]) == {"unknown_item_share", "cold_user_share"}
    assert shifted["values"]["cold_user_share"]["current"] == pytest.approx(0.5)


@pytest.mark.slow
def test_short_replay_catches_a_planted_shift_and_retrains(tmp_path):
    write_events(tmp_path / "events.csv")  # 40 users on a ring of 30 items, January 1998
    params = Params()
    params.train_sasrec.epochs, params.train_sasrec.batch_size = 1, 64
    params.sasrec.hidden, params.sasrec.max_len = 16, 12
    params.llm.profile = "tiny"
    # every user has the same history length: normed Wasserstein (/ reference std ~ 0) is degenerate here
    params.monitoring.score_drift_threshold = params.monitoring.input_drift_threshold = 1e9
    params.monitoring.max_popularity_change = params.monitoring.max_ndcg_drop = 1e9
    cfg = ReplayConfig(inter=str(tmp_path / "events.csv"), cutoff="1998-01-10", days=3, scenario="shift",
                       shift_day=2, shift_share=0.5, epochs=1)
    result = Replay(cfg, params, tmp_path / "replay", log=lambda m: None).run()
    days = {r["day"]: r for r in result["days"]}
    assert list(days) == ["1998-01-10", "1998-01-11", "1998-01-12"]
    assert days["1998-01-10"]["verdict"] == "ok" and days["1998-01-10"]["cold_user_share"] == 0.0
    assert days["1998-01-11"]["shifted_users"] > 0 and "cold_user_share" in days["1998-01-11"]["verdict"]
    assert days["1998-01-11"]["retrained"] == 2  # the drift check failed: a new model, v2
    assert days["1998-01-12"]["model"] == "v2"
    out = tmp_path / "replay"
    assert (out / "replay.md").read_text().count("\n") == 2 + 3 and "<svg" in (out / "replay.svg").read_text()
    assert (out / "monitoring/1998-01-11/report.html").is_file()
