import random

import numpy as np
import pytest
import torch

from slmrec.config import SASRecConfig, TrainConfig
from slmrec.models.sasrec import SASRec
from slmrec.train.checkpoint import get_rng_state, load_checkpoint, load_model, save_atomic, set_rng_state
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.train.loop import fit

torch.set_num_threads(2)


def test_checkpoint_round_trip(tmp_path):
    rng = random.Random(0)
    seqs = [[rng.randrange(1, 21) for _ in range(8)] for _ in range(20)]
    train = make_train_examples([s[:-2] for s in seqs], 6)
    valid = make_eval_examples([(s[:-2], s[-2]) for s in seqs], 6)
    torch.manual_seed(0)
    model = SASRec(20, SASRecConfig(hidden=8, layers=1, max_len=6, inner_size=16))
    fit(model, train, valid, TrainConfig(epochs=2, batch_size=8), tmp_path, extra_state={"parent": "abc"}, log=lambda s: None)

    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["model_class"] == "slmrec.models.sasrec.SASRec"
    assert ckpt["model_config"] == {"n_items": 20, "sasrec": model.config_dict()["sasrec"]}
    assert ckpt["train_config"]["batch_size"] == 8 and ckpt["extra"] == {"parent": "abc"}
    assert ckpt["data_hash"].startswith(train.content_hash())
    last = load_checkpoint(tmp_path / "last.pt")
    assert {"optimizer", "scheduler", "rng", "trainer", "history", "step", "best_metric"} <= set(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp files left

    loaded = load_model(tmp_path / "best.pt").eval()
    batch = valid.batch(torch.arange(len(valid)))
    with torch.no_grad():
        assert torch.equal(loaded.full_sort_predict(batch), model.eval().full_sort_predict(batch))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"v": torch.tensor(1)}, path)
    with pytest.raises(TypeError, match="pickle"):  # torch.save cannot pickle a generator
        save_atomic({"v": (i for i in range(1))}, path)
    assert torch.load(path, weights_only=True)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    save_atomic({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a slmrec checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_round_trip(tmp_path):
    state = get_rng_state()
    save_atomic({"rng": state}, tmp_path / "rng.pt")
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


@pytest.mark.parametrize("named", ["evil_planted_module.Model", "os.system", "slmrec.models.sasrec.torch",
                                   "slmrec.models.sasrec.SASRecConfig", "slmrec.models_evil.X.Y", "slmrec.distill.losses.F",
                                   "slmrec.models.sasrec;import os.SASRec"])
def test_a_checkpoint_naming_a_foreign_class_is_refused_before_any_import(tmp_path, monkeypatch, named):
    import sys

    from slmrec.models.checkpoint import CorruptCheckpointError
    from slmrec.serve.recommender import load_serving_model

    (tmp_path / "evil_planted_module.py").write_text("raise SystemExit('imported!')\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = SASRec(20, SASRecConfig(hidden=8, layers=1, max_len=6, inner_size=16))
    save_atomic({"model_class": named, "model_config": model.config_dict(),
                 "model_state": model.trainable_state_dict()}, tmp_path / "model.pt")
    with pytest.raises(CorruptCheckpointError, match="refused|not a Recommender"):
        load_serving_model(tmp_path / "model.pt")  # the serving loader, through build_model
    assert "evil_planted_module" not in sys.modules
