"""The whole chain through `slmrec experiment` on a planted pattern, tiny profile; lineage of its student."""

import json

import pytest

from slmrec import cli
from slmrec.lineage import trace, mismatches

N_ITEMS, N_USERS = 30, 60


def planted_seqtxt(path):
    """User u walks the item ring with stride 1 from a user-specific start: next item = current + 1."""
    lines = []
    for u in range(N_USERS):
        start = (u * 7) % N_ITEMS
        items = [(start + k) % N_ITEMS + 1 for k in range(12)]
        lines.append(" ".join(map(str, [f"u{u}", *items])))
    path.write_text("\n".join(lines) + "\n")


PARAMS = """
sequences: {k_core: 2}
sasrec: {hidden: 32, max_len: 12, dropout: 0.0}
llm: {max_len: 10}
train_sasrec: {epochs: 15, batch_size: 32, lr: 0.005, patience: 0}
train_llm: {epochs: 6, batch_size: 32, lr: 0.005, patience: 0}
eval: {bootstrap: 200, item_side_why: "the planted test's choice"}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    planted_seqtxt(tmp / "planted.txt")
    (tmp / "params.yaml").write_text(PARAMS)
    out = tmp / "out"
    argv = ["experiment", "--profile", "tiny", "--format", "seqtxt", "--path", str(tmp / "planted.txt"),
            "--out", str(out), "--params", str(tmp / "params.yaml"), "--json"]
    return out, argv


def test_experiment_json_and_learning(experiment, capsys):
    out, argv = experiment
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["models"]) == {"sasrec", "teacher", "student_nokd", "student"}
    assert summary["dataset"]["n_users"] == N_USERS and summary["dataset"]["n_items"] == N_ITEMS
    assert summary["ingest"]["accepted"] == N_USERS * 12 and summary["ingest"]["quarantined"] == 0
    for name, m in summary["models"].items():
        for key in ("ndcg@10", "hr@10", "mrr", "params_total", "params_trainable", "train_seconds",
                    "inference_users_per_s"):
            assert key in m, (name, key)
        # random ranking of 30 items gives HR@10 = 1/3; the planted successor is learnable
        assert m["hr@10"] >= 0.6, (name, m["hr@10"])
    student, teacher = summary["models"]["student"], summary["models"]["teacher"]
    assert student["params_total"] < teacher["params_total"]
    assert "student-student_nokd" in summary["comparisons"]
    table = (out / "results.md").read_text()
    assert table.startswith("Protocol: full ranking")
    # the item side each model read, from its checkpoint, and why (eval.item_side_why)
    assert ("Item side (what each model reads and scores items by; `sasrec.item_side` / `llm.item_side`): "
            "sasrec `id`, teacher `id`, student_nokd `id`, student `id`. Why: the planted test's choice.") in table
    assert summary["item_side"] == {"models": dict.fromkeys(["sasrec", "teacher", "student_nokd", "student"], "id"),
                                    "why": "the planted test's choice"}

    # lineage: student -> teacher -> sasrec -> splits -> interactions -> raw file, all hashes verified
    node = trace(out / "models" / "student", verify=True)
    assert mismatches(node) == []
    names = set()

    def walk(n):
        names.add(n.name)
        for p in n.parents:
            walk(p)

    walk(node)
    assert {"student", "teacher", "sasrec", "splits", "interactions", "planted.txt"} <= names

