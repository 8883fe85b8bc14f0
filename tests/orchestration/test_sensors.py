"""Sensors: new landing files -> ingestion runs -> one retraining run; failed runs -> an alert line."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from orchestration.defs.automation.sensors import alert_on_run_failure, retrain_after_landing
from orchestration.defs.deployment.assets import promoted_model
from orchestration.defs.ingestion.assets import landing_interactions
from orchestration.defs.ingestion.sensors import landing_folder_sensor
from orchestration.pipeline import DvcPipeline

REPO = Path(__file__).resolve().parents[2]
HEADER = "user_id,item_id,ts,rating\n"


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "data/raw/landing").mkdir(parents=True)
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    return root


def land(root: Path, name: str, rows: list[tuple]) -> Path:
    path = root / "data/raw/landing" / name
    path.write_text(HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def pipeline(root: Path) -> DvcPipeline:
    return DvcPipeline(project_dir=str(root))


def test_landing_sensor_requests_one_run_per_new_file(project):
    land(project, "1998-03-01.csv", [("u1", "i1", 888000000, 4), ("u2", "i2", 888000100, 3)])
    land(project, "1998-03-02.part2.csv", [("u1", "i3", 888090000, 5)])
    (project / "data/raw/landing/notes.txt").write_text("not a landing file")

    ctx = dg.build_sensor_context(resources={"pipeline": pipeline(project)})
    requests = landing_folder_sensor(ctx)
    assert sorted(r.partition_key for r in requests) == ["1998-03-01", "1998-03-02"]
    assert len({r.run_key for r in requests}) == 2

    again = landing_folder_sensor(dg.build_sensor_context(cursor=ctx.cursor, resources={"pipeline": pipeline(project)}))
    assert isinstance(again, dg.SkipReason)

    land(project, "1998-03-01.csv", [("u1", "i1", 888000000, 4), ("u3", "i2", 888000200, 1)])  # same name, new bytes
    changed = landing_folder_sensor(dg.build_sensor_context(cursor=ctx.cursor,
                                                            resources={"pipeline": pipeline(project)}))
    assert [r.partition_key for r in changed] == ["1998-03-01"]


def test_landing_ingestion_triggers_one_retraining_run(project):
    land(project, "1998-03-01.csv", [("u1", "i1", 888000000, 4), ("u2", "i2", 888000100, 3), ("u2", "", 888000200, 1)])
    land(project, "1998-03-02.csv", [("u1", "i3", 888090000, 5)])
    resources = {"pipeline": pipeline(project)}
    with dg.instance_for_test() as instance:
        def ingest_day(day: str):
            result = dg.materialize([landing_interactions], partition_key=day, resources=resources, instance=instance)
            return result.asset_materializations_for_node("landing_interactions")[0].metadata

        meta = ingest_day("1998-03-01")
        assert (meta["rows_read"].value, meta["accepted"].value, meta["quarantined"].value) == (3, 2, 1)
        assert meta["quarantine_reasons"].value == {"missing_item": 1}
        ingest_day("1998-03-02")

        ctx = dg.build_sensor_context(instance=instance)
        request = retrain_after_landing(ctx)
        assert isinstance(request, dg.RunRequest)  # one run for both days
        assert request.tags["slmrec/landing_days"] == "1998-03-01..1998-03-02 (2 days)"

        assert isinstance(retrain_after_landing(dg.build_sensor_context(instance=instance, cursor=ctx.cursor)),
                          dg.SkipReason)

        assert ingest_day("1998-03-01")["already_ingested"].value  # the same file again: nothing new
        skip = retrain_after_landing(dg.build_sensor_context(instance=instance, cursor=ctx.cursor))
        assert isinstance(skip, dg.SkipReason) and "re-ingested" in skip.skip_message


def test_run_failure_sensor_writes_a_clear_alert(project):
    with dg.instance_for_test() as instance:
        result = dg.materialize([promoted_model], resources={"pipeline": pipeline(project)}, instance=instance,
                                raise_on_error=False)  # no model in this project: the step fails
        assert not result.success
        with dg.build_run_status_sensor_context(
            sensor_name="alert_on_run_failure",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
            resources={"pipeline": pipeline(project)},
        ).for_run_failure() as ctx:
            alert_on_run_failure(ctx)
    (line,) = (project / "results/alerts.jsonl").read_text().splitlines()
    alert = json.loads(line)
    assert alert["run_id"] == result.run_id and alert["job"] == result.dagster_run.job_name
    (step,) = alert["failed_steps"]
    assert step["step"] == "promoted_model"
    assert "checkpoint not found" in step["error"] and "models/student/model.pt" in step["error"]
