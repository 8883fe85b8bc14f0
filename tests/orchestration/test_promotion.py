"""Model checks and the promotion gate: pure functions, the Dagster checks, and `promoted_model`.

Model directories here are real slmrec artifacts (an untrained tiny SASRec saved with `save_model`,
a `train.json` in the loop's format, a lineage card); the metrics are chosen per test.
"""

import json
import os
import math
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
import yaml

from orchestration.defs.deployment.assets import promoted_model
from orchestration.defs.evaluation.checks import candidate_vs_baselines
from orchestration.defs.models.checks import model_checks
from orchestration.pipeline import DvcPipeline
from orchestration.promotion import MODELS, best_validation, judge, random_expectation, weight_scan
from slmrec.config import PromotionConfig, SASRecConfig
from slmrec.eval.metrics import compute_metrics, paired_bootstrap
from slmrec.lineage import content_hash, write_card
from slmrec.models.sasrec import SASRec
from slmrec.stages.models import save_model

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 40
DATASET = "d" * 64
# Per-user ranks of each model = a shared base + a shift (higher = worse): the gate's evidence is real
# paired-bootstrap CIs over these ranks, as slmrec.stages.models.evaluate_models writes them.
GOOD = {"sasrec": 3, "teacher": 0, "student_nokd": 2, "student": 0}
N_USERS = 400


def user_ranks(shifts: dict[str, int], noisy: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(1, 12, size=N_USERS)
    ranks = {name: np.clip(base + shift, 1, N_ITEMS) for name, shift in shifts.items()}
    for name in noisy:  # same quality on average, user by user different: a CI around 0
        ranks[name] = np.clip(base + rng.integers(-3, 4, size=N_USERS), 1, N_ITEMS)
    return ranks


def write_model(model_dir: Path, name: str, best: float = 0.12, splits: Path | None = None) -> None:
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SASRecConfig(hidden=8, layers=1, heads=1, max_len=10, inner_size=16))
    save_model(model, model_dir / "model.pt")
    history = [{"epoch": 0, "valid/ndcg@10": best / 2, "train/loss": 3.0}, {"epoch": 1, "valid/ndcg@10": best}]
    (model_dir / "train.json").write_text(json.dumps({"best_valid": {"metric": best, "epoch": 1}, "history": history}))
    write_card(model_dir, name, params={"test": True}, metrics={"valid_best": best}, parents=[splits] if splits else [])


def evaluation(ranks: dict[str, np.ndarray], dataset: str = DATASET) -> dict:
    """metrics.json as the evaluate stage writes it (here the test and validation ranks are the same)."""
    models = {name: compute_metrics(r, [10]) for name, r in ranks.items()}
    comparisons = {f"{a}-{b}": {m: paired_bootstrap(ranks[a], ranks[b], m, n_boot=300, seed=0) for m in ("ndcg@10", "mrr")}
                   for a in ranks for b in ranks if a != b}
    return {"models": models, "dataset_hash": dataset, "protocol": {"full": "test"},
            "validation": {"models": models, "comparisons": comparisons, "n_users": N_USERS}}


def write_metrics(root: Path, shifts: dict[str, int], noisy: tuple[str, ...] = (), nan: str | None = None) -> None:
    metrics = evaluation(user_ranks(shifts, noisy))
    if nan:
        metrics["validation"]["models"]["student"][nan] = float("nan")
        metrics["models"]["student"][nan] = float("nan")
    (root / "results").mkdir(exist_ok=True)
    (root / "results/metrics.json").write_text(json.dumps(metrics))


def write_lock(root: Path, evaluated: dict[str, str] | None = None) -> None:
    trained = {name: f"{name}-md5.dir" for name in MODELS}
    stages = {name: {"outs": [{"path": f"models/{name}", "md5": md5}]} for name, md5 in trained.items()}
    stages["evaluate"] = {"deps": [{"path": f"models/{n}", "md5": m} for n, m in (evaluated or trained).items()]}
    (root / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": stages}))  # JSON is valid YAML


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    (root / "data/splits").mkdir(parents=True)
    (root / "data/splits/stats.json").write_text(json.dumps({"n_items": N_ITEMS, "dataset_hash": DATASET}))
    write_card(root / "data/splits", "splits", reproducible=True)
    for name in MODELS:
        write_model(root / "models" / name, name, splits=root / "data/splits")
    write_metrics(root, GOOD)
    write_lock(root)
    return root


def promote(root: Path):
    with dg.instance_for_test() as instance:
        return dg.materialize([promoted_model], resources={"pipeline": DvcPipeline(project_dir=str(root))},
                              instance=instance, raise_on_error=False)


def failure_text(result) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.event_specific_data.user_failure_data.description


def check_result(check_def, root: Path) -> dg.AssetCheckResult:
    return check_def(pipeline=DvcPipeline(project_dir=str(root)))


# --- pure functions -------------------------------------------------------------------------------


def test_weight_scan_finds_every_nonfinite_value(project):
    path = project / "models/student/model.pt"
    clean = weight_scan(path)
    assert clean.ok and clean.tensors > 3 and clean.values > 100
    ckpt = torch.load(path, weights_only=True)
    name = next(k for k, v in ckpt["model_state"].items() if v.is_floating_point() and v.numel() >= 3)
    ckpt["model_state"][name].view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf])
    torch.save(ckpt, path)
    scan = weight_scan(path)
    assert not scan.ok and scan.nonfinite == {f"model_state.{name}": 3}


def test_best_validation_requires_a_finite_metric_backed_by_history(project):
    path = project / "models/teacher/train.json"
    assert best_validation(path, "ndcg@10") == {"metric": "ndcg@10", "value": 0.12, "epoch": 1}
    info = json.loads(path.read_text())
    for broken, message in [({"metric": None, "epoch": 1}, "not a finite number"),
                            ({"metric": float("nan"), "epoch": 1}, "not a finite number"),
                            ({"metric": 0.5, "epoch": 1}, "differs from epoch 1"),
                            ({"metric": 0.12, "epoch": 7}, "no history row")]:
        path.write_text(json.dumps({**info, "best_valid": broken}))
        with pytest.raises(ValueError, match=message):
            best_validation(path, "ndcg@10")


def test_random_expectation_matches_a_uniform_rank():
    n = 7
    ranks = range(1, n + 1)
    assert random_expectation("hr@5", n) == pytest.approx(5 / 7)
    assert random_expectation("ndcg@3", n) == pytest.approx(sum(1 / math.log2(r + 1) for r in ranks if r <= 3) / n)
    assert random_expectation("mrr", n) == pytest.approx(sum(1 / r for r in ranks) / n)
    with pytest.raises(ValueError, match="no random baseline"):
        random_expectation("auc", n)


def test_judge_decides_on_validation_cis():
    cfg = PromotionConfig()  # allowed drop: 0 vs student_nokd and sasrec, 10% vs the teacher
    ok = judge(evaluation(user_ranks(GOOD)), N_ITEMS, cfg, DATASET)
    assert ok.severity is None and len(ok.rows) == 6  # 3 baselines x 2 metrics
    assert {r["decision"] for r in ok.rows} == {"passed"}

    # planted: the candidate ranks every user's target 6 places lower than student_nokd -> refused
    worse = judge(evaluation(user_ranks({**GOOD, "student": 8})), N_ITEMS, cfg, DATASET)
    assert worse.severity == "ERROR"
    refused = {r["baseline"] for r in worse.rows if r["decision"] == "refused"}
    assert refused == {"student_nokd", "sasrec", "teacher"}
    assert all(r["hi"] < r["threshold"] for r in worse.rows if r["decision"] == "refused")
    assert any("significantly worse than student_nokd" in e for e in worse.errors)

    # same quality as student_nokd, user by user different: the CI spans the 0 threshold -> WARN, promoted
    spans = judge(evaluation(user_ranks({**GOOD, "student_nokd": 0}, noisy=("student",))), N_ITEMS, cfg, DATASET)
    nokd = [r for r in spans.rows if r["baseline"] == "student_nokd"]
    assert not spans.errors and spans.severity == "WARN"
    assert all(r["decision"] == "warned" and r["lo"] < 0 < r["hi"] for r in nokd)

    broken = evaluation(user_ranks(GOOD))
    broken["validation"]["models"]["student"]["mrr"] = float("nan")
    del broken["validation"]["comparisons"]["student-teacher"]  # neither order: judge flips a stored teacher-student
    del broken["validation"]["comparisons"]["teacher-student"]
    v = judge(broken, N_ITEMS, cfg, DATASET)
    assert v.severity == "ERROR"
    assert any("student validation mrr missing or not finite" in e for e in v.errors)
    assert any("baseline teacher ndcg@10" in e for e in v.errors)

    no_validation = {k: v for k, v in evaluation(user_ranks(GOOD)).items() if k != "validation"}
    assert any("no validation metrics" in e for e in judge(no_validation, N_ITEMS, cfg, DATASET).errors)
    near_random = evaluation(user_ranks({name: 25 for name in GOOD}))  # ranks 26..36 of 40 items
    assert any("random ranking" in e for e in judge(near_random, N_ITEMS, cfg, DATASET).errors)
    assert any("evaluates dataset" in e for e in judge(evaluation(user_ranks(GOOD)), N_ITEMS, cfg, "e" * 64).errors)


# --- the Dagster checks -----------------------------------------------------------------------------


def test_model_checks_pass_on_sound_models_and_fail_with_error_on_nan(project):
    checks = {(s.asset_key.to_user_string(), s.name): c for c in model_checks for s in c.check_specs}
    for key, check_def in checks.items():
        assert check_result(check_def, project).passed, key
    ckpt = torch.load(project / "models/teacher/model.pt", weights_only=True)
    next(iter(ckpt["model_state"].values())).view(-1)[0] = math.nan
    torch.save(ckpt, project / "models/teacher/model.pt")
    result = check_result(checks[("teacher", "weights_finite")], project)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["nonfinite"].value  # names the tensor
    (project / "models/student/train.json").write_text(json.dumps({"best_valid": {}, "history": []}))
    result = check_result(checks[("student", "validation_metric")], project)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR


def test_comparison_check_warns_on_regression_and_errors_when_broken(project):
    assert check_result(candidate_vs_baselines, project).passed
    write_metrics(project, {**GOOD, "student_nokd": 0}, noisy=("student",))
    result = check_result(candidate_vs_baselines, project)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    write_metrics(project, {**GOOD, "student": 8})
    result = check_result(candidate_vs_baselines, project)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    write_metrics(project, GOOD, nan="ndcg@10")
    result = check_result(candidate_vs_baselines, project)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR


def test_model_checks_pass_on_a_sasrec_trained_by_dvc(dvc_project):
    for check_def in model_checks:
        (spec,) = check_def.check_specs
        if spec.asset_key.to_user_string() == "sasrec":
            result = check_result(check_def, dvc_project)
            assert result.passed, (spec.name, result.description)


# --- promoted_model -----------------------------------------------------------------------------------


def test_promotion_records_the_student(project):
    result = promote(project)
    assert result.success
    record = json.loads((project / "models/promoted.json").read_text())
    card = json.loads((project / "models/student/card.json").read_text())
    assert record["model"] == "student" and record["source_path"] == "models/student"
    assert record["content_hash"] == card["content_hash"]
    deployed = project / record["deployment"]  # an immutable copy: model + the splits it was trained on
    assert record["path"] == f"models/deployed/{card['content_hash'][:16]}/model" and (project / record["path"]).is_dir()
    assert content_hash(deployed / "model") == card["content_hash"] and (deployed / "splits/stats.json").is_file()
    assert not os.access(deployed / "model" / "model.pt", os.W_OK) or os.geteuid() == 0
    assert oct((deployed / "model" / "model.pt").stat().st_mode & 0o777) == "0o444"
    (entry,) = [json.loads(line) for line in (project / "models/promotions.jsonl").read_text().splitlines()]
    assert entry["action"] == "promote" and entry["who"] == f"dagster run {result.run_id}"
    assert entry["content_hash"] == card["content_hash"] and entry["previous"] is None and entry["evidence"]["gate"]
    assert record["dvc_md5"] == "student-md5.dir"
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert record["metrics"]["ndcg@10"] == metrics["models"]["student"]["ndcg@10"]
    assert {(g["baseline"], g["metric"], g["decision"]) for g in record["gate"]} >= {("teacher", "mrr", "passed")}
    assert record["warnings"] == [] and record["dataset_hash"] == DATASET
    assert record["dagster_run_id"] == result.run_id and record["promoted_at"]
    meta = result.asset_materializations_for_node("promoted_model")[0].metadata
    assert meta["content_hash"].value == card["content_hash"]


def test_promotion_with_a_regression_is_recorded_with_its_warning(project):
    write_metrics(project, {**GOOD, "student_nokd": 0}, noisy=("student",))  # CI vs student_nokd spans 0
    assert promote(project).success
    record = json.loads((project / "models/promoted.json").read_text())
    assert len(record["warnings"]) == 2 and all("student_nokd" in w for w in record["warnings"])
    assert {g["decision"] for g in record["gate"] if g["baseline"] == "student_nokd"} == {"warned"}


def test_promotion_refuses_a_significantly_worse_candidate(project):
    write_metrics(project, {**GOOD, "student": 8})
    result = promote(project)
    assert not result.success and "significantly worse than student_nokd" in failure_text(result)
    assert not (project / "models/promoted.json").exists()


@pytest.mark.parametrize("breakage, reason", [
    ("nan_metric", "student validation ndcg@10 missing or not finite"),
    ("nan_weights", "non-finite values"),
    ("tampered", "modified after training"),
    ("stale_evaluation", "re-run model_evaluation"),
])
def test_promotion_is_refused_and_keeps_the_previous_record(project, breakage, reason):
    assert promote(project).success
    before = (project / "models/promoted.json").read_text()
    if breakage == "nan_metric":
        write_metrics(project, GOOD, nan="ndcg@10")
    elif breakage == "nan_weights":
        ckpt = torch.load(project / "models/student/model.pt", weights_only=True)
        next(iter(ckpt["model_state"].values())).view(-1)[0] = math.inf
        torch.save(ckpt, project / "models/student/model.pt")
    elif breakage == "tampered":
        (project / "models/student/train.json").write_text(
            (project / "models/student/train.json").read_text().replace("3.0", "2.5"))
    else:
        write_lock(project, evaluated={**{n: f"{n}-md5.dir" for n in MODELS}, "student": "older-md5.dir"})
    result = promote(project)
    assert not result.success
    assert reason in failure_text(result) and "promotion of student refused" in failure_text(result)
    assert (project / "models/promoted.json").read_text() == before


def test_policy_cheapest_not_worse_promotes_sasrec_and_says_why(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["promotion"]["policy"] = "cheapest_not_worse"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = evaluation(user_ranks({**GOOD, "sasrec": GOOD["student"]}, noisy=("sasrec",)))  # as good as the student
    for name, speed in {"sasrec": 3000.0, "teacher": 30.0, "student_nokd": 60.0, "student": 60.0}.items():
        metrics["models"][name]["inference_users_per_s"] = speed
    (project / "results/metrics.json").write_text(json.dumps(metrics))
    result = promote(project)
    assert result.success, failure_text(result)
    record = json.loads((project / "models/promoted.json").read_text())
    assert record["model"] == "sasrec" and "cheapest_not_worse: sasrec" in record["policy"]
    assert record["source_path"] == "models/sasrec"
