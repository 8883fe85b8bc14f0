"""The README's replay table (`python -m orchestration.replay table`) from a campaign folder: the honest periods,
the held-out ones with the rules that fired and how often, and the planted shifts."""

import dataclasses
import json

from orchestration.replay import ReplayConfig, results_table


def day(name, n, failing=(), sensor=None):
    return {"day": name, "n": n, "shifted": False, "interactions": 10, "verdict": "drift" if failing else "ok",
            "failing": list(failing), "values": {"score_drift": 0.5 if failing else 0.1}, "sensor": sensor or {}}


def write_run(folder, cfg, days, retrains=()):
    folder.mkdir(parents=True)
    (folder / "replay.json").write_text(json.dumps({
        "config": dataclasses.asdict(cfg), "days": days, "retrains": list(retrains), "alerts": [],
        "monitoring": {"score_drift_threshold": 0.3}}))


def test_table_lists_held_out_periods_with_the_rules_that_fired(tmp_path):
    write_run(tmp_path / "honest/1998-02-01", ReplayConfig(cutoff="1998-02-01", start="1998-02-01", days=2),
              [day("1998-02-01", 1), day("1998-02-02", 2)])
    write_run(tmp_path / "heldout/1997-11-22", ReplayConfig(cutoff="1997-11-22", start="1997-11-22", days=3),
              [day("1997-11-22", 1), day("1997-11-23", 2, ["score_drift"], {"requested": "drift-1", "retrain_run_ok": False}),
               day("1997-11-24", 3, ["score_drift", "history_len_drift"])],
              retrains=[{"day": "1997-11-23", "promoted": False}])
    write_run(tmp_path / "unseen/1997-10-01", ReplayConfig(cutoff="1997-10-01", start="1997-10-01", days=1),
              [day("1997-10-01", 1)])
    table = results_table(tmp_path)
    lines = table.splitlines()
    honest = next(i for i, line in enumerate(lines) if line.startswith("| honest period"))
    held = next(i for i, line in enumerate(lines) if line.startswith("| held-out honest period"))
    assert lines[honest + 2] == "| 1998-02-01 + 2 days | 2 | 0 | 0% | — | 0 / 0 | — |"
    assert lines[held + 2] == "| 1997-11-22 + 3 days | 3 | 2 | 67% | score_drift (2), history_len_drift (1) | 0 / 1 | — |"
    assert held > honest + 2 and lines[held - 1] == ""
    unseen = next(i for i, line in enumerate(lines) if line.startswith("| honest period no replay had monitored"))
    assert unseen > held + 2 and lines[unseen + 2] == "| 1997-10-01 + 1 days | 1 | 0 | 0% | — | 0 / 0 | — |"
    assert (tmp_path / "heldout/1997-11-22/replay.svg").read_text().startswith("<svg")  # plots redrawn from the rows
