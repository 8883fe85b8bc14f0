"""The drift verdict: our rules over the values of a monitoring report, thresholds from params.yaml.

Evidently computes the numbers; whether they mean drift is decided here (not by Evidently's own
tests), so the rule is the same in `slmrec monitor`, the Dagster check and the replay:

| rule | fails when | needs |
| --- | --- | --- |
| score_drift | ValueDrift(score) distance of the probe (the reference users re-scored now) to the reference > score_drift_threshold | a probe |
| history_len_drift | ValueDrift(history_len) distance > input_drift_threshold | inputs, >= min_users current users |
| recent_popularity_drift | ValueDrift(recent_popularity) distance > recent_popularity_threshold | inputs with it, >= min_users |
| unknown_item_increase | (current − reference) / max(reference, unknown_share_floor) of the mean share of unknown history items > max_unknown_item_increase | inputs in both windows |
| cold_user_share | share of users without a usable history > max_cold_user_share | current inputs |
| ndcg_drop | (ref − cur) / ref of NDCG@k > max_ndcg_drop | >= min_users current users with ground truth |
| popularity_shift | abs relative change of ARP > max_popularity_change, its 95% interval (users resampled) too | >= min_users current users |
| list_conflicts | share of truth items the model ranks in the top-k now that its list missed > max_list_conflict_share | ground truth |

A rule without what it needs is `skipped` (never a pass nor a fail by default). The verdict's status:
`drift` when a rule fails, `ok` when none fails and at least one passed, `insufficient data` when every
rule was skipped — a window that could not be judged is not a green pass (the Dagster check is a WARN).
The unknown-item rule is relative to the model's own reference window: the share's level depends on the
model's vocabulary (k-core pruning leaves 5% of a six-week ML-100K model's history items unknown in its own
training days, 1.4% of a five-month one's), so one level threshold alarms on every young model; what the
model did not face in training is the increase over its reference. The thresholds are calibrated on honest
periods and their false alarms counted on other honest days (`python -m orchestration.replay calibrate`,
README "Monitoring").
The score rule compares like with like in the strictest sense: the probe is the reference window's own users
and histories scored by the model being monitored (slmrec.monitor.build.probe_window), so it is 0 while the
model behaves as when its reference was built and moves only when the model does (a damaged or swapped
deployment, a fault in the features it is fed). Comparing the current users' scores with the reference
users' judged a change in who came, with the model unchanged (issue 17: 4 of 63 held-out windows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slmrec.config import MonitoringConfig
from slmrec.monitor.report import MonitorReport


@dataclass
class Rule:
    name: str
    status: str  # pass | fail | skipped
    value: float | None
    threshold: float
    reference: float | None = None
    reason: str = ""


@dataclass
class Verdict:
    rules: list[Rule]

    @property
    def drift(self) -> bool:
        return any(r.status == "fail" for r in self.rules)

    @property
    def failing(self) -> list[Rule]:
        return [r for r in self.rules if r.status == "fail"]

    @property
    def status(self) -> str:
        if self.drift:
            return "drift"
        return "ok" if any(r.status == "pass" for r in self.rules) else "insufficient data"

    def to_dict(self) -> dict:
        return {"drift": self.drift, "status": self.status, "failing": [r.name for r in self.failing],
                "rules": [asdict(r) for r in self.rules]}

    def markdown(self) -> str:
        lines = ["| rule | status | current | reference | threshold | why |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.name} | {r.status} | {_fmt(r.value, 4)} | {_fmt(r.reference, 4)} | {r.threshold:g} | {r.reason} |"
                  for r in self.rules]
        return "\n".join(lines)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _above(name: str, value: float | None, threshold: float, needs: str | None, reference: float | None = None,
           what: str = "") -> Rule:
    if needs:
        return Rule(name, "skipped", value, threshold, reference, needs)
    if value is None:
        return Rule(name, "skipped", None, threshold, reference, "no value in the report")
    failed = value > threshold
    return Rule(name, "fail" if failed else "pass", value, threshold, reference,
                f"{what} {value:.4g} {'>' if failed else '<='} {threshold:g}".strip())


def _relative(cur: float | None, ref: float | None, signed: bool) -> float | None:
    if cur is None or ref is None or ref == 0:
        return None
    change = (ref - cur) / ref
    return change if signed else abs(change)


def _increase(cur: float | None, ref: float | None, floor: float) -> float | None:
    """(cur − ref) / max(ref, floor): how many times the reference's share was added (floor: a reference
    with almost no unknown items does not turn a handful of new ones into an infinite increase)."""
    if cur is None or ref is None:
        return None
    return (cur - ref) / max(ref, floor)


def _popularity_shift(arp: dict, threshold: float, needs: str | None) -> Rule:
    """|relative change of ARP| > threshold, and so is its whole 95% interval over users (report.py
    arp_change_interval): ARP of a few dozen users' lists moves by chance; only a change the interval
    places beyond the threshold is a shift."""
    rule = _above("popularity_shift", _relative(arp.get("current"), arp.get("reference"), signed=False), threshold,
                  needs, arp.get("reference"), "relative change of ARP")
    lo, hi = arp.get("change_lo"), arp.get("change_hi")
    if rule.status != "fail" or lo is None or hi is None:
        return rule
    beyond = lo > threshold or hi < -threshold
    interval = f"95% interval over users [{lo:+.4g}, {hi:+.4g}]"
    if beyond:
        return Rule(rule.name, "fail", rule.value, threshold, rule.reference, f"{rule.reason}; {interval} beyond ±{threshold:g}")
    return Rule(rule.name, "pass", rule.value, threshold, rule.reference,
                f"{rule.reason}, but its {interval} reaches within ±{threshold:g}: within chance")


def judge(report: MonitorReport, cfg: MonitoringConfig) -> Verdict:
    k, c = report.k, report.counts
    few = (f"{c['current_users']} current users < min_users {cfg.min_users}"
           if c["current_users"] < cfg.min_users else None)
    v = report.values
    has_inputs = "unknown_item_share" in v
    no_inputs = None if has_inputs else "no input features in both windows"
    few_inputs = (f"{c.get('current_input_users', 0)} current users with inputs < min_users {cfg.min_users}"
                  if has_inputs and c.get("current_input_users", 0) < cfg.min_users else None)
    ndcg = v.get(f"ndcg@{k}")
    if ndcg is None:
        no_truth = "no ground truth yet in both windows"
    elif c["current_truth_users"] < cfg.min_users:
        no_truth = f"{c['current_truth_users']} current users with ground truth < min_users {cfg.min_users}"
    else:
        no_truth = None
    arp = v.get("popularity_arp", {})
    unknown = v.get("unknown_item_share", {})
    rules = [
        _above("score_drift", v.get("score_drift", {}).get("current"), cfg.score_drift_threshold,
               None if c.get("probe_users") else "no probe (the reference users re-scored by the model)",
               what=f"{cfg.score_drift_method} distance of the re-scored reference users"),
        _above("history_len_drift", v.get("history_len_drift", {}).get("current"), cfg.input_drift_threshold,
               no_inputs or few_inputs, what=f"{cfg.input_drift_method} distance"),
        _above("recent_popularity_drift", v.get("recent_popularity_drift", {}).get("current"),
               cfg.recent_popularity_threshold,
               no_inputs or few_inputs or (None if "recent_popularity_drift" in v else "no recent popularity inputs"),
               what=f"{cfg.input_drift_method} distance"),
        _above("unknown_item_increase", _increase(unknown.get("current"), unknown.get("reference"), cfg.unknown_share_floor),
               cfg.max_unknown_item_increase, no_inputs, None,
               f"unknown-item share {_fmt(unknown.get('current'))} vs reference {_fmt(unknown.get('reference'))}: "
               "relative increase"),
        _above("cold_user_share", v.get("cold_user_share", {}).get("current"), cfg.max_cold_user_share, no_inputs,
               v.get("cold_user_share", {}).get("reference"), "share"),
        _above("ndcg_drop", _relative((ndcg or {}).get("current"), (ndcg or {}).get("reference"), signed=True),
               cfg.max_ndcg_drop, no_truth, (ndcg or {}).get("reference"), f"relative drop of NDCG@{k}"),
        _above("list_conflicts",
               c.get("current_list_conflicts", 0) / c["current_truth_items"] if c.get("current_truth_items") else None,
               cfg.max_list_conflict_share, None if c.get("current_truth_items") else "no ground truth yet",
               what="share of truth items the model no longer ranks as its list did"),
        _popularity_shift(arp, cfg.max_popularity_change, few),
    ]
    return Verdict(rules)
