"""Fault-injection trials, shared by tests/reliability/ and bench/bench_reliability.py.

Each trial injects one fault and returns what survived as a small dict; the tests assert on it
and the bench counts it over many trials (docs/RELIABILITY.md).
"""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "SLMREC_NO_TQDM": "1", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- data


def write_seqtxt(path: Path, n_users: int, seed: int = 0, n_items: int = 5000) -> int:
    """A sequence file of n_users lines, 5..40 items each; returns the number of events."""
    rng = random.Random(seed)
    lines, events = [], 0
    for u in range(n_users):
        k = rng.randrange(5, 41)
        items = rng.sample(range(1, n_items + 1), k)
        lines.append(" ".join([f"u{seed}_{u}", *map(str, items)]))
        events += k
    path.write_text("\n".join(lines) + "\n")
    return events


def batch_state(db: Path, batch_id: str) -> dict:
    """What the store holds of one batch: rows, quarantined, recorded (ingest_batches row present)."""
    if not db.exists():
        return {"store": False, "rows": 0, "recorded": False, "batches": 0}
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "raw_interactions" not in tables:
            return {"store": True, "rows": 0, "recorded": False, "batches": 0}
        rows = con.execute("SELECT count(*) FROM raw_interactions WHERE batch_id = ?", [batch_id]).fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM quarantine WHERE batch_id = ?", [batch_id]).fetchone()[0]
        recorded = con.execute("SELECT count(*) FROM ingest_batches WHERE batch_id = ?", [batch_id]).fetchone()[0]
        batches = con.execute("SELECT count(*) FROM ingest_batches").fetchone()[0]
    return {"store": True, "rows": rows + quarantined, "recorded": bool(recorded), "batches": batches}


def ingest_command(path: Path, db: Path, fmt: str = "seqtxt", lock_timeout: float | None = None) -> list[str]:
    cmd = [PY, str(HERE / "ingest_worker.py"), "--format", fmt, "--path", str(path), "--db", str(db), "--json"]
    return cmd + (["--lock-timeout", str(lock_timeout)] if lock_timeout is not None else [])


# ----------------------------------------------------------------------------- kill -9 of an ingest


def kill_ingest_trial(path: Path, db: Path, batch_id: str, rows: int, delay: float) -> dict:
    """Start an ingest, SIGKILL it `delay` s after the interpreter is up, then inspect and re-run it.

    Returns {"after_kill": "none" | "whole" | "exited", "in_transaction": bool, "rerun_ok": bool, ...}.
    """
    from slmrec.data.ingest import ingest

    proc = subprocess.Popen(ingest_command(path, db), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr.readline().strip() == b"started"
    time.sleep(delay)
    wal = db.with_name(db.name + ".wal")
    new_store_tmp = any(p.name.startswith(f".{db.name}.new-") for p in db.parent.iterdir())
    in_transaction = wal.exists() or new_store_tmp
    exited = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    state = batch_state(db, batch_id)
    if state["recorded"]:
        after = "whole" if state["rows"] == rows else "PARTIAL"
    else:
        after = "none" if state["rows"] == 0 else "PARTIAL"
    again = ingest("seqtxt", str(path), str(db))
    final = batch_state(db, batch_id)
    return {
        "after_kill": "exited" if exited and after == "whole" else after,
        "in_transaction": in_transaction,
        "rerun_ok": final["recorded"] and final["rows"] == rows and (again.already_ingested == state["recorded"]),
        "rerun_already_ingested": again.already_ingested,
    }


# ----------------------------------------------------------------------------- kill -9 of training


def run_training(ckpt_dir: Path, kill_after_step: int | None = None, extra_delay: float = 0.0) -> dict:
    """Train the tiny SASRec of train_worker.py in a subprocess; SIGKILL it after it reports a step."""
    proc = subprocess.Popen([PY, str(HERE / "train_worker.py"), str(ckpt_dir)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, killed = 0, False
    for line in proc.stdout:
        if line.startswith("step "):
            last = int(line.split()[1])
            if kill_after_step is not None and last >= kill_after_step:
                time.sleep(extra_delay)  # lands in the next step, or inside its checkpoint write
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    proc.wait()
    err = proc.stderr.read()
    proc.stdout.close(), proc.stderr.close()
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"training worker failed ({proc.returncode}):\n{err}")
    return {"killed": killed, "last_step_seen": last, "returncode": proc.returncode}


def final_state(ckpt_dir: Path) -> dict:
    from slmrec.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_dir / "last.pt")
    return {"model_state": ckpt["model_state"], "step": ckpt["step"], "best_metric": ckpt["best_metric"]}


def same_weights(a: dict, b: dict) -> bool:
    import torch

    sa, sb = a["model_state"], b["model_state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and a["step"] == b["step"]


def kill_training_trial(ckpt_dir: Path, reference: dict, kill_after_step: int, extra_delay: float) -> dict:
    """Kill at a step, resume (a fresh process) to the end, compare with the uninterrupted run."""
    first = run_training(ckpt_dir, kill_after_step, extra_delay)
    leftovers = [p.name for p in ckpt_dir.glob(".*.tmp")]  # a kill inside save_atomic leaves its temp file
    run_training(ckpt_dir)  # resume
    resumed = final_state(ckpt_dir)
    return {"killed_after_step": first["last_step_seen"], "temp_files_left": leftovers,
            "identical": same_weights(resumed, reference)}


# ----------------------------------------------------------------------------- corruption


def corrupt(path: Path, rng: random.Random, kind: str) -> str:
    """Damage a file in place: 'truncate' at a random length, or 'flip' 1-4 random bytes."""
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        path.write_bytes(bytes(data[:cut]))
        return f"truncated to {cut}/{len(data)} bytes"
    spots = sorted(rng.sample(range(len(data)), min(len(data), rng.randint(1, 4))))
    for i in spots:
        data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return f"{len(spots)} byte(s) changed at {spots}"


class DiskFull:
    """Make torch.save fail with ENOSPC after writing `fraction` of its bytes (the write really starts)."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.calls = 0

    def wrap(self, real_save):
        def save(obj, f, *args, **kwargs):
            self.calls += 1
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: int(len(data) * self.fraction)])
            f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return save
