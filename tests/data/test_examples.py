from collections import Counter

import pytest
import torch

from slmrec.data.examples import (
    bucket_order,
    epoch_order,
    iter_batch_rows,
    iter_batches,
    lengths,
    make_eval_examples,
    make_train_examples,
    num_batches,
)


def transitions(examples):
    """Multiset of (input item, next item) pairs over all real positions."""
    real = examples.targets != 0
    return Counter(zip(examples.input_ids[real].tolist(), examples.targets[real].tolist()))


def test_train_examples_windows_from_the_end():
    seqs = [[1, 2, 3, 4], [5], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [7, 8]]
    ex = make_train_examples(seqs, max_len=4)
    assert 1 not in ex.user.tolist()  # a single item has no transition: no example
    rows = ex.input_ids.tolist()
    targets = ex.targets.tolist()
    # user 2 has 9 transitions: windows of 4 from the end -> [1], [2..5], [6..9], oldest first
    assert rows == [[0, 1, 2, 3], [0, 0, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9], [0, 0, 0, 7]]
    assert targets == [[0, 2, 3, 4], [0, 0, 0, 2], [3, 4, 5, 6], [7, 8, 9, 10], [0, 0, 0, 8]]
    assert ex.user.tolist() == [0, 2, 2, 2, 3]
    # every transition exactly once
    expected = Counter((a, b) for s in seqs for a, b in zip(s[:-1], s[1:]))
    assert transitions(ex) == expected


def test_eval_examples_align_targets():
    ex = make_eval_examples([([1, 2, 3, 4, 5], 6), ([], 9), ([4], 2)], max_len=3)
    assert ex.input_ids.tolist() == [[3, 4, 5], [0, 0, 0], [0, 0, 4]]
    assert ex.targets.tolist() == [[4, 5, 6], [0, 0, 9], [0, 0, 2]]
    batch = ex.batch(torch.tensor([2, 0]))
    assert batch["target"].tolist() == [2, 6]
    assert batch["idx"].tolist() == [2, 0]


def test_bad_ids_and_lengths_are_errors():
    with pytest.raises(ValueError, match="user row 1"):
        make_train_examples([[1, 2], [3, 0, 4]], 5)
    with pytest.raises(ValueError, match="pair 0"):
        make_eval_examples([([1, 2], 0)], 5)
    with pytest.raises(ValueError, match="max_len"):
        make_train_examples([[1, 2]], 0)


def test_order_and_batches():
    ex = make_train_examples([[i, i + 1, i + 2] for i in range(1, 11)], max_len=3)
    a, b = epoch_order(len(ex), seed=1, epoch=0), epoch_order(len(ex), seed=1, epoch=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, epoch_order(len(ex), seed=1, epoch=1))
    assert sorted(a.tolist()) == list(range(len(ex)))
    batches = list(iter_batches(ex, 4, a))
    assert len(batches) == num_batches(10, 4) == 3
    assert torch.cat([b["idx"] for b in batches]).tolist() == a.tolist()
    assert [b["idx"].tolist() for b in iter_batches(ex, 4, a, start=2)] == [batches[2]["idx"].tolist()]
    assert ex.content_hash() == make_train_examples([[i, i + 1, i + 2] for i in range(1, 11)], 3).content_hash()


def test_windows_per_user_keeps_the_most_recent_windows():
    seq = list(range(1, 12))  # 10 transitions; max_len 4 -> windows [7..10], [3..6], [1..2] (from the end)
    ex = make_train_examples([seq, [5, 6]], max_len=4, windows_per_user=1)
    assert ex.user.tolist() == [0, 1]
    assert ex.input_ids[0].tolist() == [7, 8, 9, 10] and ex.targets[0].tolist() == [8, 9, 10, 11]
    assert ex.input_ids[1].tolist() == [0, 0, 0, 5] and ex.targets[1].tolist() == [0, 0, 0, 6]
    two = make_train_examples([seq], max_len=4, windows_per_user=2)
    assert two.input_ids.tolist() == [[3, 4, 5, 6], [7, 8, 9, 10]]  # oldest kept window first
    assert len(make_train_examples([seq], max_len=4)) == 3
    with pytest.raises(ValueError, match="windows_per_user"):
        make_train_examples([seq], max_len=4, windows_per_user=0)


def test_bucket_order_groups_similar_lengths_and_keeps_every_example_once():
    g = torch.Generator().manual_seed(0)
    seqs = [list(range(1, 2 + int(torch.randint(1, 30, (1,), generator=g)))) for _ in range(203)]
    ex = make_train_examples(seqs, 30, windows_per_user=1)
    n = len(ex)
    lens = lengths(ex)
    assert lens.tolist() == [min(len(s) - 1, 30) for s in seqs]  # transitions in the (single) window
    order = epoch_order(n, seed=3, epoch=1)
    bucketed = bucket_order(order, lens, batch_size=8, window=10, seed=3, epoch=1)
    assert sorted(bucketed.tolist()) == list(range(n))  # a permutation: each example once per epoch
    assert torch.equal(bucketed, bucket_order(order, lens, 8, 10, seed=3, epoch=1))  # resume: same order
    assert not torch.equal(bucketed, bucket_order(order, lens, 8, 10, seed=3, epoch=2))
    width = lambda o: sum(int(ex.batch(rows)["input_ids"].shape[1]) for rows in iter_batch_rows(o, 8))  # noqa: E731
    assert width(bucketed) < 0.8 * width(order)  # the lever's point: padded slots per epoch shrink
    rows = list(iter_batch_rows(bucketed, 8))
    assert len(rows[-1]) == n % 8 and all(len(r) == 8 for r in rows[:-1])  # the short batch stays last
    spread = lambda o: sum(int(lens[r].max() - lens[r].min()) for r in iter_batch_rows(o, 8))  # noqa: E731
    assert spread(bucketed) < 0.5 * spread(order)  # batches hold similar lengths
    with pytest.raises(ValueError, match="window"):
        bucket_order(order, lens, 8, 0, 3, 1)
