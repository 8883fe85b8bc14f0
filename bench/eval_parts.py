"""Evaluate models one process each, then one table with paired-bootstrap CIs (big datasets on few cores).

`slmrec evaluate` scores every model in one process, in the split's user order. On Amazon Beauty an LLM
model's pass over 22,363 users then runs most batches at the full L = 30 item slots, because a random
batch of 64 users almost always holds one long history. Here each model is scored in its own process
(run them side by side), with the users ordered by history length: `llm.trim_slots` then runs each batch
only as wide as its own users (median history 3 items), and the ranks are put back in user order, so the
full-ranking metrics and their CIs are exactly what `slmrec evaluate` computes up to float rounding.
(The sampled-negative columns are drawn batch after batch, so they are a different, equally valid draw.)

    python bench/eval_parts.py score --params P --splits S --model teacher=DIR --split test --out runs/x/teacher.pt
    python bench/eval_parts.py table --params P --splits S --parts runs/x/sasrec.pt runs/x/teacher.pt ... \
        --out runs/x/metrics.json --table runs/x/results.md
    python bench/eval_parts.py seeds --params P --pair student=s42.pt,s43.pt:student_nokd=n42.pt,n43.pt
    python bench/eval_parts.py buckets --params P --splits S --parts a.pt b.pt --compare a-b   # by target popularity
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slmrec.config import load_params
from slmrec.data.examples import Examples, lengths, make_eval_examples
from slmrec.data.sequences import load_splits
from slmrec.eval.evaluator import evaluate, protocol_text, results_table
from slmrec.eval.metrics import bootstrap_mean_ci, per_user_metric
from slmrec.lineage import atomic_write_text
from slmrec.models.checkpoint import load_model
from slmrec.models.llmrec import LLMRec
from slmrec.stages.models import COMPARISONS, MODEL_FILE, _comparisons


def permuted(examples: Examples, order: torch.Tensor) -> Examples:
    history = examples.history[order] if examples.history is not None else None
    return Examples(examples.input_ids[order], examples.targets[order], examples.user[order], history)


def evaluate_by_length(model, examples: Examples, cfg, batch_size: int):
    """`evaluate` with the users batched shortest history first; ranks returned in `examples`' order."""
    order = torch.argsort(lengths(examples), stable=True)  # (N,) shortest history first
    res = evaluate(model, permuted(examples, order), cfg, batch_size=batch_size)
    back = torch.argsort(order).numpy()  # ranks in the split's user order again
    res.ranks = res.ranks[back]
    if res.sampled_ranks is not None:
        res.sampled_ranks = res.sampled_ranks[back]
    return res


def name_and_value(spec: str, flag: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not (name and sep and value):
        raise SystemExit(f"eval_parts: {flag} expects NAME=VALUE, got {spec!r}")
    return name, value


def score(args: argparse.Namespace) -> None:
    params, splits = load_params(args.params), load_splits(args.splits)
    name, model_dir = name_and_value(args.model, "--model")
    model = load_model(Path(model_dir) / MODEL_FILE)
    if isinstance(model, LLMRec):
        model.merge_for_inference()
    pairs = splits.test if args.split == "test" else splits.valid
    examples = make_eval_examples(pairs, model.cfg.max_len)
    cfg = params.eval if args.split == "test" else dataclasses.replace(params.eval, sampled_negatives=0)
    t0 = time.perf_counter()
    res = evaluate_by_length(model, examples, cfg, batch_size=params.train_llm.eval_batch_size)
    print(f"{name} ({args.split}): ndcg@10 {res.metrics['ndcg@10']:.4f} hr@10 {res.metrics['hr@10']:.4f} "
          f"mrr {res.metrics['mrr']:.4f}, {res.n_users} users, {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(pickle.dumps({"name": name, "model_dir": model_dir, "split": args.split, "dataset_hash": splits.dataset_hash, "result": res}))
    os.replace(tmp, out)  # atomic: a killed run leaves no half-written part


def load_parts(paths: list[str], cmd: str) -> list[dict]:
    """Parts written by `score`; all of one split of one dataset, else a clear error."""
    parts = [pickle.loads(Path(p).read_bytes()) for p in paths]
    if len({(p["split"], p.get("dataset_hash")) for p in parts}) != 1:
        raise SystemExit(f"eval_parts {cmd}: every part must come from the same split of the same dataset "
                         f"(got {sorted({(p['split'], str(p.get('dataset_hash'))[:12]) for p in parts})})")
    return parts


def table(args: argparse.Namespace) -> None:
    params, splits = load_params(args.params), load_splits(args.splits)
    parts = load_parts(args.parts, "table")
    results = {p["name"]: p["result"] for p in parts}
    if args.compare:  # A-B: a − b with its paired CI, for models named other than the pipeline's
        pairs = [tuple(c.split("-", 1)) for c in args.compare]
        unknown = sorted({n for pair in pairs for n in pair} - set(results))
        if unknown or any(len(pair) != 2 for pair in pairs):
            raise SystemExit(f"eval_parts table: --compare names unknown models {unknown} (have {sorted(results)})")
    else:
        pairs = [(a, b) for a, b in COMPARISONS if a in results and b in results]
    md = results_table(results, comparisons=pairs, n_boot=params.eval.bootstrap, seed=params.eval.seed,
                       dataset_hash=splits.dataset_hash)
    first = parts[0]["result"]
    summary = {
        "split": parts[0]["split"],
        "protocol": {**first.protocol, "text": protocol_text(params.eval)},
        "n_users": first.n_users,
        "dataset_hash": splits.dataset_hash,
        "models": {p["name"]: {"dir": p["model_dir"], **{k: round(v, 6) for k, v in p["result"].metrics.items()},
                               "users_per_s": round(p["result"].users_per_s, 2)} for p in parts},
        "comparisons": _comparisons(results, pairs, params),
    }
    atomic_write_text(args.out, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(args.table, md)
    print(md)


def seeds(args: argparse.Namespace) -> None:
    """Seed-averaged comparison: each user's metric averaged over a model's seeds (parts), then the paired
    bootstrap over users of the difference of those means (the same resampling as paired_bootstrap)."""
    params = load_params(args.params)

    specs = []
    for pair in args.pair:
        if pair.count(":") != 1:
            raise SystemExit(f"eval_parts: --pair expects A=parts:B=parts, got {pair!r}")
        specs.append([name_and_value(x, "--pair") for x in pair.split(":")])
    paths = sorted({p for pair in specs for _, ps in pair for p in ps.split(",")})
    parts = dict(zip(paths, load_parts(paths, "seeds")))  # each part read once, all of one split

    def mean_over_seeds(paths: str) -> np.ndarray:
        per_seed = [per_user_metric(parts[p]["result"].ranks, args.metric) for p in paths.split(",")]
        return np.mean(per_seed, axis=0)  # (U,)

    n_boot = params.eval.bootstrap if args.resamples is None else args.resamples
    if n_boot < 1:
        raise SystemExit(f"eval_parts: --resamples must be at least 1, got {n_boot}")
    rows = []
    for (a, pa), (b, pb) in specs:
        va, vb = mean_over_seeds(pa), mean_over_seeds(pb)
        d = va - vb  # (U,)
        ci = bootstrap_mean_ci(d, n_boot, params.eval.seed)
        lo, hi = ci["lo"], ci["hi"]
        star = " *" if lo > 0 or hi < 0 else ""
        rows.append(f"| {a} − {b} | {va.mean():.4f} | {vb.mean():.4f} | {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]{star} |")
    first = next(iter(parts.values()))
    print(f"Protocol: {protocol_text(params.eval)}; split {first['split']}; {first['result'].n_users} users; dataset "
          f"hash {str(first.get('dataset_hash'))[:12]}; each user's {args.metric} averaged over a model's seeds, "
          f"then paired bootstrap over users, {n_boot} resamples, seed {params.eval.seed}; "
          "* = CI excludes 0.\n")
    print(f"| comparison ({args.metric}, per-user mean over seeds) | a | b | a − b, 95% CI |\n|---|---|---|---|")
    print("\n".join(rows))


def buckets(args: argparse.Namespace) -> None:
    """Where a difference comes from: the test users grouped by how often their target item occurs in the
    training sequences (quantile groups of users), each model's metric and each A − B with its paired CI."""
    params, splits = load_params(args.params), load_splits(args.splits)
    parts = {p["name"]: p for p in load_parts(args.parts, "buckets")}
    counts = np.bincount([i for seq in splits.train for i in seq], minlength=splits.n_items + 1)  # (n_items + 1,)
    split = next(iter(parts.values()))["split"]
    targets = np.array([t for _, t in (splits.test if split == "test" else splits.valid)])  # (U,)
    freq = counts[targets]  # (U,) training occurrences of each user's target
    edges = np.unique(np.quantile(freq, np.linspace(0, 1, args.groups + 1)))
    group = np.clip(np.searchsorted(edges, freq, side="right") - 1, 0, len(edges) - 2)  # (U,)
    per_user = {n: per_user_metric(p["result"].ranks, args.metric) for n, p in parts.items()}
    pairs = [tuple(c.split("-", 1)) for c in args.compare]
    head = ["target's training count", "users", *parts, *(f"{a} − {b}" for a, b in pairs)]
    print(f"Protocol: {protocol_text(params.eval)}; split {split}; {len(freq)} users; {args.metric} per user; "
          f"users grouped by their target item's occurrences in the training sequences (quantile groups); "
          f"paired bootstrap over the group's users, {params.eval.bootstrap} resamples, seed {params.eval.seed}; "
          "* = CI excludes 0.\n")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for g in range(len(edges) - 1):
        users = group == g
        lo, hi = int(freq[users].min()), int(freq[users].max())
        cells = [f"{lo}–{hi}", str(int(users.sum()))] + [f"{per_user[n][users].mean():.4f}" for n in parts]
        for a, b in pairs:
            d = per_user[a][users] - per_user[b][users]
            ci = bootstrap_mean_ci(d, params.eval.bootstrap, params.eval.seed)
            cells.append(f"{ci['diff']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]" + (" *" if ci["lo"] > 0 or ci["hi"] < 0 else ""))
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score")
    s.add_argument("--params", required=True)
    s.add_argument("--splits", required=True)
    s.add_argument("--model", required=True, help="NAME=DIR")
    s.add_argument("--split", choices=["test", "valid"], default="test")
    s.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("--params", required=True)
    t.add_argument("--splits", required=True)
    t.add_argument("--parts", nargs="+", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--table", required=True)
    t.add_argument("--compare", nargs="+", help="A-B pairs (a − b, paired CI); default: the pipeline's comparisons")
    d = sub.add_parser("seeds")
    d.add_argument("--params", required=True)
    d.add_argument("--metric", default="ndcg@10")
    d.add_argument("--pair", action="append", required=True,
                   help="A=part,part:B=part,part (the parts of one model = its seeds, same users)")
    d.add_argument("--resamples", type=int, default=None,
                   help="bootstrap resamples (default: eval.bootstrap of --params); more steadies a CI end near 0")
    b = sub.add_parser("buckets")
    b.add_argument("--params", required=True)
    b.add_argument("--splits", required=True)
    b.add_argument("--parts", nargs="+", required=True)
    b.add_argument("--compare", nargs="+", default=[], help="A-B pairs (a − b, paired CI per group)")
    b.add_argument("--metric", default="ndcg@10")
    b.add_argument("--groups", type=int, default=4)
    args = ap.parse_args(argv)
    {"score": score, "table": table, "seeds": seeds, "buckets": buckets}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
