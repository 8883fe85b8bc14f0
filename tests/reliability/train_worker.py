"""A tiny SASRec trained by slmrec.train.loop.fit, for the kill -9 tests (run as a script, on CPU).

    python train_worker.py CKPT_DIR      # trains (resuming from CKPT_DIR/last.pt if there), prints "step N"

Fixed seed and data; one thread, so a killed-and-resumed run can match an uninterrupted one bit for bit.
A checkpoint every optimizer step, so a kill can land before, inside or after any checkpoint write.
"""

import random
import sys

import torch

torch.set_num_threads(1)

from slmrec.config import SASRecConfig, TrainConfig  # noqa: E402
from slmrec.data.examples import make_eval_examples, make_train_examples  # noqa: E402
from slmrec.models.sasrec import SASRec  # noqa: E402
from slmrec.train.loop import fit  # noqa: E402

N_ITEMS, MAX_LEN = 30, 10
CONFIG = TrainConfig(epochs=3, batch_size=8, grad_accum=1, lr=3e-3, checkpoint_every=1, patience=0, seed=7)


def data():
    rng = random.Random(0)
    seqs = [[rng.randrange(1, N_ITEMS + 1) for _ in range(rng.randrange(5, 14))] for _ in range(48)]
    return (make_train_examples([s[:-2] for s in seqs], MAX_LEN),
            make_eval_examples([(s[:-2], s[-2]) for s in seqs], MAX_LEN))


def main(ckpt_dir: str) -> None:
    train, valid = data()
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SASRecConfig(hidden=16, layers=1, heads=1, dropout=0.2, max_len=MAX_LEN, inner_size=32))

    def on_step(step: int) -> None:
        print(f"step {step}", flush=True)

    fit(model, train, valid, CONFIG, ckpt_dir, log=lambda s: None, on_step=on_step, restore_best=False)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
