"""The data assets in-process on a 20-user ML-100K cut: metadata, blocking contracts, and the same
bytes as `dvc repro` (issue 2's acceptance: one pipeline, seen from two sides)."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import yaml
from project_copy import DATA_ASSETS, materialize

from orchestration.defs.automation.sensors import alert_on_run_failure
from orchestration.pipeline import DvcPipeline

CONTRACTS = {"raw_interactions_contract", "item_catalog_contract", "user_sequences_contract", "dataset_splits_contract"}


def sha256_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def test_data_assets_materialize_with_metadata_and_passing_contracts(dagster_project):
    root, result = dagster_project
    assert result.success
    evaluations = {e.event_specific_data.check_name: e.event_specific_data
                   for e in events(result, "ASSET_CHECK_EVALUATION")}
    assert set(evaluations) == CONTRACTS and all(ev.passed for ev in evaluations.values())

    raw = result.asset_materializations_for_node("ingest_stage")
    meta = {m.asset_key.to_user_string(): m.metadata for m in raw}
    assert (meta["raw_interactions"]["rows_read"].value, meta["raw_interactions"]["accepted"].value) == (3049, 3049)
    assert meta["raw_interactions"]["users"].value == 20
    assert meta["raw_interactions"]["dvc_md5:data/interactions"].value == lock(root)["ingest"]["outs"][0]["md5"]

    splits = {m.asset_key.to_user_string(): m.metadata
              for m in result.asset_materializations_for_node("sequences_stage")}
    stats = json.loads((root / "data/splits/stats.json").read_text())
    assert splits["dataset_splits"]["dataset_hash"].value == stats["dataset_hash"]
    assert splits["user_sequences"]["users"].value == stats["n_users"] == 20
    assert "█" in splits["user_sequences"]["length_distribution"].value  # the plot has bars
    assert splits["dataset_splits"]["train_interactions"].value == stats["n_interactions"] - 2 * stats["n_users"]


def test_dagster_and_dvc_repro_leave_identical_splits(dvc_project, dagster_project):
    dagster_root, _ = dagster_project
    for folder in ("data/splits", "data/interactions"):
        by_dvc, by_dagster = sha256_tree(dvc_project / folder), sha256_tree(dagster_root / folder)
        assert by_dvc and by_dvc == by_dagster, folder
    for stage in ("fetch", "ingest", "sequences"):  # cmd, deps, params and outs with their md5s
        assert lock(dvc_project)[stage] == lock(dagster_root)[stage], stage


def test_planted_contract_violation_fails_the_check_and_blocks_downstream(dagster_project, definitions, tmp_path):
    root = tmp_path / "planted"
    shutil.copytree(dagster_project[0], root, symlinks=True)
    splits_before = sha256_tree(root / "data/splits")
    with duckdb.connect(str(root / "data/warehouse.duckdb")) as con:  # a duplicate event and a timestamp before 1970
        con.execute("INSERT INTO raw_interactions SELECT * FROM raw_interactions LIMIT 1")
        con.execute("INSERT INTO raw_interactions "
                    "SELECT * REPLACE (-86400 AS ts, 'u-x' AS user_id) FROM raw_interactions LIMIT 1")
    with dg.instance_for_test() as instance:
        result = materialize(definitions, root, DATA_ASSETS, instance=instance, raise_on_error=False)
    assert not result.success
    evaluations = {e.event_specific_data.check_name: e.event_specific_data
                   for e in events(result, "ASSET_CHECK_EVALUATION")}
    failed = evaluations["raw_interactions_contract"]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["failed_expectations"].value >= 2
    assert {e.step_key for e in events(result, "STEP_FAILURE")} == {"raw_interactions_raw_interactions_contract"}
    started = {e.step_key for e in events(result, "STEP_START")}
    assert "ingest_stage" in started and "sequences_stage" not in started  # blocked: never ran
    assert not result.asset_materializations_for_node("sequences_stage")
    assert sha256_tree(root / "data/splits") == splits_before


def test_a_failing_stage_is_reported_with_its_error(dagster_project, definitions, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(dagster_project[0], root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["path"] = "data/raw/ml-100k/missing.inter"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with dg.instance_for_test() as instance:
        result = materialize(definitions, root, ["raw_interactions", "item_catalog"], instance=instance,
                             raise_on_error=False)
        (failure,) = events(result, "STEP_FAILURE")
        description = failure.event_specific_data.user_failure_data.description
        assert re.fullmatch(r"DVC stage 'ingest' failed \(exit \d+\): slmrec ingest: error: .*missing\.inter'",
                            description)
        with dg.build_run_status_sensor_context(
            sensor_name="alert_on_run_failure", dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(), resources={"pipeline": DvcPipeline(project_dir=str(root))},
        ).for_run_failure() as ctx:
            alert_on_run_failure(ctx)
    alert = json.loads((root / "results/alerts.jsonl").read_text().splitlines()[-1])
    assert alert["failed_steps"] == [{"step": "ingest_stage", "error": description, "error_class": "Failure"}]
