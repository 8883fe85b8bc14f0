"""Model checks and the promotion gate: pure functions, the Dagster checks, and `promoted_model`.

Model directories here are real slmrec artifacts (an untrained tiny SASRec saved with `save_model`,
a `train.json` in the loop's format, a lineage card); the metrics are chosen per test.
"""

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch

from orchestration.defs.deployment.assets import promoted_model
from orchestration.defs.evaluation.checks import candidate_vs_baselines
from orchestration.defs.models.checks import model_checks
from orchestration.pipeline import DvcPipeline
from orchestration.promotion import MODELS, best_validation, judge, random_expectation, weight_scan
from slmrec.config import PromotionConfig, SASRecConfig
from slmrec.lineage import write_card
from slmrec.models.sasrec import SASRec
from slmrec.stages.models import save_model

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 40
DATASET = "d" * 64
GOOD = {"sasrec": 0.30, "teacher": 0.34, "student_nokd": 0.28, "student": 0.33}  # ndcg@10 = mrr here


def write_model(model_dir: Path, name: str, best: float = 0.12) -> None:
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SASRecConfig(hidden=8, layers=1, heads=1, max_len=10, inner_size=16))
    save_model(model, model_dir / "model.pt")
    history = [{"epoch": 0, "valid/ndcg@10": best / 2, "train/loss": 3.0}, {"epoch": 1, "valid/ndcg@10": best}]
    (model_dir / "train.json").write_text(json.dumps({"best_valid": {"metric": best, "epoch": 1}, "history": history}))
    write_card(model_dir, name, params={"test": True}, metrics={"valid_best": best})


def write_metrics(root: Path, values: dict[str, float], dataset: str = DATASET) -> None:
    models = {name: {"ndcg@10": v, "hr@10": min(1.0, 2 * v), "mrr": v} for name, v in values.items()}
    (root / "results").mkdir(exist_ok=True)
    (root / "results/metrics.json").write_text(json.dumps({"models": models, "dataset_hash": dataset,
                                                           "protocol": {"full": "test"}}))


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
    for name in MODELS:
        write_model(root / "models" / name, name)
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


def test_judge_separates_regressions_from_broken_evaluations():
    cfg = PromotionConfig()
    metrics = {"dataset_hash": DATASET,
               "models": {n: {"ndcg@10": v, "mrr": v} for n, v in GOOD.items()}}
    ok = judge(metrics, N_ITEMS, cfg, DATASET)
    assert ok.severity is None and len(ok.rows) == 6  # 3 baselines x 2 metrics

    worse = json.loads(json.dumps(metrics))
    worse["models"]["student"] = {"ndcg@10": 0.25, "mrr": 0.33}  # below no-KD and SASRec, >10% below teacher
    v = judge(worse, N_ITEMS, cfg, DATASET)
    assert v.severity == "WARN" and not v.errors
    assert sorted(r["baseline"] for r in v.rows if r["regressed"]) == ["sasrec", "student_nokd", "teacher"]

    broken = json.loads(json.dumps(metrics))
    broken["models"]["student"]["mrr"] = float("nan")
    del broken["models"]["teacher"]
    v = judge(broken, N_ITEMS, cfg, DATASET)
    assert v.severity == "ERROR"
    assert any("student mrr missing or not finite" in e for e in v.errors)
    assert any("baseline teacher ndcg@10 missing" in e for e in v.errors)

    near_random = json.loads(json.dumps(metrics))
    near_random["models"]["student"] = {"ndcg@10": 0.1, "mrr": 0.2}  # random over 40 items: 0.114 / 0.107
    assert any("random ranking" in e for e in judge(near_random, N_ITEMS, cfg, DATASET).errors)
    assert any("evaluates dataset" in e for e in judge(metrics, N_ITEMS, cfg, "e" * 64).errors)


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
    write_metrics(project, {**GOOD, "student": 0.25})
    result = check_result(candidate_vs_baselines, project)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    write_metrics(project, {**GOOD, "student": float("nan")})
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
    assert record["model"] == "student" and record["path"] == "models/student"
    assert record["content_hash"] == card["content_hash"]
    assert record["dvc_md5"] == "student-md5.dir"
    assert record["metrics"]["ndcg@10"] == GOOD["student"]
    assert record["baselines"]["teacher"]["mrr"] == GOOD["teacher"]
    assert record["warnings"] == [] and record["dataset_hash"] == DATASET
    assert record["dagster_run_id"] == result.run_id and record["promoted_at"]
    meta = result.asset_materializations_for_node("promoted_model")[0].metadata
    assert meta["content_hash"].value == card["content_hash"]


def test_promotion_with_a_regression_is_recorded_with_its_warning(project):
    write_metrics(project, {**GOOD, "student": 0.305})  # more than 10% below the teacher (0.34), above the rest
    assert promote(project).success
    record = json.loads((project / "models/promoted.json").read_text())
    assert len(record["warnings"]) == 2 and all("teacher" in w for w in record["warnings"])


@pytest.mark.parametrize("breakage, reason", [
    ("nan_metric", "student ndcg@10 missing or not finite"),
    ("nan_weights", "non-finite values"),
    ("tampered", "modified after training"),
    ("stale_evaluation", "re-run model_evaluation"),
])
def test_promotion_is_refused_and_keeps_the_previous_record(project, breakage, reason):
    assert promote(project).success
    before = (project / "models/promoted.json").read_text()
    if breakage == "nan_metric":
        write_metrics(project, {**GOOD, "student": float("nan")})
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
