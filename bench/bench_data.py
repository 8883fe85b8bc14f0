"""Data pipeline benchmark: ingest -> snapshot -> sequences/splits at 1x, 4x, 16x the size of Amazon Beauty.

    .venv/bin/python bench/bench_data.py --source beauty --scales 1 4 16

`--source beauty` replicates ../shared/data/amazon-beauty/Beauty.txt `scale` times with shifted user
and item ids (copies are disjoint, so every copy keeps Beauty's 5-core shape); `--source synthetic`
generates seqtxt with the same shape (22,363 users, 12,101 items, lengths >= 5 with mean ~8.9) for
machines without the file. Prints a markdown table: seconds and rows/s per stage and scale, and each
stage's time relative to its 1x time (linear cost: the ratio equals the scale).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data_contracts import validate
from data_contracts.engine import ensure_context
from slmrec.config import SequenceConfig
from slmrec.data.ingest import export_snapshot, ingest
from slmrec.data.sequences import build_splits, load_splits

BEAUTY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon-beauty" / "Beauty.txt"
BEAUTY_SHAPE = {"users": 22_363, "items": 12_101, "min_len": 5, "mean_len": 8.88, "max_len": 204}


def replicate_beauty(src: Path, scale: int, out: Path) -> int:
    """Write `scale` disjoint copies of Beauty.txt (user and item ids shifted per copy). Returns events."""
    lines = [line.split() for line in src.read_text().splitlines() if line.strip()]
    max_user = max(int(t[0]) for t in lines)
    max_item = max(int(i) for t in lines for i in t[1:])
    events = 0
    with open(out, "w") as f:
        for copy in range(scale):
            du, di = copy * max_user, copy * max_item
            for t in lines:
                f.write(" ".join([str(int(t[0]) + du), *(str(int(i) + di) for i in t[1:])]) + "\n")
                events += len(t) - 1
    return events


def synthetic_beauty(scale: int, out: Path, seed: int = 0) -> int:
    """Seqtxt with Beauty's shape: lengths 5 + geometric (mean ~8.9, capped), Zipf-like item popularity."""
    rng = np.random.default_rng(seed)
    n_users, n_items = BEAUTY_SHAPE["users"] * scale, BEAUTY_SHAPE["items"] * scale
    extra = rng.geometric(1 / (BEAUTY_SHAPE["mean_len"] - BEAUTY_SHAPE["min_len"] + 1), n_users) - 1
    lengths = np.minimum(BEAUTY_SHAPE["min_len"] + extra, BEAUTY_SHAPE["max_len"])  # (U,)
    popularity = 1.0 / (np.arange(n_items) + 10.0) ** 0.8
    items = rng.choice(n_items, size=int(lengths.sum()), p=popularity / popularity.sum()) + 1  # (E,)
    ends = np.cumsum(lengths)
    with open(out, "w") as f:
        for user, (start, end) in enumerate(zip(ends - lengths, ends), start=1):
            f.write(f"{user} {' '.join(map(str, items[start:end]))}\n")
    return int(lengths.sum())


def timed(fn, *args, **kwargs):
    """(value, wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def run_scale(source: str, scale: int, workdir: Path, k_core: int, repeat: int) -> dict:
    """Run every stage `repeat` times on fresh folders; keep the fastest wall time and its CPU time."""
    root = workdir / f"x{scale}"
    root.mkdir(parents=True)
    path = root / f"beauty_x{scale}.txt"
    events = replicate_beauty(BEAUTY, scale, path) if source == "beauty" else synthetic_beauty(scale, path)
    best: dict[str, tuple[float, float]] = {}
    for run in range(repeat):
        out = root / f"run{run}"
        db = str(out / "warehouse.duckdb")
        out.mkdir()
        report, *t_ingest = timed(ingest, "seqtxt", str(path), db)
        if report.accepted != events:
            raise RuntimeError(f"x{scale}: ingest accepted {report.accepted} of {events} events ({report.to_dict()})")
        _, *t_export = timed(export_snapshot, db, str(out / "interactions"))
        cfg = SequenceConfig(k_core=k_core, out_dir=str(out / "splits"))
        stats, *t_splits = timed(build_splits, out / "interactions", cfg)
        _, *t_load = timed(load_splits, out / "splits")
        times = {"ingest": t_ingest, "export_snapshot": t_export, "build_splits": t_splits, "load_splits": t_load}
        times = {stage: tuple(t) for stage, t in times.items()}  # (wall, cpu)
        best = {stage: min(best.get(stage, t), t) for stage, t in times.items()}
    return {"scale": scale, "rows": events, "stats": stats, "seconds": best}


def contract_timing(snapshot: Path, rows: int = 100_000) -> tuple[float, float]:
    """Wall seconds to validate `rows` interactions with the raw_interactions suite (first call, second call)."""
    df = pq.read_table(snapshot / "interactions.parquet").slice(0, rows).to_pandas()
    _, first, _ = timed(validate, df, "raw_interactions")
    result, second, _ = timed(validate, df, "raw_interactions")
    if not result.success:
        raise RuntimeError(result.summary())
    return first, second


def table(results: list[dict]) -> str:
    first = results[0]
    base = {stage: (w / first["scale"], c / first["scale"]) for stage, (w, c) in first["seconds"].items()}  # per 1x
    lines = [
        "| stage | scale | rows | wall s | rows/s | wall / 1x wall | CPU s | CPU / 1x CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, (w1, c1) in base.items():
        for r in results:
            w, c = r["seconds"][stage]
            lines.append(
                f"| {stage} | {r['scale']}x | {r['rows']:,} | {w:.2f} | {r['rows'] / w:,.0f} | {w / w1:.1f} "
                f"| {c:.2f} | {c / c1:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["beauty", "synthetic"], default="beauty")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scale; the fastest counts (shared machines)")
    parser.add_argument("--workdir", help="keep the generated data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.source == "beauty" and not BEAUTY.is_file():
        parser.error(f"{BEAUTY} not found: use --source synthetic")

    _, t_gx, _ = timed(ensure_context)  # GX import + ephemeral context: paid once per process, kept out of the stages
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = []
        for scale in args.scales:
            results.append(run_scale(args.source, scale, Path(tmp), args.k_core, args.repeat))
            r, st = results[-1], results[-1]["stats"]
            times = ", ".join(f"{k} {w:.2f}s" for k, (w, _) in r["seconds"].items())
            print(
                f"x{scale}: {r['rows']:,} events -> {st.n_users:,} users, {st.n_items:,} items, "
                f"{st.n_interactions:,} interactions; {times}",
                file=sys.stderr,
                flush=True,
            )
        first, second = contract_timing(Path(tmp) / f"x{args.scales[0]}" / "run0" / "interactions")
    print(f"source: {args.source}, k_core={args.k_core}, cpus={os.cpu_count()}, best of {args.repeat} runs\n")
    print(table(results))
    print(
        f"\nGreat Expectations import + ephemeral context: {t_gx:.2f} s (once per process). "
        f"raw_interactions contract on 100,000 rows: {first:.2f} s (first), {second:.2f} s (again)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
