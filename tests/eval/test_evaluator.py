import math

import numpy as np
import pytest
import torch
from torch import nn

from slmrec.config import EvalConfig
from slmrec.eval.evaluator import evaluate, results_table
from slmrec.models.base import LossOutput, Recommender, mask_padding_column
from slmrec.data.examples import make_eval_examples

torch.set_num_threads(2)


class FixedScores(Recommender):
    """Scores item i as weight[i] for every user, except that the user's last item gets `boost`."""

    def __init__(self, n_items: int, boost: float = 0.0):
        super().__init__()
        self.n_items, self.boost = n_items, boost
        self.weight = nn.Parameter(torch.arange(n_items + 1, dtype=torch.float))  # higher id = higher score

    def forward(self, batch):
        return batch["input_ids"][:, -1]

    def calculate_loss(self, batch):
        loss = -self.weight[batch["target"]].mean()
        return LossOutput(loss, {"neg_score": loss.item()})

    def predict(self, batch, items):
        return self.full_sort_predict(batch).gather(1, items)

    def full_sort_predict(self, batch):
        scores = self.weight.expand(len(batch["input_ids"]), -1).clone()  # (B, N+1)
        scores.scatter_add_(1, self.forward(batch)[:, None], torch.full((len(scores), 1), self.boost))
        return mask_padding_column(scores)

    def config_dict(self):
        return {"n_items": self.n_items, "boost": self.boost}

    @classmethod
    def from_config_dict(cls, config):
        return cls(**config)


def test_evaluate_full_ranking_by_hand():
    model = FixedScores(n_items=10)
    # target 10 -> rank 1, 8 -> rank 3, 1 -> rank 10; history doesn't matter for this model
    examples = make_eval_examples([([1, 2], 10), ([3], 8), ([], 1)], max_len=4)
    model.train()
    res = evaluate(model, examples, EvalConfig(ks=[1, 5, 10], sampled_negatives=0), batch_size=2)
    assert model.training  # the mode is restored
    assert res.ranks.tolist() == [1, 3, 10]
    assert res.metrics["hr@1"] == pytest.approx(1 / 3)
    assert res.metrics["hr@5"] == pytest.approx(2 / 3)
    assert res.metrics["ndcg@5"] == pytest.approx((1 + 0.5) / 3)
    assert res.metrics["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 3)
    assert res.metrics["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 10) / 3)
    assert res.sampled_metrics is None and res.sampled_ranks is None
    assert res.n_users == 3 and res.users_per_s > 0 and res.latency_ms > 0


def test_evaluate_excludes_the_whole_history_not_the_window():
    model = FixedScores(n_items=10)
    # 9 and 10 beat the target 8 unless excluded; they are older than the model's 2-item window
    examples = make_eval_examples([([9, 10, 1, 2], 8), ([9], 10)], max_len=2)
    assert examples.input_ids.tolist()[0] == [1, 2] and examples.history.shape == (2, 4)
    kept = evaluate(model, examples, EvalConfig(sampled_negatives=0, exclude_history=False), batch_size=4)
    excl = evaluate(model, examples, EvalConfig(sampled_negatives=0), batch_size=1)  # the default protocol
    assert kept.ranks.tolist() == [3, 1]
    assert excl.ranks.tolist() == [1, 1]
    assert excl.protocol["exclude_history"] is True
    assert "history excluded" in excl.protocol["full"] and "history not excluded" in kept.protocol["full"]
    # sampled negatives never come from the history either: 9 and 10 cannot outrank the target
    sampled = evaluate(model, examples, EvalConfig(sampled_negatives=9), batch_size=4)
    assert sampled.sampled_ranks.tolist()[0] == 1


def test_evaluate_refuses_to_exclude_without_histories():
    from slmrec.data.examples import Examples

    bare = make_eval_examples([([1, 2], 8)], max_len=2)
    bare = Examples(bare.input_ids, bare.targets, bare.user)  # built by hand, no history
    with pytest.raises(ValueError, match="no 'history'"):
        evaluate(FixedScores(n_items=10), bare, EvalConfig(sampled_negatives=0))


def test_evaluate_sampled_is_labelled_and_seeded():
    model = FixedScores(n_items=300)
    rng = np.random.default_rng(0)
    pairs = [([int(rng.integers(1, 301))], int(rng.integers(1, 301))) for _ in range(50)]
    examples = make_eval_examples(pairs, max_len=3)
    cfg = EvalConfig(sampled_negatives=99, seed=5)
    a = evaluate(model, examples, cfg, batch_size=16)
    b = evaluate(model, examples, cfg, batch_size=16)
    assert np.array_equal(a.sampled_ranks, b.sampled_ranks)
    assert "sampled" in a.protocol["sampled"] and "99" in a.protocol["sampled"]
    assert (a.sampled_ranks <= a.ranks).all() and (a.sampled_ranks <= 100).all()
    assert a.sampled_metrics["hr@10"] >= a.metrics["hr@10"]


def test_evaluate_rejects_wrong_score_shape():
    class Broken(FixedScores):
        def full_sort_predict(self, batch):
            return super().full_sort_predict(batch)[:, 1:]  # forgot the padding column

    with pytest.raises(ValueError, match="full_sort_predict"):
        evaluate(Broken(5), make_eval_examples([([1], 2)], 2), EvalConfig(sampled_negatives=0))


def test_results_table_has_rows_and_intervals():
    examples = make_eval_examples([([i], t) for i, t in zip(range(1, 21), range(20, 0, -1))], max_len=2)
    cfg = EvalConfig(sampled_negatives=5)
    base = evaluate(FixedScores(20), examples, cfg)
    boosted = evaluate(FixedScores(20, boost=100.0), examples, cfg)  # recommends the last item: worse here
    table = results_table({"base": base, "boosted": boosted}, n_boot=200, seed=0, dataset_hash="abc123")
    assert "abc123" in table and "pessimistic" in table
    assert "| base |" in table and "| boosted |" in table
    assert "sampled hr@10" in table
    diff_line = next(line for line in table.splitlines() if line.startswith("| boosted − base"))
    expected = boosted.metrics["ndcg@10"] - base.metrics["ndcg@10"]
    assert f"{expected:+.4f}" in diff_line
    with pytest.raises(ValueError, match="unknown model"):
        results_table({"base": base}, comparisons=[("base", "nope")])
