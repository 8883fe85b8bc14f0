"""LLM training speed levers (issue 9), measured side by side: teacher optimizer steps on real splits.

    .venv/bin/python bench/bench_levers.py --splits data/splits runs/beauty-sasrec/splits --steps 6 --rounds 3

Rows are cumulative; every row is timed in the same rounds as `today` (the path before the levers):

    today             every batch re-padded to llm.max_len slots, the instruction prefix run once per user, fp32
    + trim_slots      only as many item slots as the batch's longest history          (exact: float rounding only)
    + prefix_once     the instruction prefix once per batch (it is the same for every user)   (exact, likewise)
    + length buckets  train.length_buckets 16: batches of similar history length (changes batch composition)
    + bf16 trunk      llm.dtype bfloat16: frozen backbone weights and activations in bf16 (LoRA, maps, scores fp32)
    threads 1         `+ length buckets` with one torch thread instead of two

`--rows` picks a subset (`today` is always timed: every ratio is against it).

Unit: seconds per training epoch of the teacher (llm.teacher_layers of the real SmolLM2 backbone, batch
train_llm.batch_size, windows per user as params.yaml), estimated as mean s/step over `--steps` batches
picked at evenly spaced quantiles of that row's batch widths in epoch 0, times the epoch's batch count:
each row is timed on batches as wide as its own epoch's, not on a lucky draw. Step = forward, backward,
gradient clipping, AdamW (what fit() does). Rounds visit the rows in alternating order; the table gives
the median over rounds and each row's ratio to `today` as the median of the within-round ratios.

Accuracy of bf16 (the one lever that is not exact): on the same batches, the bf16 trunk's loss vs fp32's
and the cosine between their gradients, and the overlap of the top-10 lists of fp32 and bf16 inference
(merged, full ranking) over `--check-users` test users. Timing does not depend on the weights: the item
table is a seeded random one of SASRec's shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slmrec.config import LLMRecConfig, load_params
from slmrec.data.examples import (
    bucket_order,
    epoch_order,
    iter_batch_rows,
    lengths,
    make_eval_examples,
    make_train_examples,
)
from slmrec.data.sequences import load_splits
from slmrec.models.llmrec import LLMRec

REPO = Path(__file__).resolve().parents[1]
BUCKETS = 16


@dataclass
class Row:
    name: str
    llm: dict  # LLMRecConfig overrides
    buckets: int = 0
    threads: int = 2


FAST = dict(trim_slots=True, prefix_once=True, dtype="float32")
ROWS = [
    Row("today", dict(trim_slots=False, prefix_once=False, dtype="float32")),
    Row("+ trim_slots", dict(trim_slots=True, prefix_once=False, dtype="float32")),
    Row("+ prefix_once", FAST),
    Row("+ length buckets", FAST, buckets=BUCKETS),
    Row("+ bf16 trunk", {**FAST, "dtype": "bfloat16"}, buckets=BUCKETS),
    Row("threads 1", FAST, buckets=BUCKETS, threads=1),
]


def pick_batches(train, order, batch_size: int, steps: int) -> tuple[list[dict], int, float]:
    """`steps` batches at evenly spaced quantiles of the epoch's batch widths; (batches, n per epoch, mean width)."""
    rows = list(iter_batch_rows(order, batch_size))
    batches = [train.batch(r) for r in rows]
    widths = torch.tensor([b["input_ids"].shape[1] for b in batches], dtype=torch.float)
    ranked = torch.argsort(widths, stable=True)
    picks = [int(ranked[round((i + 0.5) * len(rows) / steps - 0.5)]) for i in range(steps)]
    return [batches[i] for i in picks], len(rows), float(widths.mean())


class Timed:
    def __init__(self, row: Row, llm: LLMRecConfig, layers: int, table, batches, n_batches, width, grad_clip, lr):
        self.row, self.batches, self.n_batches, self.width, self.grad_clip = row, batches, n_batches, width, grad_clip
        torch.manual_seed(0)
        self.model = LLMRec(dataclasses.replace(llm, **row.llm), layers, table).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.step(batches[0])  # warm-up, untimed

    def step(self, batch) -> None:
        self.model.calculate_loss(batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def s_per_epoch(self) -> float:
        torch.set_num_threads(self.row.threads)
        try:
            t0 = time.perf_counter()
            for batch in self.batches:
                self.step(batch)
            return (time.perf_counter() - t0) / len(self.batches) * self.n_batches
        finally:
            torch.set_num_threads(2)


def bf16_accuracy(llm: LLMRecConfig, layers: int, table, batches, test, users: int) -> dict:
    """fp32 vs bf16 trunk, same trainable weights (LoRA B randomised, so the adapters matter)."""
    models = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        models[dtype] = LLMRec(dataclasses.replace(llm, dtype=dtype, lora_dropout=0.0), layers, table)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in models["float32"].named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    models["bfloat16"].load_trainable_state_dict(models["float32"].trainable_state_dict())
    rel, cos = [], []
    for batch in batches:
        grads = {}
        losses = {}
        for dtype, m in models.items():
            m.zero_grad()
            out = m.calculate_loss(batch)
            out.loss.backward()
            losses[dtype] = float(out.loss.detach())
            grads[dtype] = torch.cat([p.grad.flatten() for p in m.parameters() if p.requires_grad])
        rel.append(abs(losses["bfloat16"] - losses["float32"]) / losses["float32"])
        cos.append(float(torch.nn.functional.cosine_similarity(grads["bfloat16"], grads["float32"], dim=0)))
    overlap = []
    with torch.no_grad():
        tops = {}
        for dtype, m in models.items():
            m.eval().merge_for_inference()
            ex = make_eval_examples(test[:users], llm.max_len)
            tops[dtype] = torch.cat([
                m.full_sort_predict(ex.batch(r)).topk(10).indices for r in torch.arange(len(ex)).split(64)
            ])
        for a, b in zip(tops["float32"].tolist(), tops["bfloat16"].tolist()):
            overlap.append(len(set(a) & set(b)) / 10)
    return {"loss_rel_diff_max": max(rel), "grad_cos_min": min(cos), "top10_overlap_mean": statistics.mean(overlap),
            "users": len(overlap)}


def bench_splits(path: Path, args, params) -> str:
    splits = load_splits(path)
    llm = params.llm
    train = make_train_examples(splits.train, llm.max_len, llm.windows_per_user)
    lens = lengths(train)
    table = torch.randn(splits.n_items + 1, params.sasrec.hidden, generator=torch.Generator().manual_seed(0)) * 0.1
    tcfg = params.train_llm
    random_order = epoch_order(len(train), tcfg.seed, 0)
    timed = []
    for row in [r for r in ROWS if r.name == "today" or r.name in args.rows]:
        order = bucket_order(random_order, lens, tcfg.batch_size, row.buckets, tcfg.seed, 0) if row.buckets else random_order
        batches, n_batches, width = pick_batches(train, order, tcfg.batch_size, args.steps)
        if not row.llm["trim_slots"]:
            width = float(llm.max_len)
        timed.append(Timed(row, llm, llm.teacher_layers, table, batches, n_batches, width, tcfg.grad_clip, tcfg.lr))
    per_round = {t.row.name: [] for t in timed}
    for k in range(args.rounds):
        for t in timed if k % 2 == 0 else timed[::-1]:
            per_round[t.row.name].append(t.s_per_epoch())
        print(f"  {path}: round {k + 1}/{args.rounds} done", flush=True)
    today = per_round["today"]
    check = timed[-1].batches
    acc = bf16_accuracy(llm, llm.teacher_layers, table, check, splits.test, args.check_users) if (
        "+ bf16 trunk" in per_round) else None

    hist = lens.float()
    lines = [
        f"### {path} — {len(splits.train):,} users, {splits.n_items:,} items; {len(train):,} training windows "
        f"(windows_per_user {llm.windows_per_user}, L = {llm.max_len}); history length median "
        f"{float(hist.median()):.0f}, mean {float(hist.mean()):.1f}",
        "",
        f"Teacher: {llm.teacher_layers} layers of `{llm.profile}`, batch {tcfg.batch_size}, "
        f"{timed[0].n_batches} steps per epoch; {args.steps} timed steps per row per round, {args.rounds} rounds.",
        "",
        "| row | mean item slots per batch | s/epoch (median) | rounds | speed-up vs today (median of paired ratios) |",
        "|---|---:|---:|---|---:|",
    ]
    for t in timed:
        vals = per_round[t.row.name]
        ratio = statistics.median(a / b for a, b in zip(today, vals))
        lines.append(f"| {t.row.name} | {t.width:.1f} | {statistics.median(vals):,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in vals)} | {ratio:.2f}× |")
    lines.append("")
    if acc:
        lines += [
            f"bf16 trunk vs fp32 (same weights, LoRA B randomised): loss relative difference ≤ "
            f"{acc['loss_rel_diff_max']:.2e} over {len(check)} batches, gradient cosine ≥ {acc['grad_cos_min']:.4f}; "
            f"top-10 overlap with fp32 inference {acc['top10_overlap_mean']:.3f} over {acc['users']} test users.",
            "",
        ]
    return "\n".join(lines)


def _cpu_name() -> str:
    """Model name and whether the CPU advertises bf16 instructions (the bf16 row depends on them)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    bf16 = [f for f in flags if "bf16" in f or f.startswith("amx")]
    return f"{name}, bf16 flags: {' '.join(bf16) or 'none'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", nargs="+", type=Path, default=[REPO / "data/splits"])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check-users", type=int, default=256)
    ap.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], metavar="ROW",
                    help="rows to time besides `today` (names as in the table, e.g. '+ trim_slots')")
    ap.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    params = load_params(args.params)
    t0 = time.time()
    cpu = _cpu_name()
    load0 = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    parts = [bench_splits(p, args, params) for p in args.splits]
    load1 = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    head = (f"Command: `.venv/bin/python bench/bench_levers.py --splits {' '.join(map(str, args.splits))} "
            f"--steps {args.steps} --rounds {args.rounds}"
            + (f" --rows {' '.join(repr(r) for r in args.rows)}" if len(args.rows) < len(ROWS) else "")
            + f"`; {time.time() - t0:.0f} s; load average at start "
            f"{'/'.join(load0)}, end {'/'.join(load1)} ({torch.get_num_threads()} torch threads by default); CPU: {cpu}.\n")
    text = head + "\n" + "\n".join(parts)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
