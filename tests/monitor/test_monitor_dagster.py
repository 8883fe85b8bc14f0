"""The Dagster side with the tiny profile: recommendation_monitoring materializes a partition's report,
its recommendation_drift check passes on the model's own users and fails on a planted shift (a day of
new users with items the model never saw), and retrain_on_drift requests retrain_job once per cooldown.

The tiny experiment (tests/serve/serve_helpers.py) gives every user the same history length, so the
normed Wasserstein distances (divided by the reference's std, ~0 here) are degenerate on it: this file
loosens those thresholds and tests the wiring; the metric values are pinned in test_monitor_report.py.
"""

import json
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import pipeline  # noqa: E402,F401 - the session fixture (tiny experiment)

import orchestration.defs.monitoring.sensors as drift_sensors  # noqa: E402
from orchestration.defs.monitoring.assets import recommendation_monitoring  # noqa: E402
from orchestration.defs.monitoring.sensors import retrain_on_drift  # noqa: E402
from orchestration.pipeline import DvcPipeline  # noqa: E402
from slmrec.data.ingest import ingest  # noqa: E402
from slmrec.serve.batch import run_batch  # noqa: E402
from slmrec.serve.recommender import Recommender  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K = 5
QUIET, SHIFT = "1998-01-06", "1998-01-20"


@pytest.fixture(scope="module")
def project(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor") / "project"
    (root / "data").mkdir(parents=True)
    shutil.copy2(pipeline / "warehouse.duckdb", root / "data/warehouse.duckdb")  # the shift is ingested here
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["db"] = "data/warehouse.duckdb"
    params["sequences"]["out_dir"] = str(pipeline / "splits")
    params["serve"]["models_dir"] = str(pipeline / "models")  # the promotion record names the fixture's model
    params["monitoring"].update(k=K, min_users=5, window_days=1, truth_days=3, retrain_cooldown_hours=24.0,
                                score_drift_threshold=1e9, input_drift_threshold=1e9, max_popularity_change=1e9,
                                max_ndcg_drop=1.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "models").mkdir()
    student = pipeline / "models/student"
    (root / "models/promoted.json").write_text(json.dumps({"model": "student", "path": str(student),
                                                           "content_hash": json.loads((student / "card.json").read_text())
                                                           ["content_hash"]}))
    # the planted shift: 10 known users come back with a known item, 10 new users bring only new items
    rows = ["user_id,item_id,ts"] + [f"u{u},m1,{885_254_400 + 3600 + u}" for u in range(10)]
    rows += [f"n{u},new-{u % 5},{885_254_400 + 7200 + u}" for u in range(10)]  # 885254400 = 1998-01-20
    landing = root / "data/raw/landing"
    landing.mkdir(parents=True)
    (landing / f"{SHIFT}.csv").write_text("\n".join(rows) + "\n")
    ingest("events", str(landing / f"{SHIFT}.csv"), str(root / "data/warehouse.duckdb"))
    rec = Recommender.load(pipeline / "models/student", pipeline / "splits", root / "data/warehouse.duckdb")
    for day in (QUIET, SHIFT):
        run_batch(rec, K, root / f"results/recommendations/{day}.parquet", day, day=day)
    return root


def materialize(root: Path, day: str, instance):
    result = dg.materialize([recommendation_monitoring], partition_key=day, instance=instance,
                            resources={"pipeline": DvcPipeline(project_dir=str(root))}, selection=None)
    (meta,) = [m.metadata for m in result.asset_materializations_for_node("recommendation_monitoring")]
    (check,) = result.get_asset_check_evaluations()
    return meta, check


def test_monitoring_asset_and_drift_check_and_sensor(project, monkeypatch):
    with dg.instance_for_test() as instance:
        meta, check = materialize(project, QUIET, instance)
        report = Path(meta["report_html"].value)
        assert report == project / f"results/monitoring/{QUIET}/report.html" and report.stat().st_size > 10_000
        summary = json.loads((report.parent / "summary.json").read_text())
        assert summary["partition"] == QUIET and summary["counts"]["current_users"] >= 5
        assert summary["values"][f"ndcg@{K}"]["current"] is not None  # later days are in: quality is measured
        assert summary["values"]["unknown_item_share"]["current"] == 0.0
        assert check.passed, check.description
        assert list((project / "results/monitoring/reference").glob("*.parquet"))  # built once for the model

        clock = [1_000_000.0]
        monkeypatch.setattr(drift_sensors, "now", lambda: clock[0])
        resources = {"pipeline": DvcPipeline(project_dir=str(project))}
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        assert isinstance(retrain_on_drift(ctx), dg.SkipReason)  # a passing evaluation requests nothing

        meta, check = materialize(project, SHIFT, instance)
        assert not check.passed
        failing = check.metadata["failing"].value
        assert set(failing) == {"unknown_item_share", "cold_user_share"}
        values = check.metadata["failing_values"].value
        assert values["cold_user_share"] == pytest.approx(10 / 20)  # 10 new users of 20 active
        assert values["unknown_item_share"] == pytest.approx(10 / 20)  # their histories are all unknown

        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources=resources)
        request = retrain_on_drift(ctx)
        assert isinstance(request, dg.RunRequest) and request.job_name in (None, "retrain_job")
        assert request.tags["slmrec/trigger"] == "drift" and request.tags["slmrec/drift_partition"] == SHIFT
        assert set(request.tags["slmrec/drift_failing"].split(",")) == set(failing)
        assert json.loads(request.tags["slmrec/drift_values"])["cold_user_share"] == 0.5

        materialize(project, SHIFT, instance)  # drift again, one hour later: inside the cooldown
        clock[0] += 3600
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources=resources)
        skip = retrain_on_drift(ctx)
        assert isinstance(skip, dg.SkipReason) and "cooldown" in skip.skip_message

        materialize(project, SHIFT, instance)  # and again after the cooldown: a new request
        clock[0] += 24 * 3600
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources=resources)
        assert isinstance(retrain_on_drift(ctx), dg.RunRequest)


def test_sensor_targets_retrain_job_and_asset_is_in_deployment_group():
    from orchestration.definitions import defs

    d = defs()
    assert d.resolve_sensor_def("retrain_on_drift").job_name == "retrain_job"
    node = d.resolve_asset_graph().get(dg.AssetKey("recommendation_monitoring"))
    assert node.group_name == "deployment"
    assert dg.AssetKey("recommendations") in node.parent_keys
    assert [c.name for c in node.check_keys] == ["recommendation_drift"]


def test_missing_recommendations_fail_with_a_clear_error(project):
    with dg.instance_for_test() as instance:
        result = dg.materialize([recommendation_monitoring], partition_key="1998-02-01", instance=instance,
                                resources={"pipeline": DvcPipeline(project_dir=str(project))}, raise_on_error=False)
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "no recommendations for 1998-02-01" in str(failure.event_specific_data.error)


def test_a_check_seen_planned_then_failed_requests_exactly_one_retrain(project, monkeypatch):
    """The race of issue 17: the sensor ticks while the check row is still PLANNED (its run in progress); Dagster
    then updates that same row to FAILED. The cursor must not have passed it: the next tick requests one retrain."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    with dg.instance_for_test() as instance:
        materialize(project, SHIFT, instance)  # the evaluation that will have failed
        storage = instance.event_log_storage
        (failed,) = [r for r in storage.get_asset_check_execution_history(drift_sensors.CHECK_KEY, limit=10)
                     if r.status == Status.FAILED]
        resources = {"pipeline": DvcPipeline(project_dir=str(project))}
        monkeypatch.setattr(drift_sensors, "now", lambda: 5_000_000.0)

        # tick 1: the same row as it looked while its run was still going
        planned = failed._replace(status=Status.PLANNED, event=None)
        real_history = storage.get_asset_check_execution_history
        monkeypatch.setattr(storage, "get_asset_check_execution_history", lambda key, limit: [planned])
        run = instance.get_run_by_id(failed.run_id)
        monkeypatch.setattr(instance, "get_run_by_id", lambda run_id: run._replace(status=dg.DagsterRunStatus.STARTED))
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        skip = retrain_on_drift(ctx)
        assert isinstance(skip, dg.SkipReason) and "no completed" in skip.skip_message

        # tick 2: the row is FAILED now -> exactly one request; tick 3: nothing new
        monkeypatch.setattr(storage, "get_asset_check_execution_history", real_history)
        monkeypatch.setattr(instance, "get_run_by_id", lambda run_id: run)
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources=resources)
        request = retrain_on_drift(ctx)
        assert isinstance(request, dg.RunRequest) and request.tags["slmrec/drift_partition"] == SHIFT
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources=resources)
        assert isinstance(retrain_on_drift(ctx), dg.SkipReason)

        # a row left PLANNED by a run that ended (a crash) does not hold the cursor forever
        monkeypatch.setattr(storage, "get_asset_check_execution_history",
                            lambda key, limit: [planned._replace(id=failed.id + 1), planned._replace(id=failed.id + 2)])
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources=resources)
        assert isinstance(retrain_on_drift(ctx), dg.SkipReason)
        assert json.loads(ctx.cursor)["after_id"] == failed.id + 2
