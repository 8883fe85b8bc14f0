"""The Dagster UI as a user drives it: the real `dagster dev` (webserver + daemon + code server) on a
copy of the repository, a materialization launched through the webserver's GraphQL API (what the
"Materialize" button sends), then the metadata and check results the asset pages show, read back.

The copy ingests a 20-user cut of ML-100K (tests/orchestration/fixtures); every expected number is
computed here from that file or from the files the run left on disk, never copied from a run.
"""

import csv

import pyarrow.parquet as pq
import pytest
import yaml
from project_copy import SAMPLE, TEST_PARAMS, copy_project, git
from ui_helpers.dagster_ui import DagsterDev

from slmrec.data.sequences import SEQUENCES_FILE, SPLIT_FILES, dataset_hash, sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# the tiny LLM profile (4 layers) keeps the copy's params valid end to end; this test runs only the data stages
PARAMS = {**TEST_PARAMS, "llm": {"profile": "tiny", "teacher_layers": 4, "student_layers": 2}, "distill": {"blocks": 2}}
DATA_ASSETS = ["raw_interactions", "item_catalog", "user_sequences", "dataset_splits"]
CONTRACT_CHECKS = {asset: f"{asset}_contract" for asset in DATA_ASSETS}
GROUPS = {
    "ingestion": {"landing_interactions", "raw_interactions", "item_catalog"},
    "sequences": {"user_sequences", "dataset_splits"},
    "models": {"item_text", "sasrec", "teacher", "student_nokd", "student"},
    "evaluation": {"model_evaluation"},
    "deployment": {"promoted_model", "recommendations", "recommendation_monitoring"},
}


def fixture_counts() -> dict[str, int]:
    """Rows, users and items of the sample interaction file, and rows of its item file."""
    with open(SAMPLE["ml-100k.inter"], newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(SAMPLE["ml-100k.item"], newline="") as f:
        catalog = list(csv.DictReader(f, delimiter="\t"))
    return {
        "rows": len(rows),
        "users": len({r["user_id:token"] for r in rows}),
        "items": len({r["item_id:token"] for r in rows}),
        "catalog": len(catalog),
    }


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    root = copy_project(tmp / "slmrec", PARAMS)
    server = DagsterDev(root, tmp / "dagster_home")
    with server:
        yield server
    # stop() sent SIGTERM to the whole process group (as Ctrl-C on `make ui` does) and SIGKILLed what was
    # left after a grace period. Every process must be gone, and none may have needed SIGKILL. (Fresh-clone
    # runs started in the background once did: SIGINT inherited ignored made `dagster dev` ignore SIGTERM, see
    # DEFAULT_SIGINT in ui_helpers/dagster_ui.py and docs/RELIABILITY.md.)
    assert not server.forced_kill, (
        f"dagster dev (group {server.proc.pid}) needed SIGKILL after SIGTERM: {server.survivors}; "
        f"log tail:\n{server.log_tail()[-2000:]}")
    assert server.proc.poll() is not None and not server.group_members()


@pytest.fixture(scope="module")
def data_run(ui) -> str:
    """One run of the four data assets and their checks, launched the way the UI launches it."""
    run_id = ui.launch_assets(DATA_ASSETS, tags={"slmrec/trigger": "ui-e2e-test"})
    assert ui.wait_for_run(run_id, timeout_s=420) == "SUCCESS"  # 180 s was not enough at load ~10 on 2 cores
    return run_id


def test_asset_graph_shows_every_asset_in_its_group_with_a_description(ui):
    assert ui.location == "slmrec"  # the code location name from pyproject.toml [tool.dagster]
    graph = ui.asset_graph()
    for group, assets in GROUPS.items():
        assert {key for key, node in graph.items() if node["group"] == group} == assets, group
    for key, node in graph.items():
        assert node["description"] and len(node["description"]) > 20, f"{key} has no description in the UI"
    assert graph["dataset_splits"]["deps"] == ["user_sequences"]
    assert set(graph["student"]["deps"]) == {"teacher", "sasrec", "dataset_splits", "item_text"}
    assert set(graph["sasrec"]["deps"]) == {"dataset_splits", "item_text"}  # read when an item side asks for text


def test_materialization_metadata_matches_the_fixture_and_the_files_on_disk(ui, data_run):
    expected = fixture_counts()
    root = ui.root

    run_id, raw = ui.latest_metadata("raw_interactions")
    assert run_id == data_run
    assert (raw["rows_read"], raw["accepted"], raw["quarantined"]) == (expected["rows"], expected["rows"], 0)
    assert (raw["users"], raw["items"]) == (expected["users"], expected["items"])
    # the run executed the copy's code and data: its commit, and the DVC hash of the snapshot it wrote
    assert raw["git_commit"] == git(root, "rev-parse", "HEAD").strip()
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    ingest_outs = {o["path"]: o["md5"] for o in lock["ingest"]["outs"]}
    assert raw["dvc_md5:data/interactions"] == ingest_outs["data/interactions"]

    _, catalog = ui.latest_metadata("item_catalog")
    assert catalog["items_with_metadata"] == expected["catalog"]

    # k-core filtering keeps a subset; the counts are those of the files the stage wrote
    _, sequences = ui.latest_metadata("user_sequences")
    split_dir = root / "data/splits"
    assert sequences["users"] == pq.read_metadata(split_dir / "user_map.parquet").num_rows <= expected["users"]
    assert sequences["items"] == pq.read_metadata(split_dir / "item_map.parquet").num_rows <= expected["items"]
    assert sequences["interactions"] == pq.read_metadata(split_dir / SEQUENCES_FILE).num_rows <= expected["rows"]
    dropped = sequences["dropped"]  # no filters configured: every row is kept or counted as dropped by a step
    assert dropped["filter"] == {} and sequences["users"] > 0
    steps = ("k_core", "short_users", "truncation")
    assert expected["rows"] - sum(dropped[step]["interactions"] for step in steps) == sequences["interactions"]

    run_id, splits = ui.latest_metadata("dataset_splits")
    assert run_id == data_run
    on_disk = {name: sha256_file(split_dir / name) for name in SPLIT_FILES}
    assert splits["dataset_hash"] == dataset_hash(on_disk)  # recomputed from the Parquet bytes
    assert splits["files_sha256"] == on_disk
    assert splits["valid_users"] == splits["test_users"] == sequences["users"]  # leave-one-out: one target each
    # every interaction is in train except each user's validation and test target
    assert splits["train_interactions"] == sequences["interactions"] - 2 * sequences["users"]
    sequence_outs = {o["path"]: o["md5"] for o in lock["sequences"]["outs"]}
    assert splits["dvc_md5:data/splits"] == sequence_outs["data/splits"]


def test_blocking_contract_checks_passed_in_the_same_run(ui, data_run):
    for asset, check in CONTRACT_CHECKS.items():
        result = ui.check_results(asset)[check]
        assert result.blocking, f"{asset}: {check} should block downstream assets"
        assert (result.status, result.success, result.run_id) == ("SUCCEEDED", True, data_run), (asset, result)
        assert result.metadata["evaluated_expectations"] > 0
        assert result.metadata["failed_expectations"] == 0 and result.metadata["failures"] == []


def test_models_were_not_part_of_the_data_run(ui, data_run):
    # the selection was honoured: no model ran, so the model pages still show "never materialized"
    for model in GROUPS["models"]:
        with pytest.raises(LookupError, match="no materialization"):
            ui.latest_metadata(model)
    assert not (ui.root / "models/sasrec").exists()
