import math
import random

import pytest
import torch
from torch import nn

from slmrec.config import SASRecConfig, TrainConfig
from slmrec.models.base import LossOutput, Recommender
from slmrec.models.sasrec import SASRec
from slmrec.train.checkpoint import load_checkpoint
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.train.loop import cosine_with_warmup, fit

torch.set_num_threads(2)
N_ITEMS, MAX_LEN = 30, 10
QUIET = dict(log=lambda s: None)


def data(n_users=40, seed=0):
    rng = random.Random(seed)
    seqs = [[rng.randrange(1, N_ITEMS + 1) for _ in range(rng.randrange(5, 18))] for _ in range(n_users)]
    train = make_train_examples([s[:-2] for s in seqs], MAX_LEN)
    valid = make_eval_examples([(s[:-2], s[-2]) for s in seqs], MAX_LEN)
    return train, valid


def model(dropout=0.1, seed=0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(N_ITEMS, SASRecConfig(hidden=16, layers=1, heads=1, dropout=dropout, max_len=MAX_LEN, inner_size=32))


def states_equal(a: dict, b: dict, atol=1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


class Killed(Exception):
    pass


def kill_at(step):
    def on_step(s):
        if s == step:
            raise Killed(f"simulated kill after step {s}")

    return on_step


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    train, valid = data()
    assert len(train) == 57  # 15 batches of 4; accumulation 2 -> 8 steps per epoch, the last one over 1 batch
    cfg = TrainConfig(epochs=3, batch_size=4, grad_accum=2, lr=3e-3, checkpoint_every=5, patience=0)
    full = fit(model(), train, valid, cfg, tmp_path / "full", restore_best=False, **QUIET)

    with pytest.raises(Killed):  # killed mid-epoch 3, 2 steps after the step-20 checkpoint
        fit(model(), train, valid, cfg, tmp_path / "killed", on_step=kill_at(22), **QUIET)
    interrupted = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert interrupted["step"] == 20 and interrupted["epoch"] == 2 and interrupted["batch_in_epoch"] == 8

    resumed = fit(model(seed=123), train, valid, cfg, tmp_path / "killed", restore_best=False, **QUIET)
    assert resumed.resumed and resumed.steps == full.steps == 24
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert states_equal(a["model_state"], b["model_state"])
    for key in ("best_metric", "best_epoch", "step", "epoch"):
        assert a[key] == b[key]
    assert len(a["history"]) == len(b["history"]) == 3
    for row_a, row_b in zip(a["history"], b["history"]):
        row_a.pop("train_seconds"), row_b.pop("train_seconds")
        assert row_a == pytest.approx(row_b, abs=1e-6)  # same per-term losses and validation metrics
    assert states_equal(
        a["optimizer"]["state"][0], b["optimizer"]["state"][0]
    )  # Adam moments of the first parameter


def test_finished_run_returns_at_once_and_mismatch_is_refused(tmp_path):
    train, valid = data()
    cfg = TrainConfig(epochs=1, batch_size=8, patience=0)
    first = fit(model(), train, valid, cfg, tmp_path, **QUIET)
    again = fit(model(), train, valid, cfg, tmp_path, **QUIET)
    assert again.resumed and again.steps == first.steps and again.history == first.history
    other_train, _ = data(seed=1)
    with pytest.raises(ValueError, match="data_hash"):
        fit(model(), other_train, valid, cfg, tmp_path, **QUIET)
    with pytest.raises(ValueError, match="lr"):
        fit(model(), train, valid, TrainConfig(epochs=1, batch_size=8, patience=0, lr=0.1), tmp_path, **QUIET)


def test_early_stopping(tmp_path):
    train, valid = data()
    values = iter([0.5, 0.4, 0.45, 0.3, 0.9, 0.9])  # best at epoch 1, then no improvement
    cfg = TrainConfig(epochs=6, batch_size=16, patience=2, metric="mrr")
    res = fit(model(), train, valid, cfg, tmp_path, evaluate_fn=lambda m, ex: {"mrr": next(values)}, **QUIET)
    assert res.stop_reason == "early_stopping"
    assert len(res.history) == 3 and res.best_epoch == 1 and res.best_metric == 0.5
    assert load_checkpoint(tmp_path / "best.pt")["best_epoch"] == 1


def test_best_checkpoint_is_restored(tmp_path):
    train, valid = data()
    values = iter([0.1, 0.7, 0.2])
    cfg = TrainConfig(epochs=3, batch_size=16, patience=0, metric="mrr")
    m = model()
    fit(m, train, valid, cfg, tmp_path, evaluate_fn=lambda _, __: {"mrr": next(values)}, **QUIET)
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 2 and "optimizer" not in best and "optimizer" in last
    assert states_equal(m.trainable_state_dict(), best["model_state"], atol=0)
    assert not states_equal(m.trainable_state_dict(), last["model_state"])


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # 8 full windows (same number of targets per row), no dropout: 2 x 4 accumulated == 1 x 8
    rng = random.Random(0)
    seqs = [[rng.randrange(1, N_ITEMS + 1) for _ in range(MAX_LEN + 1)] for _ in range(8)]
    train = make_train_examples(seqs, MAX_LEN)
    assert len(train) == 8 and bool((train.targets != 0).all())
    valid = make_eval_examples([(s[:-1], s[-1]) for s in seqs], MAX_LEN)
    common = dict(epochs=1, lr=1e-2, warmup_ratio=0.0, grad_clip=0.5, patience=0)
    one = fit(model(0.0), train, valid, TrainConfig(batch_size=8, grad_accum=1, **common), tmp_path / "a", **QUIET)
    two = fit(model(0.0), train, valid, TrainConfig(batch_size=4, grad_accum=2, **common), tmp_path / "b", **QUIET)
    assert one.steps == two.steps == 1
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model_state"]
    assert states_equal(a, b, atol=1e-5)
    assert not states_equal(a, model(0.0).trainable_state_dict(), atol=1e-5)  # it did train


class WithFrozenTeacher(Recommender):
    """A distiller-like wrapper: trains the student, a frozen teacher only adds a loss term."""

    def __init__(self):
        super().__init__()
        self.student, self.teacher = model(0.0, seed=1), model(0.0, seed=2)
        self.teacher.requires_grad_(False)
        self.n_items = N_ITEMS
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        return self.student(batch)

    def calculate_loss(self, batch):
        ce = self.student.calculate_loss(batch).loss
        with torch.no_grad():
            t = self.teacher(batch)
        match = (self.student(batch) - t).pow(2).mean()
        self.calls += 1
        return LossOutput(ce + match, {"ce": ce.item(), "match": match.item()})

    def predict(self, batch, items):
        return self.student.predict(batch, items)

    def full_sort_predict(self, batch):
        return self.student.full_sort_predict(batch)

    def config_dict(self):
        return {}

    @classmethod
    def from_config_dict(cls, config):
        return cls()


def test_wrapper_with_frozen_teacher(tmp_path):
    train, valid = data()
    wrapper = WithFrozenTeacher()
    teacher_before = {k: v.clone() for k, v in wrapper.teacher.state_dict().items()}
    res = fit(wrapper, train, valid, TrainConfig(epochs=1, batch_size=16, patience=0), tmp_path, **QUIET)
    assert {"train/ce", "train/match", "train/loss"} <= set(res.history[0])
    assert states_equal(wrapper.teacher.state_dict(), teacher_before, atol=0)
    state = load_checkpoint(tmp_path / "last.pt")["model_state"]
    assert not any(k.startswith("teacher.") for k in state)
    assert any(k.startswith("student.") for k in state) and "calls" in state
    assert int(state["calls"]) == res.steps  # the wrapper's own buffer is trainable state


def test_time_budget_and_bad_input(tmp_path):
    train, valid = data()
    res = fit(model(), train, valid, TrainConfig(epochs=50, batch_size=4, max_train_seconds=0.0), tmp_path / "t", **QUIET)
    assert res.stop_reason == "time_budget" and res.steps == 1 and len(res.history) == 1

    with pytest.raises(ValueError, match="batch_size"):
        fit(model(), train, valid, TrainConfig(batch_size=0), tmp_path / "x", **QUIET)
    with pytest.raises(ValueError, match="'ndcg@10'"):
        fit(model(), train, valid, TrainConfig(epochs=1), tmp_path / "y", evaluate_fn=lambda m, e: {"mrr": 1.0}, **QUIET)

    class Exploding(SASRec):
        def calculate_loss(self, batch):
            out = super().calculate_loss(batch)
            return LossOutput(out.loss * float("nan"), out.terms)

    torch.manual_seed(0)
    bad = Exploding(N_ITEMS, SASRecConfig(hidden=8, layers=1, max_len=MAX_LEN))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        fit(bad, train, valid, TrainConfig(epochs=1), tmp_path / "z", **QUIET)


def test_runs_are_deterministic(tmp_path):
    train, valid = data()
    cfg = TrainConfig(epochs=1, batch_size=8, patience=0)
    fit(model(), train, valid, cfg, tmp_path / "a", **QUIET)
    fit(model(), train, valid, cfg, tmp_path / "b", **QUIET)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert states_equal(a["model_state"], b["model_state"], atol=0)


def test_cosine_schedule_with_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))  # halfway through the decay: 0.5
    assert sched.get_last_lr()[0] == pytest.approx(0.0)
