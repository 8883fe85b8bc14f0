"""One training process for tests/train/test_ddp.py: run it plainly (one process) or under torchrun.

    python tests/train/ddp_worker.py --out OUT.pt --ckpt-dir DIR [--model sasrec|llm] [--kill-at-step N]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/ddp_worker.py --out ...

Trains a tiny SASRec, or the tiny-profile LLM teacher with LoRA (no dropout in either: runs
with different process counts can then agree) on a planted pattern (every user walks the items
in steps of +1), with a global batch that splits unevenly over 2 ranks and a last batch of one
row, so one rank has nothing in it. Rank 0 saves the final trainable state, the history and the
FitResult numbers to --out.
"""

from __future__ import annotations

import argparse
import sys

import dataclasses

import torch

from slmrec.config import LLMRecConfig, SASRecConfig, TrainConfig
from slmrec.train.checkpoint import save_atomic
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.models.sasrec import SASRec
from slmrec.train.distributed import cleanup, init_from_env
from slmrec.train.loop import fit

N_ITEMS, MAX_LEN, N_USERS = 30, 8, 25
MODEL = SASRecConfig(hidden=16, layers=1, heads=1, dropout=0.0, max_len=MAX_LEN, inner_size=32)
# 50 examples: batches of 7 (ranks get 4 + 3 rows) and a last batch of 1 row; 2 batches per step
TRAIN = TrainConfig(
    epochs=3, batch_size=7, grad_accum=2, lr=1e-2, warmup_ratio=0.1, patience=0, checkpoint_every=3, seed=7
)


LLM = LLMRecConfig(
    profile="tiny", teacher_layers=2, max_len=MAX_LEN, objective="all", lora_r=4, lora_alpha=8, lora_dropout=0.0,
    instruction="Next?", response="=>",
)
LLM_TRAIN = dataclasses.replace(TRAIN, epochs=2, lr=3e-3)
D_ID = 16


def planted_data():
    """Each user's train sequence is 2 full windows (every row has MAX_LEN targets) of an item cycle."""
    seqs = []
    for u in range(N_USERS):
        start = (u * 7) % N_ITEMS
        seqs.append([(start + k) % N_ITEMS + 1 for k in range(2 * MAX_LEN + 2)])
    train = make_train_examples([s[:-1] for s in seqs], MAX_LEN)
    valid = make_eval_examples([(s[:-1], s[-1]) for s in seqs], MAX_LEN)
    if len(train) != 2 * N_USERS or not bool((train.targets != 0).all()):
        raise ValueError("planted_data: expected 2 full windows per user")
    return train, valid


class Killed(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--model", choices=["sasrec", "llm"], default="sasrec")
    parser.add_argument("--kill-at-step", type=int, default=0, help="raise after this optimizer step (0: never)")
    args = parser.parse_args(argv)

    info = init_from_env()
    train, valid = planted_data()

    def on_step(step: int) -> None:
        if step == args.kill_at_step:
            raise Killed(f"simulated kill after step {step} on rank {info.rank}")

    log = print if info.is_main else (lambda _: None)
    common = dict(log=log, on_step=on_step, restore_best=False)
    if args.model == "sasrec":
        torch.manual_seed(TRAIN.seed)  # identical initial weights on every rank
        model = SASRec(N_ITEMS, MODEL).to(info.device)
        result = fit(model, train, valid, TRAIN, args.ckpt_dir, device=info.device, **common)
    else:
        from slmrec.models.llmrec import LLMRec

        table = torch.randn(N_ITEMS + 1, D_ID, generator=torch.Generator().manual_seed(0))  # stands in for SASRec's
        torch.manual_seed(LLM_TRAIN.seed)  # map + head init; LoRA B starts at 0
        model = LLMRec.build(LLM, "teacher", table).to(info.device)
        result = fit(model, train, valid, LLM_TRAIN, args.ckpt_dir, device=info.device, **common)
    if info.is_main:
        save_atomic(
            {
                "state": model.trainable_state_dict(),
                "history": result.history,
                "steps": result.steps,
                "best_epoch": result.best_epoch,
                "resumed": result.resumed,
                "world_size": info.world_size,
            },
            args.out,
        )
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
