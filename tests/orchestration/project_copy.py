"""Temporary copies of the repository for the orchestration tests (helpers; fixtures in conftest.py).

A copy holds the repository's files (tracked + untracked-not-ignored, as `git ls-files` lists them),
a fresh `git init`, and a 20-user cut of the real ML-100K files in place of the `fetch` stage's
output (committed to DVC with `dvc commit -f fetch`, so `dvc repro` never downloads anything).
Two session-wide copies are built once: one reproduced by `dvc repro`, one materialized by Dagster.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from orchestration.pipeline import DvcPipeline
from orchestration.runners import LocalStageRunner
from orchestration.stage_entry import dvc_command

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = {"ml-100k.inter": FIXTURES / "ml100k_u20.inter", "ml-100k.item": FIXTURES / "ml100k_u20.item"}
DATA_ASSETS = ["raw_interactions", "item_catalog", "user_sequences", "dataset_splits"]
# small enough for CI: SASRec trains a few epochs on 20 users in seconds
# the item text stage runs before SASRec (a dependency): the tiny backbone encodes the sample's texts in a second
TEST_PARAMS = {"train_sasrec": {"epochs": 2, "batch_size": 64, "lr": 0.001, "patience": 2},
               "item_text": {"profile": "tiny", "layers": 2}}


def git(root: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.email=tests@slmrec", "-c", "user.name=tests", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout


def run(root: Path, *cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command in the copy with the stage environment (venv first on PATH); raises with its output."""
    env = env or DvcPipeline(project_dir=str(root)).env()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """DVC as every caller runs it: the tool environment (.venv-dvc, `make install`), see dvc_command."""
    return run(root, *dvc_command(REPO), *args, env=env)


def copy_project(dest: Path, params: dict | None = None) -> Path:
    """A fresh copy of the repository at `dest` with the sample as raw data and `params` merged in."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file() and not rel.startswith("tests/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    raw = dest / "data/raw/ml-100k"
    raw.mkdir(parents=True)
    for name, src in SAMPLE.items():
        shutil.copy2(src, raw / name)
    merged = yaml.safe_load((dest / "params.yaml").read_text())
    for group, values in (params or TEST_PARAMS).items():
        merged[group] = {**merged.get(group, {}), **values}
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "fixture copy")
    dvc(dest, "commit", "-f", "fetch")  # the sample stands in for the downloaded files
    return dest


def resources(root: Path) -> dict:
    return {"pipeline": DvcPipeline(project_dir=str(root)), "stage_runner": LocalStageRunner()}


def materialize(definitions: dg.Definitions, root: Path, selection: list[str], instance=None, raise_on_error=True):
    """Run the real assets and checks of `selection` in-process against the copy at `root`."""
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        selection=[dg.AssetKey(k) for k in selection],  # keys: string selections need antlr4 4.13, DVC pins 4.9
        resources=resources(root),
        instance=instance,
        raise_on_error=raise_on_error,
    )
