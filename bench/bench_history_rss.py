"""Memory of the server's history store (`slmrec/serve/history.py`), before and after issue 18, side by side.

    .venv/bin/python bench/bench_history_rss.py --db ml-100k=data/warehouse.duckdb \
        --db beauty=/tmp/beauty.duckdb --before 5f548ff

For every DuckDB store and implementation (`before`: the file at git revision --before, loaded from
`git show`; `after`: the working tree) a fresh Python process
  1. imports the implementation and records its RSS (the baseline),
  2. builds the store (`HistoryStore(db, SequenceConfig())`) and records RSS again: the store's cost,
  3. lands a small ingest batch (10 events of existing users, a copy of the store) and refreshes,
     sampling RSS every 2 ms: the refresh's peak over the store (the old store re-read everything and
     held two snapshots at the swap; the new one reads the touched users only),
and checks that both implementations return the same histories for 200 users. "snapshot objects" is
the exact size of what the store holds (Python objects and arrays, each counted once); the RSS
columns also carry DuckDB's and Arrow's allocator pools, which keep memory after a query.
RSS from /proc/self/statm (Linux). One process per measurement, so allocator state is not shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, {repo!r})

def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

from slmrec.config import SequenceConfig
from slmrec.data.ingest import ingest
spec = importlib.util.spec_from_file_location("history_impl", {impl!r})
mod = importlib.util.module_from_spec(spec); sys.modules["history_impl"] = mod; spec.loader.exec_module(mod)
import gc; gc.collect()
import numpy as np

def held(obj, seen=None):
    # bytes held by the snapshot's Python objects and arrays, each object once
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes + 112
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(held(k, seen) + held(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set)):
        size += sum(held(v, seen) for v in obj)
    elif hasattr(obj, "__dataclass_fields__"):
        size += sum(held(getattr(obj, f), seen) for f in obj.__dataclass_fields__)
    return size

base = rss()
t0 = time.perf_counter()
store = mod.HistoryStore({db!r}, SequenceConfig())
load_s = time.perf_counter() - t0
gc.collect()
loaded = rss()
snapshot_mb = held(store._snap) / 2**20
users = sorted(store.user_ids())
sample = {{u: store.get(u) for u in users[:: max(1, len(users) // 200)]}}
lines = ["user_id,item_id,ts"] + [f"{{u}},{{store.get(u)[0]}},{{2000000000 + n}}" for n, u in enumerate(users[:10])]
Path({csv!r}).write_text("\n".join(lines) + "\n")
ingest("events", {csv!r}, {db!r})
peak, stop = [rss()], threading.Event()
def sampler():
    while not stop.is_set():
        peak.append(rss()); time.sleep(0.002)
th = threading.Thread(target=sampler); th.start()
t0 = time.perf_counter()
changed = store.refresh_if_changed()
refresh_s = time.perf_counter() - t0
stop.set(); th.join()
print(json.dumps({{"snapshot_mb": snapshot_mb, "base": base, "loaded": loaded, "refresh_peak": max(peak), "after_refresh": rss(),
                  "load_s": load_s, "refresh_s": refresh_s, "changed": changed, "users": len(users),
                  "rows": store.rows, "sample": sample}}))
"""


def measure(impl: Path, db: Path, work: Path) -> dict:
    copy = work / f"{db.stem}-{impl.stem}.duckdb"
    shutil.copy(db, copy)
    code = CHILD.format(repo=str(REPO), impl=str(impl), db=str(copy), csv=str(work / "late.csv"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(f"measurement of {impl.name} on {db} failed:\n{out.stderr[-3000:]}")
    copy.unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--before", default="5f548ff", help="git revision of the old implementation")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        work = Path(tmp)
        old = work / "history_before.py"
        old.write_text(subprocess.run(["git", "show", f"{args.before}:slmrec/serve/history.py"], cwd=REPO,
                                      capture_output=True, text=True, check=True).stdout)
        impls = {"before": old, "after": REPO / "slmrec/serve/history.py"}
        for spec in args.db:
            name, _, path = spec.partition("=")
            results = {label: measure(impl, Path(path), work) for label, impl in impls.items()}
            same = results["before"].pop("sample") == results["after"].pop("sample")
            for label, r in results.items():
                rows.append({"store": name, "impl": label, "same_histories": same, **r})
    print(f"History store RSS (MB, /proc/self/statm; one process per row; before = {args.before}, after = working tree)\n")
    print("| store | users | rows | implementation | snapshot objects (MB) | RSS after load − before (MB) | "
          "refresh peak over the store (MB) | load s | refresh s | same histories |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['store']} | {r['users']} | {r['rows']} | {r['impl']} | {r['snapshot_mb']:.1f} | "
              f"{r['loaded'] - r['base']:.1f} | "
              f"{r['refresh_peak'] - r['loaded']:.1f} | {r['load_s']:.2f} | {r['refresh_s']:.3f} | "
              f"{'yes' if r['same_histories'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["same_histories"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
