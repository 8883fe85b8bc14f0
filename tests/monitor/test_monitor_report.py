"""Every Evidently value the verdict reads, against a number computed here by hand (k = 3, two users).

training interactions: item a by 4 users, b by 2, c by 1, d by 1 (4 users, 4 items)
reference lists:  u1: a b c   u2: a b c     truth: u1 -> a (rank 1), u2 -> c (rank 3)
current lists:    u1: a b c   u2: a e g     truth: u1 -> b (rank 2), u2 -> f (not listed: the model ranked it
                                            5th), u3 -> x (no list)
probe (the reference users re-scored by the model now): u1: a b c   u2: a e g, with the current scores
"""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from slmrec.config import MonitoringConfig
from slmrec.monitor.report import inputs_frame, monitor, ranking_frame, save_report
from slmrec.monitor.verdict import _increase, judge
from slmrec.monitor.window import Window, read_window, write_window

K = 3
# thresholds spelled out: the test must not move when params.yaml is recalibrated
CFG = MonitoringConfig(k=K, min_users=1, score_drift_threshold=0.5, input_drift_threshold=0.5, max_ndcg_drop=0.5,
                       max_popularity_change=0.3, max_unknown_item_increase=2.0, max_cold_user_share=0.2,
                       recent_popularity_threshold=0.5)
TRAIN = pd.DataFrame({"user_id": ["t1", "t2", "t3", "t4", "t1", "t2", "t1", "t1"],
                      "item_id": ["a", "a", "a", "a", "b", "b", "c", "d"]})
REF_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
CUR_SCORES = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]


def recs(lists: dict[str, list[str]], scores: list[float]) -> pd.DataFrame:
    rows = [(u, r + 1, i) for u, items in lists.items() for r, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id"]).assign(score=scores)


def inputs(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "history_len", "unknown_share", "cold_start", "recent_popularity"])


REFERENCE = Window(
    recs=recs({"u1": ["a", "b", "c"], "u2": ["a", "b", "c"]}, REF_SCORES),
    truth=pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "c"], "rank": [1, 3]}),
    inputs=inputs([("u1", 4, 0.0, 0.0, 0.6), ("u2", 2, 0.0, 0.0, 0.4)]),
)
CURRENT = Window(
    recs=recs({"u1": ["a", "b", "c"], "u2": ["a", "e", "g"]}, CUR_SCORES),
    truth=pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["b", "f", "x"], "rank": [2, 5, 7]}),
    inputs=inputs([("u1", 4, 0.25, 0.0, 0.1), ("u2", 2, 1.0, 1.0, 0.0)]),
)
PROBE = Window(recs=recs({"u1": ["a", "b", "c"], "u2": ["a", "e", "g"]}, CUR_SCORES))


@pytest.fixture(scope="module")
def report():
    return monitor(REFERENCE, CURRENT, TRAIN, CFG, probe=PROBE)


def test_ranking_frame_holds_lists_and_missed_truth_at_its_true_rank_and_nothing_else():
    frame = ranking_frame(CURRENT, K)
    assert len(frame) == 6 + 1  # two lists of 3 + u2's missed item; no input rows, no synthetic ranks
    missed = frame[frame["rank"] > K]
    assert missed[["user_id", "item_id", "rank", "target"]].values.tolist() == [["u2", "f", 5, 1.0]]  # u3: no list
    hits = frame[(frame["rank"] <= K) & (frame["target"] == 1)]
    assert hits[["user_id", "item_id"]].values.tolist() == [["u1", "b"]]
    assert inputs_frame(CURRENT)["user_id"].tolist() == ["u1", "u2"]
    # a truth item the model ranks 2nd now that u2's list did not hold: the model no longer makes its lists.
    # It is no metric row (its served rank is unknown); list_conflicts counts it and its rule fails
    wrong = Window(recs=CURRENT.recs, truth=pd.DataFrame({"user_id": ["u2"], "item_id": ["f"], "rank": [2]}),
                   inputs=CURRENT.inputs)
    assert len(ranking_frame(wrong, K)) == 6
    report = monitor(REFERENCE, wrong, TRAIN, CFG)
    assert (report.counts["current_list_conflicts"], report.counts["current_truth_items"]) == (1, 1)
    rule = next(r for r in judge(report, CFG).rules if r.name == "list_conflicts")
    assert rule.status == "fail" and rule.value == 1.0


def test_ndcg_and_hit_rate_curves_are_exact_at_every_cut_off_no_jump_past_k(report):
    """Evidently draws NDCG@i / HitRate@i for i = 1..max(k, 10) (capped by the largest rank): each point equals
    the hand-computed value — u2's missed item counts from its true rank 5 on, never at k + 1."""
    ndcg = report.snapshot.metric_results[next(m for m in report.snapshot.metric_results
                                               if "NDCG" in report.snapshot.metric_results[m].display_name)]
    curve = ndcg.value["value"].tolist()
    u1 = [0, 1 / math.log2(3), 1 / math.log2(3), 1 / math.log2(3), 1 / math.log2(3)]  # b at rank 2
    u2 = [0, 0, 0, 0, 1 / math.log2(6)]  # f at rank 5
    assert curve == pytest.approx([(a + b) / 2 for a, b in zip(u1, u2)])


def test_quality_metrics_match_hand_computed_values(report):
    v = report.values
    # u1: its item at rank 2 -> 1/log2(3); u2: missed -> 0.  Reference: rank 1 -> 1, rank 3 -> 1/log2(4)
    assert v["ndcg@3"]["current"] == pytest.approx((1 / math.log2(3) + 0) / 2)
    assert v["ndcg@3"]["reference"] == pytest.approx((1 + 0.5) / 2)
    assert v["hit_rate@3"] == {"reference": pytest.approx(1.0), "current": pytest.approx(0.5)}
    assert v["recall@3"] == {"reference": pytest.approx(1.0), "current": pytest.approx(0.5)}
    assert report.counts == {"reference_users": 2, "current_users": 2, "reference_truth_users": 2,
                             "current_truth_users": 2, "reference_input_users": 2, "current_input_users": 2,
                             "probe_users": 2, "current_list_conflicts": 0, "current_truth_items": 2}


def test_list_metrics_match_hand_computed_values(report):
    v = report.values
    # ARP: mean over users of the mean training popularity (users per item) of the listed known items
    assert v["popularity_arp"]["current"] == pytest.approx(((4 + 2 + 1) / 3 + 4) / 2)  # e, g unknown: left out
    assert v["popularity_arp"]["reference"] == pytest.approx((4 + 2 + 1) / 3)
    # the change the popularity_shift interval is about, from our per-user terms: the same as Evidently's ARPs
    ref, cur = v["popularity_arp"]["reference"], v["popularity_arp"]["current"]
    assert v["popularity_arp"]["change"] == pytest.approx((ref - cur) / ref)
    # coverage: listed items that are training items / training items
    assert v["coverage"] == {"reference": pytest.approx(3 / 4), "current": pytest.approx(3 / 4)}
    # Gini over recommendation counts a:2, b, c, e, g: 1 each
    counts = np.sort(np.array([2, 1, 1, 1, 1]))
    idx = np.arange(1, 6)
    assert v["gini"]["current"] == pytest.approx(np.sum((2 * idx - 6) * counts) / (4 * counts.sum()))  # 1/6
    # personalization: 1 - overlap/k for the one pair of users (current overlap {a}, reference all 3)
    assert v["personalization"] == {"reference": pytest.approx(0.0), "current": pytest.approx(1 - 1 / 3)}
    # novelty: mean over users of -log2(share of training users who had the item): a 0, b 1, c 2
    assert v["novelty"]["current"] == pytest.approx(((0 + 1 + 2) / 3 + 0) / 2)
    assert v["novelty"]["reference"] == pytest.approx(1.0)


def test_drift_and_input_values_match_hand_computed_values(report):
    v = report.values
    # normed Wasserstein of the probe's scores to the reference's: mean |sorted difference| / population std of
    # the reference scores
    expected = np.mean(np.abs(np.sort(CUR_SCORES) - np.sort(REF_SCORES))) / np.std(REF_SCORES)
    assert v["score_drift"]["current"] == pytest.approx(expected)  # 0.15 / 0.1708
    assert v["score_drift"]["reference"] is None
    assert v["history_len_drift"]["current"] == pytest.approx(0.0)  # same lengths 4, 2
    assert v["unknown_item_share"] == {"reference": 0.0, "current": pytest.approx((0.25 + 1.0) / 2)}
    assert v["cold_user_share"] == {"reference": 0.0, "current": pytest.approx(0.5)}
    assert v["mean_history_len"]["current"] == pytest.approx(3.0)
    # recent popularity: sorted current (0, 0.1) vs reference (0.4, 0.6): W1 = 0.45, reference std 0.1
    assert v["recent_popularity_drift"]["current"] == pytest.approx(0.45 / 0.1)
    assert v["mean_recent_popularity"] == {"reference": pytest.approx(0.5), "current": pytest.approx(0.05)}


def test_verdict_names_each_failing_rule(report):
    verdict = judge(report, CFG)
    status = {r.name: r.status for r in verdict.rules}
    assert status == {
        "score_drift": "fail",  # 0.878 > 0.5
        "history_len_drift": "pass",
        "recent_popularity_drift": "fail",  # 4.5 > 0.5
        "unknown_item_increase": "fail",  # (0.625 - 0) / max(0, floor 0.01) = 62.5 > 2
        "cold_user_share": "fail",  # 0.5 > 0.2
        "ndcg_drop": "fail",  # (0.75 - 0.315) / 0.75 = 0.58 > 0.5
        # |2.333 - 3.167| / 2.333 = 0.357 > 0.3, but of 2 users: resampled, the current ARP is 2.333, 3.167 or 4
        # (1/4, 1/2, 1/4), the change 0, -0.357 or -0.714: its 95% interval [-0.714, 0] reaches within ±0.3
        "popularity_shift": "pass",
        "list_conflicts": "pass",  # b at 2 is listed, f at 5 is outside the top-3: the lists are reproduced
    }
    assert verdict.drift and verdict.status == "drift" and sorted(verdict.to_dict()["failing"]) == sorted(
        ["score_drift", "recent_popularity_drift", "unknown_item_increase", "cold_user_share", "ndcg_drop"])
    unknown = next(r for r in verdict.rules if r.name == "unknown_item_increase")
    assert unknown.value == pytest.approx(62.5) and "0.625 vs reference 0" in unknown.reason
    shift = next(r for r in verdict.rules if r.name == "popularity_shift")
    assert shift.value == pytest.approx((3.167 - 2.333) / 2.333, abs=1e-3) and "within chance" in shift.reason
    arp = report.values["popularity_arp"]
    assert (arp["change_lo"], arp["change_hi"]) == (pytest.approx(-(4 - 7 / 3) / (7 / 3)), pytest.approx(0.0))
    ndcg = next(r for r in verdict.rules if r.name == "ndcg_drop")
    assert ndcg.value == pytest.approx((0.75 - (1 / math.log2(3)) / 2) / 0.75)


def test_same_window_is_no_drift_and_few_users_skip_list_rules():
    same = monitor(REFERENCE, REFERENCE, TRAIN, CFG, probe=REFERENCE)
    verdict = judge(same, CFG)
    assert not verdict.drift and verdict.status == "ok" and {r.status for r in verdict.rules} == {"pass"}
    strict = dataclasses.replace(CFG, min_users=3)  # 2 current users < 3: no verdict on lists or quality
    skipped = {r.name for r in judge(monitor(REFERENCE, CURRENT, TRAIN, strict, probe=PROBE), strict).rules
               if r.status == "skipped"}
    # the probe is the reference's own users: the score rule does not depend on how many came today
    assert skipped == {"history_len_drift", "recent_popularity_drift", "ndcg_drop", "popularity_shift"}


def test_score_drift_judges_the_model_on_the_reference_users_not_who_came_today():
    """An unchanged model re-scores its reference users exactly as before: 0, whatever today's users' scores are
    (CURRENT's users score lower, which the old rule — current against reference users — judged 0.878, drift).
    A damaged model moves the same users' scores: drift. No probe: the rule is skipped, never a pass."""
    unchanged = monitor(REFERENCE, CURRENT, TRAIN, CFG, probe=REFERENCE)
    rule = next(r for r in judge(unchanged, CFG).rules if r.name == "score_drift")
    assert rule.value == 0.0 and rule.status == "pass"
    damaged = Window(recs=REFERENCE.recs.assign(score=REFERENCE.recs["score"] * 2))  # same lists, scores doubled
    rule = next(r for r in judge(monitor(REFERENCE, CURRENT, TRAIN, CFG, probe=damaged), CFG).rules
                if r.name == "score_drift")
    # sorted differences = the reference scores themselves: mean 0.65, over the reference std 0.1708
    assert rule.value == pytest.approx(np.mean(REF_SCORES) / np.std(REF_SCORES)) and rule.status == "fail"
    rule = next(r for r in judge(monitor(REFERENCE, CURRENT, TRAIN, CFG), CFG).rules if r.name == "score_drift")
    assert rule.status == "skipped" and "no probe" in rule.reason


def test_a_window_where_every_rule_was_skipped_is_insufficient_data_not_ok():
    bare = Window(recs=CURRENT.recs)  # no truth, no inputs ...
    strict = dataclasses.replace(CFG, min_users=3)  # ... and too few users for the list rules
    verdict = judge(monitor(REFERENCE, bare, TRAIN, strict), strict)
    assert {r.status for r in verdict.rules} == {"skipped"}
    assert verdict.status == "insufficient data" and not verdict.drift


def test_without_truth_or_inputs_those_metrics_are_left_out():
    bare = Window(recs=CURRENT.recs)
    r = monitor(REFERENCE, bare, TRAIN, CFG)
    assert "ndcg@3" not in r.values and "unknown_item_share" not in r.values
    status = {x.name: x.status for x in judge(r, CFG).rules}
    assert status["ndcg_drop"] == status["unknown_item_increase"] == "skipped"


def test_unknown_items_are_judged_against_the_models_own_reference_share():
    """A young model (5% of its own reference histories unknown: k-core pruning) that meets 10% is within
    2x; an old one (1%) that meets 4% has had 3x added; a reference with no unknown items uses the floor."""
    assert _increase(0.10, 0.05, 0.01) == pytest.approx(1.0)
    assert _increase(0.04, 0.01, 0.01) == pytest.approx(3.0)
    assert _increase(0.03, 0.0, 0.01) == pytest.approx(3.0)
    assert _increase(0.02, 0.05, 0.01) == pytest.approx(-0.6)  # fewer unknown items than in training: no alarm
    assert _increase(None, 0.05, 0.01) is None


def test_saved_report_files_and_window_round_trip(tmp_path, report):
    verdict = judge(report, CFG)
    paths = save_report(report, tmp_path / "day", {"verdict": verdict.to_dict()})
    html = paths["html"].read_text()
    assert paths["html"].stat().st_size > 10_000 and "NDCG" in html
    assert paths["inputs_html"].stat().st_size > 10_000
    summary = json.loads(paths["summary"].read_text())
    assert summary["verdict"]["drift"] and summary["values"]["ndcg@3"]["reference"] == pytest.approx(0.75)
    shown = json.loads(paths["evidently_json"].read_text())["metrics"]
    shown_inputs = json.loads(paths["inputs_json"].read_text())["metrics"]
    shown_probe = json.loads(paths["probe_json"].read_text())["metrics"]
    # RowCount three times + every value, except coverage and Gini: the one popularity widget shows all three
    assert len(shown) + len(shown_inputs) + len(shown_probe) == 3 + len(report.values) - 2
    assert paths["probe_html"].stat().st_size > 10_000

    write_window(CURRENT, tmp_path / "w.parquet")
    back = read_window(tmp_path / "w.parquet")
    pd.testing.assert_frame_equal(back.recs, CURRENT.recs)
    pd.testing.assert_frame_equal(back.truth, CURRENT.truth)
    pd.testing.assert_frame_equal(back.inputs, CURRENT.inputs)
    CURRENT.recs.to_parquet(tmp_path / "plain.parquet")  # a bare recommendations file reads as recs only
    assert read_window(tmp_path / "plain.parquet").truth is None


def test_bad_windows_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="missing column"):
        Window(recs=pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}))
    with pytest.raises(ValueError, match="1-based"):
        Window(recs=pd.DataFrame({"user_id": ["u"], "rank": [0], "item_id": ["a"], "score": [1.0]}))
    with pytest.raises(ValueError, match="same \\(user_id, rank\\)"):
        Window(recs=pd.DataFrame({"user_id": ["u", "u"], "rank": [1, 1], "item_id": ["a", "b"], "score": [1.0, 0.5]}))
    with pytest.raises(ValueError, match="training interactions are empty"):
        monitor(REFERENCE, CURRENT, TRAIN.iloc[:0], CFG)


def test_serving_log_becomes_a_window_with_inputs():
    from slmrec.monitor.window import from_serving_log

    log = pd.DataFrame({
        "request_id": ["r1", "r2", "r3", "r4"],
        "user_id": ["196", "anonymous", "anonymous", "196"],  # 196 asked twice: its latest answer counts
        "history_len": [10, 4, 2, 12],
        "unknown_items": [[], ["x", "y", "z"], ["p", "q"], []],
        "items": [["a", "b"], ["c", "d"], ["e", "f"], ["b", "a"]],
        "scores": [[2.0, 1.0], [0.5, 0.4], [0.2, 0.1], [3.0, 2.5]],
        "fallback": [None, None, "popular", None],
    })
    w = from_serving_log(log)
    assert w.recs.values.tolist() == [["196", 1, "b", 3.0], ["196", 2, "a", 2.5],
                                      ["anonymous:r2", 1, "c", 0.5], ["anonymous:r2", 2, "d", 0.4],
                                      ["anonymous:r3", 1, "e", 0.2], ["anonymous:r3", 2, "f", 0.1]]
    inputs = w.inputs.set_index("user_id")
    assert list(w.inputs.columns) == ["user_id", "history_len", "unknown_share", "cold_start"]  # no popularity
    assert inputs.loc["196"].tolist() == [12.0, 0.0, 0.0]
    assert inputs.loc["anonymous:r2"].tolist() == [4.0, 0.75, 0.0]  # 3 of 4 posted items unknown, 1 known
    assert inputs.loc["anonymous:r3"].tolist() == [2.0, 1.0, 1.0]  # all unknown: a popularity fallback


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_the_html_says_drift_exactly_where_the_verdict_fails_the_rule(tmp_path, threshold):
    """Evidently's own drift sentence uses our threshold: score drift 0.878 fails at 0.5 and passes at 1.0. It is
    on the probe's page; the recommendations page shows no score drift of other users."""
    import re

    cfg = dataclasses.replace(CFG, score_drift_threshold=threshold)
    report = monitor(REFERENCE, CURRENT, TRAIN, cfg, probe=PROBE)
    rule = next(r for r in judge(report, cfg).rules if r.name == "score_drift")
    paths = save_report(report, tmp_path, {})
    sentence = r"drift (not )?detected\. Drift detection method: Wasserstein distance \(normed\)"
    assert re.findall(sentence, paths["probe_html"].read_text()) == [("not " if rule.status == "pass" else "")]
    assert re.findall(sentence, paths["html"].read_text()) == []
    assert rule.status == ("fail" if threshold == 0.5 else "pass")


def many(lists: list[list[str]]) -> Window:
    """One user per list (u000, u001, ...), scores falling with the rank."""
    rows = [(f"u{n:03d}", r + 1, item, 1.0 - r / 10) for n, items in enumerate(lists) for r, item in enumerate(items)]
    return Window(recs=pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"]))


@pytest.mark.parametrize("users, status", [(40, "pass"), (400, "fail")])
def test_popularity_shift_fails_only_when_the_interval_over_users_is_beyond_the_threshold(users, status):
    """Reference: every list b c d (ARP 4/3). Current: half the users a b c (7/3), half b c d: ARP 11/6, a change
    of -0.375 past the threshold 0.3 either way. Of 40 users that is within chance (the per-user terms are 7/3
    or 4/3: the mean's standard error 0.5 / sqrt(40) = 0.079, the change's 0.059: its interval reaches -0.3);
    of 400 users the same change is a shift (standard error of the change 0.019)."""
    reference = many([["b", "c", "d"]] * 100)
    current = many([["a", "b", "c"], ["b", "c", "d"]] * (users // 2))
    report = monitor(reference, current, TRAIN, CFG)
    rule = next(r for r in judge(report, CFG).rules if r.name == "popularity_shift")
    assert rule.value == pytest.approx(0.375)
    assert rule.status == status, rule.reason
    arp = report.values["popularity_arp"]
    assert arp["change_lo"] < -0.375 < arp["change_hi"]
    assert (arp["change_hi"] > -0.3) == (status == "pass")
