"""bench/eval_parts.py batches users by history length and puts the ranks back: same ranks as `evaluate`."""

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from slmrec.config import EvalConfig, LLMRecConfig
from slmrec.data.examples import lengths, make_eval_examples
from slmrec.eval.evaluator import evaluate
from slmrec.models.llmrec import LLMRec

torch.set_num_threads(1)
N_ITEMS = 30


def eval_parts():
    path = Path(__file__).resolve().parents[2] / "bench" / "eval_parts.py"
    spec = importlib.util.spec_from_file_location("eval_parts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_length_ordered_evaluation_gives_the_ranks_of_split_order():
    rng = random.Random(0)
    pairs = [([rng.randint(1, N_ITEMS) for _ in range(rng.randint(1, 12))], rng.randint(1, N_ITEMS)) for _ in range(40)]
    examples = make_eval_examples(pairs, max_len=6)  # histories up to 12 items: longer than the window
    n = lengths(examples)
    assert not torch.equal(torch.argsort(n, stable=True), torch.arange(len(n)))  # the order really changes
    torch.manual_seed(0)
    cfg = LLMRecConfig(max_len=6, instruction="Next item?", response="=>", objective="all")
    model = LLMRec.build(cfg, "teacher", torch.randn(N_ITEMS + 1, 16, generator=torch.Generator().manual_seed(0)))
    ecfg = EvalConfig(sampled_negatives=0, exclude_history=True)

    plain = evaluate(model, examples, ecfg, batch_size=8)
    by_length = eval_parts().evaluate_by_length(model, examples, ecfg, batch_size=8)

    assert np.array_equal(plain.ranks, by_length.ranks)
    assert by_length.metrics == pytest.approx(plain.metrics, abs=1e-12)  # means over a permuted order: rounding
