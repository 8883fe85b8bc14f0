import random

import pytest
import torch
import torch.nn.functional as F

from slmrec.config import EvalConfig, SASRecConfig, TrainConfig
from slmrec.eval.evaluator import evaluate
from slmrec.models.sasrec import SASRec, attention_mask, ce_loss
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.train.loop import fit

torch.set_num_threads(2)


def tiny(n_items=20, **kw) -> SASRec:
    torch.manual_seed(0)
    cfg = dict(hidden=16, layers=2, heads=2, dropout=0.0, max_len=8, inner_size=32)
    return SASRec(n_items, SASRecConfig(**(cfg | kw)))


def batch_of(rows, max_len=8):
    ex = make_eval_examples([(r[:-1], r[-1]) for r in rows], max_len)
    return ex.batch(torch.arange(len(ex)))


def cyclic_splits(n_items=50, n_users=200, seed=0):
    """The planted pattern: every user walks i -> i+1 (mod n_items) from a random start."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n_users):
        start, length = rng.randrange(n_items), rng.randrange(6, 25)
        seqs.append([(start + j) % n_items + 1 for j in range(length)])
    return [s[:-2] for s in seqs], [(s[:-2], s[-2]) for s in seqs], [(s[:-1], s[-1]) for s in seqs]


def test_learns_planted_pattern(tmp_path):
    train, valid, test = cyclic_splits()
    max_len = 20
    model = tiny(n_items=50, hidden=32, layers=1, heads=1, max_len=max_len)
    cfg = TrainConfig(epochs=5, batch_size=32, lr=5e-3, patience=5)
    result = fit(
        model, make_train_examples(train, max_len), make_eval_examples(valid, max_len), cfg, tmp_path, log=lambda s: None
    )
    losses = [row["train/loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    res = evaluate(model, make_eval_examples(test, max_len), EvalConfig(sampled_negatives=0))
    assert res.metrics["hr@10"] >= 0.9


def test_bce_loss_trains(tmp_path):
    train, valid, _ = cyclic_splits(n_items=30, n_users=60)
    model = tiny(n_items=30, loss="bce", max_len=10)
    result = fit(
        model,
        make_train_examples(train, 10),
        make_eval_examples(valid, 10),
        TrainConfig(epochs=3, batch_size=16, lr=5e-3),
        tmp_path,
        log=lambda s: None,
    )
    losses = [row["train/bce"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_padding_never_gives_nan():
    model = tiny()
    model.train()
    batch = batch_of([[3, 4, 5, 6], [7, 8]])
    batch["input_ids"][1] = 0  # an all-padding row (a cold user)
    states = model(batch)
    assert torch.isfinite(states).all()
    out = model.calculate_loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    scores = model.full_sort_predict(batch)
    assert torch.isfinite(scores[:, 1:]).all()


def test_left_padding_and_causality():
    model = tiny().eval()
    seq = torch.tensor([[3, 4, 5, 6]])
    padded = torch.tensor([[0, 0, 0, 0, 3, 4, 5, 6]])
    with torch.no_grad():
        short = model({"input_ids": seq})[:, -1]
        long = model({"input_ids": padded})[:, -1]
        # the amount of left padding does not change the user state
        assert torch.allclose(short, long, atol=1e-5)
        # a later item does not change earlier states (causal attention)
        a = model({"input_ids": torch.tensor([[0, 3, 4, 5, 6]])})
        b = model({"input_ids": torch.tensor([[0, 3, 4, 5, 9]])})
        assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
        assert not torch.allclose(a[:, -1], b[:, -1], atol=1e-4)


def test_attention_mask():
    allowed = attention_mask(torch.tensor([[0, 0, 5, 6]]))[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool
    )  # padding sees only itself; items see earlier items and themselves
    assert torch.equal(allowed, expected)


def test_ce_loss_by_hand():
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # padding + 3 items
    states = torch.tensor([[2.0, 1.0]])
    # logits of items 1..3: 2, 1, 3 (the padding column is not a candidate); target 1
    expected = -(2.0 - torch.logsumexp(torch.tensor([2.0, 1.0, 3.0]), 0))
    assert ce_loss(states, torch.tensor([1]), table).item() == pytest.approx(expected.item(), rel=1e-6)
    assert ce_loss(states, torch.tensor([1]), table).item() != pytest.approx(
        F.cross_entropy(states @ table.T, torch.tensor([1])).item()
    )  # a loss over 4 columns (with padding) would differ


def test_predictions_and_item_table():
    model = tiny().eval()
    batch = batch_of([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        items = torch.tensor([[1, 7, 20], [2, 2, 5]])
        assert full.shape == (2, 21)
        assert torch.isneginf(full[:, 0]).all()
        assert torch.allclose(model.predict(batch, items), full.gather(1, items), atol=1e-5)
    table = model.item_embeddings()
    assert table.shape == (21, 16) and not table.requires_grad
    assert torch.equal(table[0], torch.zeros(16))


def test_config_round_trip_and_errors():
    model = tiny()
    clone = SASRec.from_config_dict(model.config_dict())
    assert clone.cfg == model.cfg and clone.n_items == model.n_items
    clone.load_trainable_state_dict(model.trainable_state_dict())
    with torch.no_grad():
        batch = batch_of([[1, 2, 3]])
        assert torch.equal(clone.eval().full_sort_predict(batch), model.eval().full_sort_predict(batch))
    with pytest.raises(ValueError, match="unknown loss"):
        tiny(loss="bpr")
    with pytest.raises(ValueError, match="divisible"):
        tiny(hidden=10, heads=3)
    with pytest.raises(ValueError, match="max_len"):
        model({"input_ids": torch.ones(1, 9, dtype=torch.long)})
