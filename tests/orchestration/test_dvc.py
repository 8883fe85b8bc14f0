"""DVC as the audit trail: the default remote restores committed outputs in a fresh clone, and
`dvc metrics diff` / `dvc plots diff` compare two runs."""

import hashlib
import json
from pathlib import Path

from project_copy import dvc, git

from orchestration.pipeline import DvcPipeline

OUTPUTS = ("data/raw/ml-100k", "data/interactions", "data/splits", "models/sasrec")


def sha256_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_then_pull_restores_a_model_in_a_fresh_clone(dvc_project, tmp_path):
    # the default remote is ~/.local/share/slmrec/dvc-remote: HOME points into tmp_path for the test
    env = {**DvcPipeline(project_dir=str(dvc_project)).env(), "HOME": str(tmp_path / "home")}
    git(dvc_project, "add", "dvc.lock", "results")  # what a user commits after `dvc repro`
    git(dvc_project, "commit", "-q", "-m", "pipeline outputs")
    dvc(dvc_project, "push", env=env)
    remote = tmp_path / "home/.local/share/slmrec/dvc-remote/files/md5"
    assert sum(1 for p in remote.rglob("*") if p.is_file()) >= 10

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(dvc_project), str(clone))
    assert not (clone / "models/sasrec").exists()
    dvc(clone, "pull", "--with-deps", "sasrec", env=env)  # sasrec and every stage upstream of it
    for out in OUTPUTS:
        assert sha256_tree(clone / out) == sha256_tree(dvc_project / out), out
    status = dvc(clone, "status", "--with-deps", "--json", "sasrec", env=env).stdout
    assert json.loads(status) == {}  # the restored outputs match dvc.lock: nothing to reproduce


def test_metrics_and_plots_diff_show_two_runs(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
    git(root, "init", "-q")
    dvc(root, "init", "-q")

    def write_run(ndcg: float, curve: list[float]) -> None:
        (root / "results/curves").mkdir(parents=True, exist_ok=True)
        models = {"student": {"ndcg@10": ndcg, "mrr": ndcg / 2}}
        (root / "results/metrics.json").write_text(json.dumps({"models": models}))
        rows = "".join(f"{epoch},{v},{1.0 - v}\n" for epoch, v in enumerate(curve))
        (root / "results/curves/student.csv").write_text("epoch,valid_ndcg@10,train_loss\n" + rows)

    write_run(0.05, [0.03, 0.05])
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "run 1")
    write_run(0.07, [0.04, 0.06, 0.07])

    metrics = json.loads(dvc(root, "metrics", "diff", "--json").stdout)
    change = metrics["results/metrics.json"]["models.student.ndcg@10"]
    assert (change["old"], change["new"]) == (0.05, 0.07) and abs(change["diff"] - 0.02) < 1e-12

    plots = json.loads(dvc(root, "plots", "diff", "--json").stdout)["data"]
    (plot,) = plots["results/curves/student.csv"]
    epochs = [(row["rev"], row["epoch"], row["valid_ndcg@10"]) for row in plot["content"]["data"]["values"]]
    assert sorted(epochs) == [("HEAD", "0", "0.03"), ("HEAD", "1", "0.05"),
                              ("workspace", "0", "0.04"), ("workspace", "1", "0.06"), ("workspace", "2", "0.07")]
