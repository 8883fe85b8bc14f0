"""The bridge between Dagster and the DVC pipeline: one pipeline, seen from two sides.

Every heavy or versioned asset materializes by running its DVC stage (`dvc repro --single-item
STAGE`), whose command is the same `slmrec` CLI a user or CI runs. The stage runs as a Dagster
Pipes subprocess (locally) so logs stream into the UI; on a cluster the same command runs in a
pod (see `orchestration/k8s.py`). Afterwards `dvc.lock` holds the content hashes of the stage's
outputs — the same hash-locked state `dvc repro` alone leaves — and the asset reports them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from slmrec.config import Params, load_params

PROJECT_DIR = Path(__file__).resolve().parent.parent


class DvcPipeline(dg.ConfigurableResource):
    """Runs DVC stages of the project and reads back their locked hashes."""

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

    def repro_command(self, stage: str) -> list[str]:
        cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
        return cmd + (["--force"] if self.force else [])

    def run_stage(self, context: dg.AssetExecutionContext, stage: str, pipes: dg.PipesSubprocessClient) -> dict:
        """Run one DVC stage through Pipes; return {out path: md5} from dvc.lock. Raises on failure."""
        context.log.info(f"dvc repro --single-item {stage}")
        pipes.run(context=context, command=self.repro_command(stage), env=self.env(), cwd=str(self.root))
        return self.locked_outs(stage)

    def run_stage_plain(self, stage: str) -> dict:
        """Same as run_stage without a Dagster context (sensors, tests)."""
        subprocess.run(self.repro_command(stage), env=self.env(), cwd=self.root, check=True)
        return self.locked_outs(stage)

    def locked_outs(self, stage: str) -> dict[str, str]:
        lock_file = self.root / "dvc.lock"
        if not lock_file.exists():
            raise FileNotFoundError(f"{lock_file} missing after running stage {stage!r}")
        lock = yaml.safe_load(lock_file.read_text())
        entry = lock.get("stages", {}).get(stage)
        if entry is None:
            raise KeyError(f"stage {stage!r} not in dvc.lock")
        return {out["path"]: out.get("md5", "") for out in entry.get("outs", [])}


def git_commit(root: Path = PROJECT_DIR) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown (not a git checkout)"


def lock_metadata(outs: dict[str, str]) -> dict[str, dg.MetadataValue]:
    """dvc.lock hashes as asset metadata: the auditor's link from a Dagster run to DVC."""
    meta = {f"dvc_md5:{path}": dg.MetadataValue.text(md5) for path, md5 in outs.items()}
    meta["git_commit"] = dg.MetadataValue.text(git_commit())
    return meta
