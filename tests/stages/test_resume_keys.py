"""Working checkpoints never go stale: the resume key covers params, data, parents, backbone bytes and code;
model construction is seeded on its own."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import slmrec.stages.models as stages
from slmrec.config import from_dict, Params
from slmrec.hashing import code_version
from slmrec.lineage import mismatches, read_card, trace
from slmrec.models import backbones
from slmrec.models.checkpoint import load_checkpoint, load_model

PARAMS = {
    "sasrec": {"hidden": 8, "layers": 1, "heads": 1, "dropout": 0.0, "max_len": 6, "inner_size": 16},
    "train_sasrec": {"epochs": 2, "batch_size": 8, "lr": 0.01, "patience": 0},
    "llm": {"profile": "tiny", "teacher_layers": 2, "student_layers": 1, "max_len": 6, "windows_per_user": 1,
            "lora_r": 4, "lora_alpha": 8, "instruction": "Next?", "response": "=>"},
    "distill": {"blocks": 1},
    "train_llm": {"epochs": 1, "batch_size": 8, "lr": 0.003, "patience": 0, "eval_batch_size": 16},
}


def params(**overrides) -> Params:
    values = json.loads(json.dumps(PARAMS))
    for group, changes in overrides.items():
        values[group].update(changes)
    return from_dict(Params, values)


class Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)

    def said(self, text: str) -> bool:
        return any(text in line for line in self)


def state(model_dir: Path) -> dict:
    return load_checkpoint(model_dir / "model.pt")["model_state"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def trained(tmp_path, tiny_splits):
    """SASRec and a teacher trained once; returns (root, runs dir, Log of the teacher run)."""
    runs, log = tmp_path / "runs", Log()
    stages.train_sasrec(str(tiny_splits), params(), str(tmp_path / "sasrec"), str(runs), log=Log())
    stages.train_llm("teacher", str(tiny_splits), params(), str(tmp_path / "teacher"), str(tmp_path / "sasrec"),
                     runs_dir=str(runs), log=log)
    assert log.said("teacher: starting fresh")
    return tmp_path, runs


def teacher_again(root: Path, runs: Path, p: Params | None = None, out: str = "teacher2") -> Log:
    log = Log()
    stages.train_llm("teacher", str(root / "splits"), p or params(), str(root / out), str(root / "sasrec"),
                     runs_dir=str(runs), log=log)
    return log


def test_same_inputs_resume_the_finished_run(trained):
    root, runs = trained
    log = teacher_again(root, runs)
    assert log.said("teacher: resuming from") and not log.said("starting fresh")
    assert same(state(root / "teacher"), state(root / "teacher2"))


def test_a_new_item_table_retrains_instead_of_resuming(trained):
    root, runs = trained
    # SASRec retrained with another seed: another item table under the same path
    stages.train_sasrec(str(root / "splits"), params(train_sasrec={"seed": 7}), str(root / "sasrec"), str(runs),
                        log=Log())
    log = teacher_again(root, runs)
    assert log.said("teacher: starting fresh") and log.said("sasrec changed")
    assert not same(state(root / "teacher"), state(root / "teacher2"))


def test_changed_code_retrains(trained, monkeypatch):
    root, runs = trained
    monkeypatch.setattr(stages, "code_version", lambda: "edited-source")
    log = teacher_again(root, runs)
    assert log.said("teacher: starting fresh") and log.said("code changed")


def test_code_version_covers_every_source_file(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "a.py").write_text("x = 1\n")
    (pkg / "loop.py").write_text("y = 2\n")
    before = code_version(("models", "loop.py"), root=pkg)
    assert code_version(("models", "loop.py"), root=pkg) == before
    (pkg / "models" / "a.py").write_text("x = 2\n")
    assert code_version(("models", "loop.py"), root=pkg) != before
    assert len(code_version()) == 64  # the installed package's own model code


def test_changed_backbone_bytes_retrain_and_fail_verification(trained, tmp_path, monkeypatch):
    """A backbone with weight files (as smol/hf have): their sha256 enters the key, the checkpoint and the card."""
    root, runs = trained
    weights = tmp_path / "weights" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"version 1")
    tiny = backbones.PROFILES["tiny"]

    def with_files(*args):
        bb = tiny(*args)
        files = (weights,)
        return dataclasses.replace(bb, files=files, source={**bb.source, "weights_sha256": backbones.weights_sha256(files)})

    monkeypatch.setitem(backbones.PROFILES, "tiny", with_files)
    log = teacher_again(root, runs, out="teacher_v1")
    assert log.said("backbone changed")  # the key now carries the weights' sha256
    card = read_card(root / "teacher_v1")
    assert str(weights) in [p["path"] for p in card["parents"]]
    assert not mismatches(trace(root / "teacher_v1", verify=True))

    weights.write_bytes(b"version 2")  # the same path, other bytes
    log = teacher_again(root, runs, out="teacher_v2")
    assert log.said("teacher: starting fresh") and log.said("backbone changed")
    assert [n.path for n in mismatches(trace(root / "teacher_v1", verify=True))] == [str(weights)]
    with pytest.raises(ValueError, match="different weights"):
        load_model(root / "teacher_v1" / "model.pt")  # trained on version 1; this machine has version 2


def test_construction_does_not_depend_on_earlier_rng_draws(tmp_path, tiny_splits):
    """A first run that converts a backbone (or builds anything random) before training must not change the model."""
    stages.train_sasrec(str(tiny_splits), params(), str(tmp_path / "sasrec"), str(tmp_path / "runs"), log=Log())
    outs = []
    for name, draw in (("quiet", 0), ("noisy", 1000)):
        torch.rand(draw)  # an unrelated RNG draw, as a backbone conversion makes
        stages.train_llm("teacher", str(tiny_splits), params(), str(tmp_path / name), str(tmp_path / "sasrec"),
                         runs_dir=str(tmp_path / f"runs_{name}"), log=Log())
        outs.append(state(tmp_path / name))
    assert same(*outs)


def test_checkpoints_store_the_resolved_device_and_dtype(trained):
    root, _ = trained
    config = load_checkpoint(root / "teacher" / "model.pt")["model_config"]
    assert (config["llm"]["device"], config["llm"]["dtype"]) == ("cpu", "float32")  # never "auto"
    model = load_model(root / "teacher" / "model.pt")
    assert next(model.parameters()).dtype == torch.float32
    if not torch.cuda.is_available():
        cuda = json.loads(json.dumps(config))
        cuda["llm"]["device"] = "cuda"
        with pytest.raises(ValueError, match="no CUDA"):
            type(model).from_config_dict(cuda)
        assert type(model).from_config_dict(cuda, device="cpu") is not None  # an explicit override
