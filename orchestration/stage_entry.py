"""The process Dagster launches for a stage: `python -m orchestration.stage_entry STAGE [--force]`.

It runs exactly what `dvc repro` runs for that stage (`dvc repro --single-item STAGE`, whose
command is the `slmrec` CLI in dvc.yaml) and talks back over Dagster Pipes: a log line, and at
the end one custom message `{stage, returncode, outs: {path: md5}}` read from dvc.lock. Locally
the messages travel through a temp file; in a Kubernetes pod through the pod's log. Imports no
Dagster beyond the small `dagster_pipes` package, so it starts fast.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml
from dagster_pipes import open_dagster_pipes


def lock_entry(lock_file: Path, stage: str) -> dict:
    """A stage's entry in dvc.lock; FileNotFoundError/KeyError naming the stage when absent."""
    if not lock_file.exists():
        raise FileNotFoundError(f"{lock_file} missing: stage {stage!r} has never been run by DVC here")
    entry = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).get(stage)
    if entry is None:
        raise KeyError(f"stage {stage!r} not in {lock_file}")
    return entry


DVC_TOOL_ENV = ".venv-dvc"  # made by `make install`: DVC with its own antlr4 4.9 (Dagster needs 4.13)


def dvc_command(root: Path | None = None, python: str = sys.executable) -> list[str]:
    """How to run DVC: $SLMREC_DVC, else the project's tool environment (`.venv-dvc/bin/dvc` under
    `root`, default the working directory), else this interpreter's `dvc` module (enough for
    `dvc repro`; `dvc exp run -S` needs the tool environment)."""
    if os.environ.get("SLMREC_DVC"):
        return [os.environ["SLMREC_DVC"]]
    tool = (root or Path.cwd()) / DVC_TOOL_ENV / "bin" / "dvc"
    if tool.is_file() and os.access(tool, os.X_OK):
        return [str(tool)]
    return [python, "-m", "dvc"]


def repro_command(stage: str, force: bool = False, python: str = sys.executable) -> list[str]:
    return [*dvc_command(python=python), "repro", "--single-item", stage] + (["--force"] if force else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("--force", action="store_true", help="run even if DVC finds the stage unchanged")
    args = parser.parse_args(argv)
    command = repro_command(args.stage, args.force)
    with open_dagster_pipes() as pipes:
        pipes.log.info(f"{' '.join(command)} in {Path.cwd()}")
        sys.stdout.flush()
        returncode = subprocess.call(command)
        outs = {}
        if returncode == 0:
            entry = lock_entry(Path("dvc.lock"), args.stage)
            outs = {out["path"]: out.get("md5", "") for out in entry.get("outs", [])}
        pipes.report_custom_message({"stage": args.stage, "returncode": returncode, "outs": outs})
    return returncode


if __name__ == "__main__":
    sys.exit(main())
