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


def write_part(path, name, ranks, dataset_hash):
    """A scored part as `eval_parts.py score` writes it: the model's per-user test ranks (U,)."""
    import pickle

    from slmrec.eval.evaluator import EvalResult
    from slmrec.eval.metrics import compute_metrics

    res = EvalResult(metrics=compute_metrics(ranks), ranks=ranks, sampled_metrics=None, sampled_ranks=None,
                     n_users=len(ranks), users_per_s=1.0, latency_ms=1.0, batch_size=8, protocol={})
    path.write_bytes(pickle.dumps({"name": name, "model_dir": "-", "split": "test", "dataset_hash": dataset_hash,
                                   "result": res}))
    return str(path)


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


def test_table_compares_the_pairs_asked_for_with_paired_intervals(tmp_path):
    """`table --compare a-b`: a − b per user, paired; a model that always ranks the target 1st against one that
    ranks it 11th differs by exactly 1 in NDCG@10 and HR@10 for every user (so the whole interval is 1)."""
    import json

    from snapshots import write_snapshot
    from slmrec.config import SequenceConfig
    from slmrec.data.sequences import build_splits, load_splits

    rows = [(f"u{u}", f"i{(u + k) % 9}", k) for u in range(12) for k in range(6)]
    build_splits(write_snapshot(tmp_path / "snap", rows), SequenceConfig(k_core=0, out_dir=str(tmp_path / "splits")))
    splits = load_splits(tmp_path / "splits")
    n = len(splits.test)
    parts = [write_part(tmp_path / f"{name}.pt", name, np.full(n, rank), splits.dataset_hash)
             for name, rank in (("first", 1), ("eleventh", 11), ("third", 3))]
    (tmp_path / "params.yaml").write_text("eval: {bootstrap: 50}\n")
    common = ["table", "--params", str(tmp_path / "params.yaml"), "--splits", str(tmp_path / "splits"), "--parts",
              *parts, "--out", str(tmp_path / "m.json"), "--table", str(tmp_path / "t.md")]
    eval_parts().main([*common, "--compare", "first-eleventh"])
    comparisons = json.loads((tmp_path / "m.json").read_text())["comparisons"]
    assert list(comparisons) == ["first-eleventh"]
    assert comparisons["first-eleventh"]["ndcg@10"] == {"diff": 1.0, "lo": 1.0, "hi": 1.0}
    assert comparisons["first-eleventh"]["hr@10"] == {"diff": 1.0, "lo": 1.0, "hi": 1.0}
    assert "| first − eleventh | +1.0000 [+1.0000, +1.0000] *" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit, match="unknown models"):
        eval_parts().main([*common, "--compare", "first-fourth"])


def test_buckets_group_users_by_their_targets_training_count(tmp_path, capsys):
    """`buckets`: users grouped by how often their test target occurs in the training sequences; a model that
    ranks the popular targets 1st and the rare ones 11th shows NDCG@10 1 in the top group, 0 in the bottom one."""
    from snapshots import write_snapshot
    from slmrec.config import SequenceConfig
    from slmrec.data.sequences import build_splits, load_splits

    # users 0-5 end on h, which 6 training sequences hold; users 6-11 end on r, which 2 hold
    seqs = [["x1", "x2", "x3", "r" if u < 2 else "x4", "v", "h"] for u in range(6)]
    seqs += [["y1", "y2", "h", "y3", "w", "r"] for _ in range(6)]
    rows = [(f"u{u}", item, k) for u, seq in enumerate(seqs) for k, item in enumerate(seq)]
    build_splits(write_snapshot(tmp_path / "snap", rows), SequenceConfig(k_core=0, out_dir=str(tmp_path / "splits")))
    splits = load_splits(tmp_path / "splits")
    counts = np.bincount([i for seq in splits.train for i in seq], minlength=splits.n_items + 1)
    popular = counts[[t for _, t in splits.test]] == 6  # (U,)
    assert popular.sum() == 6 and sorted(set(counts[[t for _, t in splits.test]])) == [2, 6]
    parts = [write_part(tmp_path / f"{name}.pt", name, ranks, splits.dataset_hash)
             for name, ranks in (("popfirst", np.where(popular, 1, 11)), ("third", np.full(len(popular), 3)))]
    (tmp_path / "params.yaml").write_text("eval: {bootstrap: 50}\n")
    eval_parts().main(["buckets", "--params", str(tmp_path / "params.yaml"), "--splits", str(tmp_path / "splits"),
                       "--parts", *parts, "--compare", "popfirst-third", "--groups", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    third = 1 / np.log2(4)  # NDCG@10 of rank 3
    assert rows == [f"| 2–2 | 6 | 0.0000 | {third:.4f} | {-third:+.4f} [{-third:+.4f}, {-third:+.4f}] * |",
                    f"| 6–6 | 6 | 1.0000 | {third:.4f} | {1 - third:+.4f} [{1 - third:+.4f}, {1 - third:+.4f}] * |"]


def test_seeds_average_each_users_metric_over_a_models_seeds(tmp_path, capsys):
    """`seeds`: a model's parts (its seeds) averaged per user, then a − b bootstrapped over users. Seeds that rank
    every target 1st and 2nd average to (1 + 1/log2 3) / 2 in NDCG@10; against a model ranking it 11th (0) the
    difference is that value for every user, so the interval is that point; --resamples names its count."""
    parts = {name: write_part(tmp_path / f"{name}.pt", name, np.full(10, rank), "h")
             for name, rank in (("a1", 1), ("a2", 2), ("b", 11))}
    (tmp_path / "params.yaml").write_text("eval: {bootstrap: 50}\n")
    eval_parts().main(["seeds", "--params", str(tmp_path / "params.yaml"), "--resamples", "7",
                       "--pair", f"a={parts['a1']},{parts['a2']}:b={parts['b']}"])
    out = capsys.readouterr().out
    mean = (1 + 1 / np.log2(3)) / 2
    assert f"| a − b | {mean:.4f} | 0.0000 | {mean:+.4f} [{mean:+.4f}, {mean:+.4f}] * |" in out
    assert "7 resamples" in out
    with pytest.raises(SystemExit, match="--resamples must be at least 1"):
        eval_parts().main(["seeds", "--params", str(tmp_path / "params.yaml"), "--resamples", "0",
                           "--pair", f"a={parts['a1']}:b={parts['b']}"])
