"""Inference precision modes (issue 9): fp32 / bf16 / int8 x student / teacher / full 30-layer backbone, on CPU.

    .venv/bin/python bench/bench_inference.py --splits data/splits --models models --speed-users 128 --rounds 3

Accuracy: each trained model (models/<name>/model.pt, from `make demo`) in each mode ranks every test user
(full ranking over all items, the user's whole history excluded, leave-one-out test split, pessimistic
ties: slmrec.eval.evaluator.evaluate with params.yaml's eval section); NDCG@10 and HR@10, and the paired
bootstrap 95% CI (1000 resamples of users) of the NDCG@10 difference to the same model in fp32.

Speed: users/s of full_sort_predict (the evaluator's clock) on the first `--speed-users` test users, eval
batch `--batch-size`; every (model, mode) is built once and kept warm, and `--rounds` rounds visit them
in alternating order; the table gives the median per row and each row's speed-up over the full backbone
in fp32 as the median of within-round ratios (unit: users per second, i.e. time per user). The full
backbone is LLMRec over all the backbone's layers with untrained LoRA (what E4SRec-style models run): its
speed does not depend on its weights, and it has no accuracy column.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from slmrec.config import LLMRecConfig, from_dict, load_params
from slmrec.data.examples import make_eval_examples
from slmrec.data.sequences import load_splits
from slmrec.eval.evaluator import evaluate
from slmrec.eval.metrics import paired_bootstrap
from slmrec.models.backbones import load_backbone
from slmrec.models.checkpoint import load_model
from slmrec.models.inference import INFERENCE_MODES, prepare_for_inference
from slmrec.models.llmrec import LLMRec

REPO = Path(__file__).resolve().parents[1]
TRAINED = ("student", "teacher")


def full_backbone(student: LLMRec) -> LLMRec:
    """The student's configuration over every layer of its backbone (untrained LoRA; timing only)."""
    cfg = from_dict(LLMRecConfig, student.config_dict()["llm"])
    n_full = load_backbone(cfg, 1).full_layers  # SmolLM2-135M: 30
    torch.manual_seed(0)
    return LLMRec(cfg, n_full, student.item_table.clone())


def build(name: str, mode: str, models_dir: Path, first: str = "student") -> LLMRec:
    if name == "full backbone":
        model = full_backbone(load_model(models_dir / first / "model.pt"))
    else:
        model = load_model(models_dir / name / "model.pt")
    return prepare_for_inference(model.eval(), mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=Path, default=REPO / "data/splits")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--speed-users", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--trained", nargs="+", default=list(TRAINED),
                    help="model dirs under --models to measure (the first one's config builds the full backbone)")
    ap.add_argument("--modes", nargs="+", default=list(INFERENCE_MODES), choices=list(INFERENCE_MODES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    params = load_params(args.params)
    eval_cfg = dataclasses.replace(params.eval, sampled_negatives=0)
    splits = load_splits(args.splits)
    trained = tuple(args.trained)
    missing = [n for n in trained if not (args.models / n / "model.pt").is_file()]
    if missing or "full backbone" in trained:
        raise SystemExit(f"bench_inference: --trained {missing or ['full backbone']}: no model.pt under {args.models} "
                         "(each name is a model directory there; 'full backbone' is built, not loaded)")
    student_cfg = load_model(args.models / trained[0] / "model.pt").cfg
    test = make_eval_examples(splits.test, student_cfg.max_len)
    speed_set = make_eval_examples(splits.test[: args.speed_users], student_cfg.max_len)

    modes = ("fp32", *[m for m in args.modes if m != "fp32"])  # fp32 always: the reference of every Δ
    rows = [(name, mode) for name in (*trained, "full backbone") for mode in modes]
    models, accuracy = {}, {}
    for name, mode in rows:
        models[name, mode] = build(name, mode, args.models, trained[0])
        if name in trained:
            res = evaluate(models[name, mode], test, eval_cfg, batch_size=args.batch_size)
            accuracy[name, mode] = res
            print(f"  accuracy {name} {mode}: ndcg@10 {res.metrics['ndcg@10']:.4f}", flush=True)
    speed = {row: [] for row in rows}
    for k in range(args.rounds):
        for row in rows if k % 2 == 0 else rows[::-1]:
            res = evaluate(models[row], speed_set, eval_cfg, batch_size=args.batch_size)
            speed[row].append(res.users_per_s)
        print(f"  speed round {k + 1}/{args.rounds} done", flush=True)
    ref = speed["full backbone", "fp32"]
    load1 = Path("/proc/loadavg").read_text().split()[:3]

    lines = [
        f"Command: `.venv/bin/python bench/bench_inference.py --splits {args.splits} --models {args.models} "
        f"--speed-users {args.speed_users} --rounds {args.rounds} --batch-size {args.batch_size} "
        f"--trained {' '.join(trained)} --modes {' '.join(modes)}`; "
        f"{time.time() - t0:.0f} s; {args.threads} torch threads; load average at start {'/'.join(load0)}, "
        f"end {'/'.join(load1)}.",
        "",
        f"Accuracy: {len(test)} test users, {accuracy[trained[0], 'fp32'].protocol['full']}; CI = paired bootstrap "
        f"95% of the NDCG@10 difference to the same model in fp32. Speed: users/s of full_sort_predict on "
        f"{len(speed_set)} test users, batch {args.batch_size}, median of {args.rounds} interleaved rounds; "
        "speed-up = median of within-round ratios to the full backbone in fp32.",
        "",
        "| model | layers | mode | NDCG@10 | HR@10 | Δ NDCG@10 vs fp32 [95% CI] | users/s | per round | "
        "speed-up vs full fp32 |",
        "|---|---:|---|---:|---:|---|---:|---|---:|",
    ]
    for name, mode in rows:
        m = models[name, mode]
        vals = speed[name, mode]
        ratio = statistics.median(v / r for v, r in zip(vals, ref))
        if (name, mode) in accuracy:
            res = accuracy[name, mode]
            ci = paired_bootstrap(res.ranks, accuracy[name, "fp32"].ranks, "ndcg@10",
                                  n_boot=params.eval.bootstrap, seed=params.eval.seed)
            acc = (f"{res.metrics['ndcg@10']:.4f} | {res.metrics['hr@10']:.4f} | "
                   + ("—" if mode == "fp32" else f"{ci['diff']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"))
        else:
            acc = "— | — | — (untrained: timing only)"
        lines.append(f"| {name} | {m.n_layers} | {mode} | {acc} | {statistics.median(vals):,.1f} | "
                     f"{', '.join(f'{v:,.1f}' for v in vals)} | {ratio:.2f}× |")
    if len(trained) > 1:  # each further model against the first one in fp32 (e.g. a shallower student)
        lines += ["", f"| model, mode | Δ NDCG@10 vs {trained[0]} fp32 [95% CI] |", "|---|---|"]
        for name, mode in rows:
            if name in trained[1:]:
                ci = paired_bootstrap(accuracy[name, mode].ranks, accuracy[trained[0], "fp32"].ranks, "ndcg@10",
                                      n_boot=params.eval.bootstrap, seed=params.eval.seed)
                lines.append(f"| {name}, {mode} | {ci['diff']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}] |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
