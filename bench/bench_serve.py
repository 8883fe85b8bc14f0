"""Load test of `slmrec serve`: closed-loop levels (1/8/32/128 clients), then open-loop overload.

    .venv/bin/python bench/bench_serve.py --model student=models/student --model sasrec=models/sasrec \
        --clients 1 8 32 128 --requests 600 --max-seconds 20 --modes batched --threads 1 --open-factor 4

For every model x batching mode (`batched`: serve.max_batch / serve.max_wait_ms; `unbatched`:
max_batch 1, one forward pass per request) a real server process starts on a free localhost port
(its own answer log folder); each concurrency level then sends at most --requests GET
/recommend/{user}?k=K requests (users round-robin over the store), or stops after --max-seconds,
from C asyncio clients that each wait for their answer before sending the next (closed loop; aiohttp;
after a 503 a client waits the Retry-After seconds, as a well-behaved client does).
Then, unless --open-factor 0, requests arrive on a schedule (open loop: evenly spaced at
open-factor x the best closed-loop throughput, for --open-seconds, whether or not the server keeps
up): every answer must be a 2xx or a 503 (admission control: serve.max_queue, serve.timeout_ms)
within the deadline plus slack, and the server's RSS is sampled (flat = bounded queues).
After the last level the server gets SIGTERM, and the answer log is read back: its rows must be
exactly the 2xx answers of each level (matched by request id).

Columns: p50/p95/p99 latency as the client sees it (ms), throughput (2xx answers / wall second),
mean micro-batch size (from /metrics), log rows == 2xx answers. The clients run on the same
machine as the server, so at 32+ clients and in the open loop they compete with it for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import duckdb
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5
sys.path.insert(0, str(REPO))

from slmrec.serve.sources import resolve_sources  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, mode: dict, log_dir: Path, out: Path, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "slmrec.cli", "serve", "--model", model, "--port", str(port), "--log", str(log_dir),
           "--max-batch", str(mode["max_batch"]), "--max-wait-ms", str(mode["max_wait_ms"]), "--params", args.params]
    if args.device:
        cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.precision:
        cmd += ["--precision", args.precision]
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{out.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready within 300 s:\n{out.read_text()}")


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def level(url: str, users: list[str], clients: int, n_requests: int, max_seconds: float, k: int) -> dict:
    """C closed-loop aiohttp clients (httpx's async pool costs more CPU than the server at 32 clients)."""
    latencies, ok_ids, statuses = [], [], {}
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + max_seconds

    async def client(session: aiohttp.ClientSession):
        for n in counter:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            async with session.get(f"{url}/recommend/{users[n % len(users)]}", params={"k": str(k)}) as r:
                body = await r.json()
            latencies.append(time.perf_counter() - t0)
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status // 100 == 2:
                ok_ids.append(body["request_id"])
            elif r.status == 503:  # a well-behaved client waits as told before it asks again
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(f"{url}/metrics") as r:
            before = await r.text()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - t0
        async with session.get(f"{url}/metrics") as r:
            after = await r.text()
    lat = np.array(latencies) * 1000.0
    passes = metric(after, "slmrec_batch_size_count") - metric(before, "slmrec_batch_size_count")
    queries = metric(after, "slmrec_batch_size_sum") - metric(before, "slmrec_batch_size_sum")
    name = 'slmrec_request_latency_seconds_{}{{endpoint="/recommend/{{user_id}}"}}'
    served = metric(after, name.format("count")) - metric(before, name.format("count"))
    server_s = metric(after, name.format("sum")) - metric(before, name.format("sum"))
    return {
        "clients": clients, "requests": len(latencies), "ok": len(ok_ids), "statuses": statuses, "wall_s": wall,
        "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
        "throughput": len(ok_ids) / wall, "mean_batch": queries / passes if passes else float("nan"),
        "server_ms": 1000.0 * server_s / served if served else float("nan"), "ids": ok_ids,
    }


def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc), MB."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def open_loop(url: str, users: list[str], rate: float, seconds: float, k: int, pid: int) -> dict:
    """Requests sent on a schedule (rate per second, evenly spaced), whether or not earlier ones were answered:
    arrivals do not slow down when the server does, as with real users. RSS sampled every 0.25 s."""
    results, rss = [], []
    n_total = int(rate * seconds)

    lags = []

    async def one(session: aiohttp.ClientSession, n: int, at: float):
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        t0 = time.perf_counter()
        lags.append(t0 - at)  # the client's own delay behind its schedule
        try:
            async with session.get(f"{url}/recommend/{users[n % len(users)]}", params={"k": str(k)}) as r:
                body = await r.read()
                status = r.status
        except aiohttp.ClientError as err:
            results.append((f"error {type(err).__name__}", time.perf_counter() - t0, None))
            return
        rid = json.loads(body)["request_id"] if status == 200 else None
        results.append((status, time.perf_counter() - t0, rid))

    async def sample():
        while True:
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.25)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        sampler = asyncio.create_task(sample())
        start = time.perf_counter() + 0.2
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, n, start + n / rate) for n in range(n_total)))
        wall = time.perf_counter() - t0
        sampler.cancel()
    ok = [lat for status, lat, _ in results if status == 200]
    statuses: dict = {}
    for status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    lat_all = np.array([lat for _, lat, _ in results]) * 1000.0
    lat_ok = np.array(ok) * 1000.0 if ok else np.array([float("nan")])
    return {"rate": rate, "sent": n_total, "wall_s": wall, "statuses": statuses, "ok": len(ok),
            "ids": [rid for status, _, rid in results if status == 200],
            "throughput": len(ok) / wall, "p50_ok": float(np.percentile(lat_ok, 50)),
            "p99_ok": float(np.percentile(lat_ok, 99)), "max_all": float(lat_all.max()),
            "rss_start": rss[0] if rss else float("nan"), "rss_max": max(rss) if rss else float("nan"),
            "rss_end": rss[-1] if rss else float("nan"), "lag_p99": 1000.0 * float(np.percentile(lags, 99))}


def store_users(model: str) -> list[str]:
    db = resolve_sources(model).db
    with duckdb.connect(str(db), read_only=True) as con:
        return [r[0] for r in con.sql("SELECT DISTINCT user_id FROM raw_interactions ORDER BY user_id").fetchall()]


def run_one(name: str, model: str, mode_name: str, mode: dict, args, work: Path) -> list[dict]:
    log_dir = work / f"log-{name}-{mode_name}"
    proc, url = start_server(model, mode, log_dir, work / f"server-{name}-{mode_name}.out", args)
    users = store_users(model)
    rows = []
    with httpx.Client(base_url=url, timeout=60) as warm:
        for c in range(WARMUP):  # first calls pay one-off costs (allocator, caches); logged, not measured
            warm.get(f"/recommend/{users[c]}").raise_for_status()
    try:
        for clients in args.clients:
            r = asyncio.run(level(url, users, clients, args.requests, args.max_seconds, args.k))
            r.update(model=name, batching=mode_name)
            rows.append(r)
            print(f"  {name} {mode_name} c={clients}: {r['ok']}/{r['requests']} ok, p50 {r['p50']:.1f} ms, "
                  f"{r['throughput']:.1f} req/s, mean batch {r['mean_batch']:.1f}", file=sys.stderr, flush=True)
        if args.open_factor and rows:
            sustained = max(r["throughput"] for r in rows if r["batching"] == mode_name)
            rate = min(args.open_factor * sustained, args.open_max_rate)
            r = asyncio.run(open_loop(url, users, rate, args.open_seconds, args.k, proc.pid))
            r.update(model=name, batching=mode_name, clients=f"open {args.open_factor:g}x", sustained=sustained,
                     open=True)
            rows.append(r)
            print(f"  {name} {mode_name} open loop {r['rate']:.0f}/s: {r['statuses']}, p99 2xx {r['p99_ok']:.0f} ms, "
                  f"slowest {r['max_all']:.0f} ms, RSS {r['rss_start']:.0f} -> {r['rss_max']:.0f} MB", file=sys.stderr,
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(120)
    logged = duckdb.sql(f"SELECT request_id FROM read_parquet('{log_dir}/**/*.parquet')").fetchall()
    logged_ids = [r[0] for r in logged]
    warmup = len(logged_ids) - sum(r["ok"] for r in rows)
    logged_set = set(logged_ids)
    for r in rows:
        r["log_ok"] = set(r["ids"]) <= logged_set and len(r["ids"]) == len(set(r["ids"]))
        r["log_rows"] = sum(1 for i in r["ids"] if i in logged_set)
    if warmup != WARMUP or len(logged_set) != len(logged_ids):
        for r in rows:
            r["log_ok"] = False  # rows for requests nobody received, or duplicates
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=400, help="at most this many requests per level")
    p.add_argument("--max-seconds", type=float, default=60.0, help="... or stop a level after this long")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batched", default="32,5", help="max_batch,max_wait_ms of the batched mode")
    p.add_argument("--modes", nargs="+", default=["batched", "unbatched"])
    p.add_argument("--device", help="override the checkpoints' device")
    p.add_argument("--threads", type=int, help="torch intra-op threads of each server (default: torch's)")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), help="LLM trunk precision (default: serve.precision)")
    p.add_argument("--open-max-rate", type=float, default=800.0,
                   help="cap of the open-loop arrival rate: one Python client process on this box cannot send faster "
                        "without falling behind its schedule (the lag column says whether it kept up)")
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--open-factor", type=float, default=4.0,
                   help="then open-loop arrivals at this many times the best closed-loop throughput (0: skip)")
    p.add_argument("--open-seconds", type=float, default=15.0)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    batch, wait = args.batched.split(",")
    modes = {"batched": {"max_batch": int(batch), "max_wait_ms": float(wait)},
             "unbatched": {"max_batch": 1, "max_wait_ms": 0.0}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for spec in args.model:
            name, _, model = spec.partition("=")
            for mode_name in args.modes:
                rows += run_one(name, model, mode_name, modes[mode_name], args, Path(tmp))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible; clients and server on the same host; "
          f"k={args.k}; <= {args.requests} requests or {args.max_seconds:.0f} s per level; "
          f"batched = max_batch {batch}, max_wait {wait} ms; unbatched = max_batch 1; "
          f"torch threads {args.threads or 'default'}\n")
    closed, opened = [r for r in rows if not r.get("open")], [r for r in rows if r.get("open")]
    print("| model | batching | clients | requests | 2xx | p50 ms | p95 ms | p99 ms | req/s | mean batch "
          "| server ms (mean) | log rows == 2xx |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in closed:
        print(f"| {r['model']} | {r['batching']} | {r['clients']} | {r['requests']} | {r['ok']} | {r['p50']:.1f} | "
              f"{r['p95']:.1f} | {r['p99']:.1f} | {r['throughput']:.1f} | {r['mean_batch']:.2f} | {r['server_ms']:.1f} | "
              f"{'yes' if r['log_ok'] and r['log_rows'] == r['ok'] else 'NO'} ({r['log_rows']}) |")
    if opened:
        print(f"\nOpen loop: arrivals every 1/rate s for {args.open_seconds:g} s at {args.open_factor:g}x the best "
              "closed-loop throughput; serve.timeout_ms / max_queue from --params; RSS of the server process\n")
        print("| model | batching | sustained req/s | offered req/s | sent | 2xx | 503 | other | 2xx req/s | "
              "p50 2xx ms | p99 2xx ms | slowest answer ms | client lag p99 ms | RSS start → max → end MB | "
              "log rows == 2xx |")
        print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
        for r in opened:
            other = {k: v for k, v in r["statuses"].items() if k not in (200, 503)}
            print(f"| {r['model']} | {r['batching']} | {r['sustained']:.1f} | {r['rate']:.1f} | {r['sent']} | {r['ok']} | "
                  f"{r['statuses'].get(503, 0)} | {other or '-'} | {r['throughput']:.1f} | {r['p50_ok']:.0f} | "
                  f"{r['p99_ok']:.0f} | {r['max_all']:.0f} | {r['lag_p99']:.0f} | {r['rss_start']:.0f} → {r['rss_max']:.0f} → "
                  f"{r['rss_end']:.0f} | {'yes' if r['log_ok'] and r['log_rows'] == r['ok'] else 'NO'} ({r['log_rows']}) |")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "ids"} for r in rows], indent=2))
    return 0 if all(r["log_ok"] and r["log_rows"] == r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
