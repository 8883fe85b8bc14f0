"""The bridge between Dagster and the DVC pipeline: one pipeline, seen from two sides.

Every heavy or versioned asset materializes by running its DVC stage (`dvc repro --single-item
STAGE`), whose command is the same `slmrec` CLI a user or CI runs. Where that command runs is the
`stage_runner` resource (orchestration/runners.py): a local Dagster Pipes subprocess by default, a
GPU pod on a cluster. Afterwards `dvc.lock` holds the content hashes of the stage's outputs — the
same hash-locked state `dvc repro` alone leaves — and the asset reports them.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from orchestration.stage_entry import lock_entry
from slmrec.config import Params, load_params

if TYPE_CHECKING:
    from orchestration.runners import StageRunner

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Every DVC-stage asset runs in this pool (limit 1, orchestration/dagster.yaml): DVC holds one repo
# lock at a time, and two GPU stages (teacher, students) must never run at once.
STAGE_POOL = "dvc_stages"
# Landing-day ingestions write data/warehouse.duckdb directly; DuckDB allows one writing process,
# so the sensor's runs (one per new file) take turns in this pool (limit 1, same config).
WAREHOUSE_POOL = "warehouse"


class DvcPipeline(dg.ConfigurableResource):
    """The project checkout the stages run in: params, paths, the DVC command and dvc.lock."""

    project_dir: str = str(PROJECT_DIR)
    params_file: str = "params.yaml"
    force: bool = False  # re-run a stage even when DVC says its deps and params are unchanged

    @property
    def root(self) -> Path:
        return Path(self.project_dir)

    def params(self) -> Params:
        return load_params(self.root / self.params_file)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def env(self) -> dict[str, str]:
        """The stage's environment: this interpreter's bin dir first, so `slmrec` and `dvc` resolve."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["DVC_NO_ANALYTICS"] = "1"
        env.setdefault("SLMREC_NO_TQDM", "1")
        return env

    def stage_command(self, stage: str, python: str = sys.executable) -> list[str]:
        """The stage process: `dvc repro --single-item STAGE` wrapped to report over Dagster Pipes."""
        return [python, "-m", "orchestration.stage_entry", stage] + (["--force"] if self.force else [])

    def run_stage(self, context: dg.AssetExecutionContext, stage: str, runner: "StageRunner") -> dict[str, str]:
        """Run one DVC stage with `runner`; return {out path: md5} from dvc.lock."""
        runner.run(context, self, stage)
        return self.locked_outs(stage)

    def locked_outs(self, stage: str) -> dict[str, str]:
        return {out["path"]: out.get("md5", "") for out in lock_entry(self.root / "dvc.lock", stage).get("outs", [])}

    def locked_deps(self, stage: str) -> dict[str, str]:
        return {dep["path"]: dep.get("md5", "") for dep in lock_entry(self.root / "dvc.lock", stage).get("deps", [])}


def git_commit(root: Path = PROJECT_DIR) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown (not a git checkout)"


def lock_metadata(outs: dict[str, str], root: Path = PROJECT_DIR) -> dict[str, dg.MetadataValue]:
    """dvc.lock hashes as asset metadata: the auditor's link from a Dagster run to DVC."""
    meta = {f"dvc_md5:{path}": dg.MetadataValue.text(md5) for path, md5 in outs.items()}
    meta["git_commit"] = dg.MetadataValue.text(git_commit(root))
    return meta
