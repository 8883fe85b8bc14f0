import math

import numpy as np
import pytest
import torch

from slmrec.eval.metrics import (
    compute_metrics,
    full_ranks,
    get_metric,
    metric_keys,
    paired_bootstrap,
    per_user_metric,
    sampled_ranks,
)

NEG_INF = float("-inf")


def test_full_ranks_hand_ranked():
    # items 1..5; column 0 is padding (and must not count even when its score is high)
    scores = torch.tensor(
        [
            [NEG_INF, 0.9, 0.1, 0.5, 0.7, 0.3],  # target 3 (0.5): beaten by items 1 (0.9), 4 (0.7) -> rank 3
            [NEG_INF, 0.9, 0.1, 0.5, 0.7, 0.3],  # target 1 (0.9): best -> rank 1
            [100.0, 0.2, 0.2, 0.2, 0.1, 0.0],  # target 2 ties items 1 and 3 -> pessimistic rank 3
            [NEG_INF, 0.0, 0.0, 0.0, 0.0, 0.0],  # constant scores: the target is ranked last (5)
        ]
    )
    targets = torch.tensor([3, 1, 2, 4])
    assert full_ranks(scores, targets).tolist() == [3, 1, 3, 5]


def test_full_ranks_exclude_never_drops_the_target():
    scores = torch.tensor([[NEG_INF, 0.9, 0.1, 0.5, 0.7, 0.3]])
    exclude = torch.zeros(1, 6, dtype=torch.bool)
    exclude[0, [1, 3]] = True  # item 1 (beats the target) is excluded; the target 3 itself too
    assert full_ranks(scores, torch.tensor([3]), exclude).tolist() == [2]  # only item 4 beats it now


@pytest.mark.parametrize(
    "scores, targets",
    [
        (torch.zeros(2, 6), torch.tensor([0, 1])),  # target 0 is padding
        (torch.zeros(2, 6), torch.tensor([1, 6])),  # out of range
        (torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([2])),
        (torch.zeros(6), torch.tensor([1])),
    ],
)
def test_full_ranks_rejects_bad_input(scores, targets):
    with pytest.raises(ValueError):
        full_ranks(scores, targets)


def test_compute_metrics_by_hand():
    ranks = np.array([1, 3, 11])
    m = compute_metrics(ranks, ks=(1, 5, 10, 20))
    assert sorted(m) == sorted(["hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"])
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(4)) / 3)  # rank 3 -> 1/log2(4) = 0.5
    assert m["ndcg@10"] == pytest.approx((1.0 + 0.5) / 3)
    assert m["ndcg@20"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(12)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


def test_metric_registry():
    assert get_metric("ndcg@10").key == "ndcg@10"
    assert get_metric("mrr").key == "mrr"
    assert metric_keys((1, 10)) == ["hr@1", "hr@10", "ndcg@10", "mrr"]
    assert per_user_metric(torch.tensor([2, 4]), "hr@3").tolist() == [1.0, 0.0]
    for bad in ("ndcg", "mrr@5", "recall@10", "hr@x"):
        with pytest.raises(ValueError):
            get_metric(bad)
    with pytest.raises(ValueError):
        compute_metrics(np.array([0, 1]))  # ranks are 1-based


def test_sampled_ranks_seeded_and_bounded():
    torch.manual_seed(0)
    scores = torch.randn(64, 201)
    targets = torch.randint(1, 201, (64,))
    a = sampled_ranks(scores, targets, n_neg=20, seed=7)
    b = sampled_ranks(scores, targets, n_neg=20, seed=7)
    c = sampled_ranks(scores, targets, n_neg=20, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a >= 1) & (a <= 21)).all()
    assert (a <= full_ranks(scores, targets)).all()  # a subset of the candidates can only rank it higher
    with pytest.raises(ValueError):
        sampled_ranks(scores, targets, n_neg=20)  # unseeded sampling is refused


def test_sampled_ranks_with_every_item_equals_full_ranking():
    torch.manual_seed(1)
    scores = torch.randn(16, 31)
    targets = torch.randint(1, 31, (16,))
    assert torch.equal(sampled_ranks(scores, targets, n_neg=999, seed=0), full_ranks(scores, targets))


def test_sampled_negatives_are_uniform_over_other_items():
    # items 1..101 scored by id; target 51: 50 items score higher, 50 lower. With 10 uniform
    # negatives from the 100 others, the expected number of higher ones is 10 * 50/100 = 5.
    U = 4000
    scores = torch.arange(102, dtype=torch.float).repeat(U, 1)
    targets = torch.full((U,), 51)
    ranks = sampled_ranks(scores, targets, n_neg=10, seed=3)
    assert (ranks - 1).float().mean().item() == pytest.approx(5.0, abs=0.1)  # sd of the mean ~0.024


def test_sampled_ranks_skip_history_items():
    # items 1..5, history items 4 and 5 score highest; excluded from sampling, the target (3) is first
    scores = torch.tensor([[NEG_INF, 0.1, 0.2, 0.5, 0.9, 0.8]])
    history = torch.tensor([[0, 4, 5]])
    ranks = sampled_ranks(scores, torch.tensor([3]), n_neg=4, seed=0, history=history)
    assert ranks.tolist() == [1]
    assert sampled_ranks(scores, torch.tensor([3]), n_neg=4, seed=0).tolist() == [3]


def test_paired_bootstrap_covers_the_true_difference():
    # model a hits (hr@10) with probability 0.6, model b with 0.5: true difference 0.1
    rng = np.random.default_rng(0)
    U = 3000
    ranks_a = np.where(rng.random(U) < 0.6, 1, 50)
    ranks_b = np.where(rng.random(U) < 0.5, 1, 50)
    ci = paired_bootstrap(ranks_a, ranks_b, "hr@10", n_boot=1000, seed=11)
    assert ci["lo"] < 0.1 < ci["hi"]
    assert ci["lo"] < ci["diff"] < ci["hi"]
    assert ci["diff"] == pytest.approx(per_user_metric(ranks_a, "hr@10").mean() - per_user_metric(ranks_b, "hr@10").mean())
    # width close to the normal approximation 2 * 1.96 * sd(d) / sqrt(U)
    d = per_user_metric(ranks_a, "hr@10") - per_user_metric(ranks_b, "hr@10")
    expected_width = 2 * 1.96 * d.std() / math.sqrt(U)
    assert ci["hi"] - ci["lo"] == pytest.approx(expected_width, rel=0.15)
    assert paired_bootstrap(ranks_a, ranks_b, "hr@10", n_boot=1000, seed=11) == ci  # deterministic
    assert paired_bootstrap(ranks_a, ranks_b, "hr@10", n_boot=1000, seed=12) != ci


def test_paired_bootstrap_identical_models_and_errors():
    ranks = np.array([1, 2, 5, 30, 7])
    assert paired_bootstrap(ranks, ranks, "ndcg@10", n_boot=200, seed=0) == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap(ranks, ranks[:3], "mrr")
