"""Fault-injection trials, many times over; prints the reliability table of docs/RELIABILITY.md.

    .venv/bin/python bench/bench_reliability.py [--quick]

The trials are the ones tests/reliability/ runs a few times each (tests/reliability/faults.py):
kill -9 of an ingest and of training at random points, two ingests at once, damaged checkpoints /
split files / cards, a full disk while a checkpoint is written. CPU only; a few minutes.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reliability"))

import torch  # noqa: E402
from faults import (  # noqa: E402
    DiskFull, batch_state, corrupt, env, final_state, ingest_command, kill_ingest_trial, kill_training_trial,
    run_training, write_seqtxt,
)

from slmrec.config import SASRecConfig, SequenceConfig  # noqa: E402
from slmrec.data.ingest import ingest  # noqa: E402
from slmrec.data.sequences import SPLIT_FILES, build_splits, load_splits  # noqa: E402
from slmrec.lineage import CorruptCardError, read_card, write_card  # noqa: E402
from slmrec.models.sasrec import SASRec  # noqa: E402
from slmrec.train.checkpoint import CorruptCheckpointError, load_checkpoint, model_class_path, save_atomic  # noqa: E402

ROWS: list[tuple[str, int, str, str]] = []  # fault, trials, outcome counts, survived?


def record(fault: str, outcomes: collections.Counter, survived: bool, n: int | None = None) -> None:
    n = n if n is not None else sum(outcomes.values())
    ROWS.append((fault, n, ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())), "yes" if survived else "NO"))
    print(f"{fault}: {n} trials, {dict(outcomes)}", flush=True)


def kill_ingest(tmp: Path, trials: int) -> None:
    path = tmp / "seq.txt"
    rows = write_seqtxt(path, 8000)
    proc = subprocess.Popen(ingest_command(path, tmp / "ref.duckdb"), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stderr.readline()
    t0 = time.monotonic()
    batch_id = json.loads(proc.communicate()[0])["batch_id"]
    duration = time.monotonic() - t0
    rng, out, ok = random.Random(1), collections.Counter(), True
    for k in range(trials):
        db = tmp / f"k{k}.duckdb"
        if k % 2:  # every other trial: a store that already holds a batch
            write_seqtxt(tmp / f"o{k}.txt", 50, seed=99)
            ingest("seqtxt", str(tmp / f"o{k}.txt"), str(db))
        r = kill_ingest_trial(path, db, batch_id, rows, rng.uniform(0, duration * 2.0))
        ok &= r["after_kill"] in ("none", "whole", "exited") and r["rerun_ok"]
        phase = "in transaction" if r["in_transaction"] else "before writing"
        out[f"{r['after_kill']} ({phase})"] += 1
    record("kill -9 during `slmrec ingest` (180k events; random instant)", out, ok)


def kill_training(tmp: Path, trials: int) -> None:
    run_training(tmp / "reference")
    reference = final_state(tmp / "reference")
    rng, out, ok = random.Random(2), collections.Counter(), True
    for k in range(trials):
        r = kill_training_trial(tmp / f"t{k}", reference, rng.randrange(1, 17), rng.uniform(0, 0.05))
        ok &= r["identical"]
        out["identical final weights" if r["identical"] else "DIFFERENT"] += 1
        out["of which killed inside a checkpoint write (temp file left)"] += bool(r["temp_files_left"])
    record("kill -9 during training (tiny SASRec, 18 steps; random step + 0-50 ms)", out, ok, n=trials)


def concurrent_ingests(tmp: Path, trials: int) -> None:
    out, ok = collections.Counter(), True
    for k in range(trials):
        files = [tmp / f"c{k}a.txt", tmp / f"c{k}b.txt"]
        rows = [write_seqtxt(f, 3000, seed=10 * k + j) for j, f in enumerate(files)]
        db = tmp / f"c{k}.duckdb"
        procs = [subprocess.Popen(ingest_command(f, db), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for f in files]
        reports = [json.loads(p.communicate()[0]) for p in procs]
        whole = all(batch_state(db, r["batch_id"])["rows"] == n for r, n in zip(reports, rows))
        ok &= whole and all(p.returncode == 0 for p in procs)
        out["both batches whole" if whole else "DAMAGED"] += 1
    record("two `slmrec ingest` into one new DuckDB file at once", out, ok)


def sasrec_ckpt(seed: int) -> dict:
    torch.manual_seed(seed)
    m = SASRec(40, SASRecConfig(hidden=16, layers=1, heads=1, max_len=8, inner_size=32))
    return {"model_class": model_class_path(m), "model_config": m.config_dict(), "model_state": m.trainable_state_dict(),
            "step": seed}


def damaged_checkpoints(tmp: Path, trials: int) -> None:
    good = tmp / "good.pt"
    save_atomic(sasrec_ckpt(0), good)
    original = load_checkpoint(good)["model_state"]
    for kind in ("truncate", "flip"):
        rng, out, ok = random.Random(kind), collections.Counter(), True
        for _ in range(trials):
            bad = tmp / "bad.pt"
            bad.write_bytes(good.read_bytes())
            corrupt(bad, rng, kind)
            try:
                state = load_checkpoint(bad)["model_state"]
            except CorruptCheckpointError:
                out["refused"] += 1
                continue
            same = state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
            ok &= same
            out["loaded, contents intact (damage in zip padding)" if same else "LOADED WRONG WEIGHTS"] += 1
        record(f"checkpoint {'truncated at a random byte' if kind == 'truncate' else '1-4 random bytes changed'}",
               out, ok)


def damaged_splits_and_cards(tmp: Path, trials: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp / "snap"
    snap.mkdir()
    rows = [(f"u{u}", f"i{(u * 3 + k) % 17}", k) for u in range(30) for k in range(6)]
    n = len(rows)
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                             "ts": pa.array([r[2] for r in rows], pa.int64()), "source_file": ["f"] * n,
                             "row_number": pa.array(range(1, n + 1), pa.int64()),
                             "item_pos": pa.array([0] * n, pa.int32())}), snap / "interactions.parquet")
    pq.write_table(pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}),
                   snap / "items.parquet")
    pristine = tmp / "pristine"
    build_splits(snap, SequenceConfig(k_core=0, out_dir=str(pristine)))
    for kind in ("truncate", "flip"):
        rng, out, ok = random.Random(kind), collections.Counter(), True
        for _ in range(trials):
            work = tmp / "splits"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            corrupt(work / rng.choice([*SPLIT_FILES, "stats.json"]), rng, kind)
            try:
                load_splits(work)
                out["LOADED"] += 1
                ok = False
            except ValueError:
                out["refused"] += 1
        record(f"split Parquet file or stats.json {'truncated' if kind == 'truncate' else 'with changed bytes'}",
               out, ok)
    art = tmp / "art"
    art.mkdir()
    (art / "model.pt").write_bytes(b"weights")
    card = write_card(art, "sasrec", params={"lr": 0.001}, metrics={"ndcg@10": 0.05})
    good = (art / "card.json").read_bytes()
    for kind in ("truncate", "flip"):
        rng, out, ok = random.Random(kind), collections.Counter(), True
        for _ in range(trials):
            (art / "card.json").write_bytes(good)
            corrupt(art / "card.json", rng, kind)
            try:
                same = read_card(art) == card
                ok &= same
                out["read, contents intact (whitespace damage)" if same else "READ WRONG CARD"] += 1
            except CorruptCardError:
                out["refused"] += 1
        record(f"card.json {'truncated' if kind == 'truncate' else 'with changed bytes'}", out, ok)


def disk_full(tmp: Path, trials: int) -> None:
    rng, out, ok = random.Random(3), collections.Counter(), True
    path = tmp / "last.pt"
    for k in range(trials):
        save_atomic(sasrec_ckpt(1), path)
        before = path.read_bytes()
        real = torch.save
        torch.save = DiskFull(rng.random()).wrap(real)
        try:
            save_atomic(sasrec_ckpt(2), path)
            out["NO ERROR"] += 1
            ok = False
        except OSError as err:
            intact = path.read_bytes() == before and err.errno == errno.ENOSPC
            clean = sorted(p.name for p in tmp.iterdir() if p.name.startswith(".last.pt")) == []
            ok &= intact and clean
            out["previous checkpoint intact, no temp file" if intact and clean else "DAMAGED"] += 1
        finally:
            torch.save = real
    record("disk full (ENOSPC after a random share of the bytes) while writing last.pt", out, ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few trials each (a smoke run)")
    args = parser.parse_args()
    n = 3 if args.quick else None
    torch.set_num_threads(1)
    started = time.time()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name, fn, trials in [("ki", kill_ingest, n or 20), ("kt", kill_training, n or 10),
                                 ("cc", concurrent_ingests, n or 5), ("ck", damaged_checkpoints, n or 100),
                                 ("sc", damaged_splits_and_cards, n or 100), ("df", disk_full, n or 50)]:
            (tmp / name).mkdir()
            fn(tmp / name, trials)
    print(f"\n{time.time() - started:.0f} s\n")
    print("| fault | trials | outcomes | survived |\n|---|---|---|---|")
    for fault, trials, outcomes, survived in ROWS:
        print(f"| {fault} | {trials} | {outcomes} | {survived} |")


if __name__ == "__main__":
    main()
