"""`dvc exp run -S` and `dvc exp show` work next to Dagster (issue 10, item 6).

DVC runs from its own tool environment (.venv-dvc, made by `make install` from requirements-dvc.lock):
its hydra needs antlr4 4.9 for the `-S` override grammar, Dagster (in .venv) needs 4.13.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from project_copy import REPO, git

from orchestration.pipeline import DvcPipeline
from orchestration.stage_entry import DVC_TOOL_ENV, dvc_command

TRAIN = """import json, yaml
p = yaml.safe_load(open("params.yaml"))
json.dump({"epochs_run": p["train_llm"]["epochs"], "lr": p["train_llm"]["lr"]}, open("metrics.json", "w"))
"""
DVC_YAML = """stages:
  train_llm:
    cmd: python train.py
    deps: [train.py]
    params: [train_llm]
    metrics:
      - metrics.json:
          cache: false
"""


def tool_dvc() -> list[str]:
    cmd = dvc_command(REPO)
    assert cmd[0].endswith(f"{DVC_TOOL_ENV}/bin/dvc") or cmd[0].endswith("dvc"), cmd
    if not (REPO / DVC_TOOL_ENV / "bin" / "dvc").exists() and "SLMREC_DVC" not in DvcPipeline().env():
        pytest.fail(f"no DVC tool environment at {REPO / DVC_TOOL_ENV}: run `make install`")
    return cmd


def run(cwd: Path, *args: str, clean_path: bool = False) -> subprocess.CompletedProcess:
    """`clean_path`: the README's command from a shell with no venv on PATH (the DVC wrapper adds .venv/bin)."""
    env = {**DvcPipeline(project_dir=str(cwd)).env(), "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "t@slmrec",
           "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "t@slmrec"}
    if clean_path:
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def identity(root: Path) -> None:  # `dvc exp run` commits the experiment: it needs a git identity
    git(root, "config", "user.name", "tests")
    git(root, "config", "user.email", "tests@slmrec")


def experiments(show: dict) -> list[dict]:
    return [rev["data"] for entry in show for exp in (entry.get("experiments") or []) for rev in exp["revs"]]


def test_exp_run_with_a_set_parameter_from_a_fresh_clone(tmp_path):
    dvc = tool_dvc()
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "params.yaml").write_text((REPO / "params.yaml").read_text())  # the project's real params
    (origin / "train.py").write_text(TRAIN)
    (origin / "dvc.yaml").write_text(DVC_YAML)
    git(origin, "init", "-q")
    run(origin, *dvc, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "project")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    identity(clone)
    out = run(clone, *dvc, "exp", "run", "-S", "train_llm.epochs=1").stdout
    assert "Ran experiment(s)" in out
    show = json.loads(run(clone, *dvc, "exp", "show", "--json").stdout)
    (exp,) = experiments(show)
    assert exp["params"]["params.yaml"]["data"]["train_llm"]["epochs"] == 1
    assert exp["metrics"]["metrics.json"]["data"]["epochs_run"] == 1
    table = run(clone, *dvc, "exp", "show", "--md").stdout  # the table a user reads
    assert "train_llm.epochs" in table and "epochs_run" in table
    run(clone, *dvc, "exp", "run", "-S", "train_llm.epochs=2", "-S", "train_llm.lr=0.01")  # a second point
    runs = {(e["metrics"]["metrics.json"]["data"]["epochs_run"], e["metrics"]["metrics.json"]["data"]["lr"])
            for e in experiments(json.loads(run(clone, *dvc, "exp", "show", "--json").stdout))}
    assert runs == {(1, 0.001), (2, 0.01)}


@pytest.mark.slow  # starts from the session's `dvc repro sasrec` copy (shared with test_dvc.py)
def test_exp_run_on_the_real_pipeline(dvc_project, tmp_path):
    dvc = tool_dvc()
    project = tmp_path / "slmrec"  # a private copy (git history and DVC cache included): exp run edits the workspace
    shutil.copytree(dvc_project, project, symlinks=True)
    identity(project)
    git(project, "add", "dvc.lock", "results")
    git(project, "commit", "-q", "--allow-empty", "-m", "pipeline outputs")  # empty when the copy matched dvc.lock
    # train_sasrec.epochs re-runs the sasrec stage: its command `slmrec train sasrec` must be found from a shell
    # without any venv on PATH, as the README's `.venv-dvc/bin/dvc exp run -S ...` is typed (it exited 127 before)
    out = run(project, str(REPO / ".venv-dvc/bin/dvc"), "exp", "run", "-S", "train_sasrec.epochs=1", "sasrec",
              clean_path=True).stdout
    assert "Running stage 'sasrec'" in out
    show = json.loads(run(project, *dvc, "exp", "show", "--json").stdout)
    assert any(e["params"]["params.yaml"]["data"]["train_sasrec"]["epochs"] == 1 for e in experiments(show))
