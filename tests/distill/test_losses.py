import math

import numpy as np
import pytest
import torch

from slmrec.distill.losses import block_layers, direction_loss, logit_kl, multi_supervision_loss, norm_loss


@pytest.mark.parametrize(
    "n_layers, blocks, expected",
    [(8, 4, [2, 4, 6, 8]), (4, 4, [1, 2, 3, 4]), (4, 2, [2, 4]), (2, 2, [1, 2]), (30, 3, [10, 20, 30]), (5, 1, [5])],
)
def test_block_layers(n_layers, blocks, expected):
    assert block_layers(n_layers, blocks) == expected


@pytest.mark.parametrize(
    "n_layers, blocks, message",
    [(6, 4, "do not split"), (2, 4, "at least 4 layers"), (8, 0, "blocks >= 1"), (0, 1, "n_layers >= 1")],
)
def test_block_layers_errors(n_layers, blocks, message):
    with pytest.raises(ValueError, match=message):
        block_layers(n_layers, blocks)


def test_direction_loss_hand_value():
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    s = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    # cos = 0 (orthogonal), 1 (same direction), -1 (opposite) -> 1 - cos = 1, 0, 2 -> mean 1
    assert direction_loss(t, s).item() == pytest.approx(1.0)
    # scale-free: only the direction counts
    assert direction_loss(t, 5 * t).item() == pytest.approx(0.0, abs=1e-6)


def test_norm_loss_hand_value():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # squared distances 5 and 3, divided by H = 3 -> 5/3, 1 -> mean 4/3
    assert norm_loss(t, s).item() == pytest.approx(4 / 3)


def _np_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def test_multi_supervision_loss_hand_value():
    a = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    b = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]])
    labels = np.array([2, 2])
    # head b, row 2: softmax of [0, 0, ln 2] = [1/4, 1/4, 1/2] -> -log(1/2)
    expected = (_np_ce(a, labels) + _np_ce(b, labels)) / 2
    got = multi_supervision_loss([torch.tensor(a), torch.tensor(b)], torch.tensor(labels))
    assert got.item() == pytest.approx(expected)
    assert _np_ce(b[1:], labels[1:]) == pytest.approx(math.log(2.0))


def test_multi_supervision_loss_needs_heads():
    with pytest.raises(ValueError, match="no heads"):
        multi_supervision_loss([], torch.tensor([1]))


def test_logit_kl_hand_value():
    s = np.array([[0.0, 1.0, 2.0], [0.5, 0.0, -1.0]])
    t = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    temp = 2.0

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_s, p_t = softmax(s / temp), softmax(t / temp)
    expected = float((p_t * np.log(p_t / p_s)).sum(1).mean() * temp**2)
    assert logit_kl(torch.tensor(s), torch.tensor(t), temp).item() == pytest.approx(expected)
    assert logit_kl(torch.tensor(t), torch.tensor(t), temp).item() == pytest.approx(0.0, abs=1e-7)


def test_logit_kl_drops_the_padding_column():
    s = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.0, -1.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    pad = torch.full((2, 1), float("-inf"))
    with_pad = logit_kl(torch.cat([pad, s], 1), torch.cat([pad, t], 1), 1.5)
    assert torch.isfinite(with_pad)
    assert with_pad.item() == pytest.approx(logit_kl(s, t, 1.5).item())
    s_pad = torch.cat([pad, s], 1).requires_grad_()
    logit_kl(s_pad, torch.cat([pad, t], 1), 1.5).backward()
    assert torch.isfinite(s_pad.grad).all()


def test_logit_kl_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        logit_kl(x, x, 0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        logit_kl(x, torch.zeros(2, 4), 1.0)
