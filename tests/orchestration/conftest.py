"""Session-wide copies of the repository: one reproduced by `dvc repro`, one materialized by Dagster."""

from pathlib import Path

import dagster as dg
import pytest
from project_copy import DATA_ASSETS, copy_project, dvc, materialize

from orchestration.definitions import defs as load_defs


@pytest.fixture(scope="session")
def definitions() -> dg.Definitions:
    return load_defs()


@pytest.fixture(scope="session")
def dvc_project(tmp_path_factory) -> Path:
    """The copy `dvc repro` built: the data stages and a 2-epoch SASRec."""
    root = copy_project(tmp_path_factory.mktemp("dvc") / "slmrec")
    dvc(root, "repro", "sasrec")
    return root


@pytest.fixture(scope="session")
def dagster_project(tmp_path_factory, definitions):
    """The copy Dagster built: the data assets and their blocking contract checks, in-process."""
    root = copy_project(tmp_path_factory.mktemp("dagster") / "slmrec")
    with dg.instance_for_test() as instance:
        result = materialize(definitions, root, DATA_ASSETS, instance=instance)
        yield root, result
