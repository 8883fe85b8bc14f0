"""CLI: `slmrec recommend` (batch top-K to Parquet/DuckDB) and `slmrec serve` (the HTTP service).

Exit codes: 0 ok; 2 bad input (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from slmrec.config import load_params
from slmrec.serve.history import StoreBusy

EXPECTED = (ValueError, FileNotFoundError, StoreBusy)
PRECISIONS = ("fp32", "bf16", "int8")  # slmrec.models.inference.INFERENCE_MODES (not imported: CLI start-up)


def _fail(command: str, err: BaseException) -> int:
    print(f"slmrec {command}: error: {err}", file=sys.stderr)
    return 2


def add_commands(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recommend", help="batch top-K recommendations of a model to Parquet (and DuckDB)")
    rec.add_argument("--model", help="model directory (default: the one models/promoted.json names)")
    rec.add_argument("--splits", help="splits dir (default: the model card's parent)")
    rec.add_argument("--db", help="DuckDB store with raw_interactions (default: through the splits' lineage)")
    rec.add_argument("--k", type=int, help="list length (default: serve.k)")
    rec.add_argument("--out", required=True, help="Parquet file to write")
    rec.add_argument("--users", help="file with one user id a line (default: all users in the store)")
    rec.add_argument("--day", help="YYYY-MM-DD: only the users active that day (UTC), with their histories as of the "
                     "end of that day (point in time); also the partition label")
    rec.add_argument("--partition", help="partition label (default: --day, else today's UTC date)")
    rec.add_argument("--duckdb", help="also replace this partition in table `recommendations` of this DuckDB file")
    rec.add_argument("--device", help="override the checkpoint's device (e.g. cpu)")
    rec.add_argument("--precision", choices=PRECISIONS, help="LLM trunk precision; default: serve.precision")
    rec.add_argument("--params", default="params.yaml")
    rec.add_argument("--root", default=".", help="relative paths in cards and promoted.json resolve against this")
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=cmd_recommend)
    add_serve_command(sub)
    add_rollback_command(sub)


def _params(path: str):
    """params.yaml when present (serve/eval/promotion groups); built-in defaults otherwise."""
    from slmrec.config import Params

    return load_params(path) if Path(path).is_file() else Params()


def record_path(args: argparse.Namespace, params) -> Path:
    record = Path(params.promotion.record)
    return record if record.is_absolute() else Path(args.root) / record


def model_dir_from_args(args: argparse.Namespace, params) -> tuple[Path, dict | None]:
    """(model directory, promotion record or None when --model pins one)."""
    from slmrec.serve.sources import read_promoted

    if args.model:
        return Path(args.model), None
    return read_promoted(record_path(args, params), args.root, Path(args.root) / params.serve.models_dir)


def check_promoted(rec, record: dict | None, where: Path) -> None:
    """A followed record must name the bytes that were loaded (hashed as loaded, sources.resolve_sources)."""
    if record is not None and record["content_hash"] != rec.model_hash:
        raise ValueError(f"{where} records {record['content_hash'][:12]}…, the deployment it names hashes to "
                         f"{rec.model_hash[:12]}…: refusing to serve an unpromoted model (slmrec rollback, or promote again)")


def cmd_recommend(args: argparse.Namespace) -> int:
    from slmrec.serve.batch import run_batch
    from slmrec.serve.recommender import Recommender

    try:
        params = _params(args.params)
        k = args.k if args.k is not None else params.serve.k
        if not 1 <= k <= params.serve.max_k:
            raise ValueError(f"--k must be in 1..{params.serve.max_k} (serve.max_k), got {k}")
        partition = args.partition or args.day or dt.datetime.now(dt.timezone.utc).date().isoformat()
        model_dir, record = model_dir_from_args(args, params)
        rec = Recommender.load(model_dir, args.splits, args.db, root=args.root,
                               device=args.device, eval_cfg=params.eval, cold_start=params.serve.cold_start,
                               precision=args.precision or params.serve.precision, new_items=params.serve.new_items)
        check_promoted(rec, record, record_path(args, params))
        summary = run_batch(rec, k, args.out, partition, day=args.day, users_file=args.users,
                            duckdb_file=args.duckdb)
    except EXPECTED as err:
        return _fail("recommend", err)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['rows']} rows for {summary['users_scored']} users (partition {partition}, "
              f"model {summary['model'][:12]}) -> {args.out}")
    return 0


def add_rollback_command(sub: argparse._SubParsersAction) -> None:
    rb = sub.add_parser("rollback", help="re-promote the deployment that served before the current one")
    rb.add_argument("--to", help="a content hash (prefix) from models/promotions.jsonl instead of the previous one")
    rb.add_argument("--why", default="manual rollback", help="recorded in the promotion history")
    rb.add_argument("--params", default="params.yaml")
    rb.add_argument("--root", default=".", help="relative paths in promoted.json resolve against this")
    rb.set_defaults(func=cmd_rollback)


def cmd_rollback(args: argparse.Namespace) -> int:
    from slmrec.serve.deploy import operator, rollback

    try:
        params = _params(args.params)
        record = rollback(record_path(args, params), operator(), args.why, to=args.to, root=args.root,
                          models_dir=Path(args.root) / params.serve.models_dir)
    except EXPECTED as err:
        return _fail("rollback", err)
    print(f"rolled back: {record['model']} {record['content_hash'][:12]} ({record['deployment']}) is promoted; "
          "a running `slmrec serve` picks it up within serve.reload_poll_seconds")
    return 0


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("serve", help="HTTP service: top-K recommendations (FastAPI + uvicorn)")
    srv.add_argument("--model", help="model directory (pinned); default: follow models/promoted.json, hot reload")
    srv.add_argument("--splits", help="splits dir of the first model (default: through its card)")
    srv.add_argument("--db", help="DuckDB store with raw_interactions (default: through the splits' lineage)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--log", help="answer log folder (default: serve.log_dir)")
    srv.add_argument("--params", default="params.yaml")
    srv.add_argument("--root", default=".", help="relative paths in cards and promoted.json resolve against this")
    srv.add_argument("--device", help="override the checkpoint's device (e.g. cpu)")
    srv.add_argument("--max-batch", type=int, help="micro-batch size (default: serve.max_batch; 1 = no batching)")
    srv.add_argument("--max-wait-ms", type=float, help="micro-batch wait (default: serve.max_wait_ms)")
    srv.add_argument("--cold-start", choices=("error", "popular"), help="default: serve.cold_start")
    srv.add_argument("--precision", choices=PRECISIONS, help="LLM trunk precision; default: serve.precision")
    srv.add_argument("--poll-seconds", type=float, help="promotion record / store poll (default: serve.reload_poll_seconds)")
    srv.add_argument("--access-log", action="store_true", help="uvicorn's per-request access log (off: it costs)")
    srv.add_argument("--threads", type=int, help="torch intra-op threads of the inference thread (default: torch's; "
                     "1 keeps latency steady on a shared CPU)")
    srv.set_defaults(func=cmd_serve)


def serve_config(args: argparse.Namespace, params):
    import dataclasses

    cfg = params.serve
    overrides = {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "cold_start": args.cold_start,
                 "reload_poll_seconds": args.poll_seconds, "log_dir": args.log, "precision": args.precision}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.max_batch < 1 or cfg.max_wait_ms < 0 or cfg.reload_poll_seconds <= 0 or not 1 <= cfg.k <= cfg.max_k:
        raise ValueError(f"serve: need max_batch >= 1, max_wait_ms >= 0, reload_poll_seconds > 0, 1 <= k <= max_k: {cfg}")
    bounds = {"max_queue": cfg.max_queue, "timeout_ms": cfg.timeout_ms, "max_concurrency": cfg.max_concurrency,
              "max_body_bytes": cfg.max_body_bytes, "max_item_id_chars": cfg.max_item_id_chars,
              "log_max_queue": cfg.log_max_queue, "log_timeout_ms": cfg.log_timeout_ms}
    bad = {name: value for name, value in bounds.items() if not value > 0}
    if bad or cfg.echo_unknown < 0:
        raise ValueError(f"serve: these bounds must be > 0 (echo_unknown >= 0): {bad or {'echo_unknown': cfg.echo_unknown}}")
    return cfg


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from slmrec.serve.app import ServerState, create_app
    from slmrec.serve.recommender import Recommender, canary

    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        params = _params(args.params)
        cfg = serve_config(args, params)
        model_dir, record = model_dir_from_args(args, params)
        options = dict(root=args.root, device=args.device, eval_cfg=params.eval, cold_start=cfg.cold_start,
                       precision=cfg.precision, new_items=cfg.new_items)
        rec = Recommender.load(model_dir, args.splits, args.db, **options)
        check_promoted(rec, record, record_path(args, params))
        problem = canary(rec, cfg.k)
        if problem is not None:
            raise ValueError(f"{model_dir}: refusing to serve a model that fails the canary query: {problem}")
    except EXPECTED as err:
        return _fail("serve", err)
    promoted = promoted_hash = None
    if not args.model:
        promoted, promoted_hash = record_path(args, params), rec.model_hash  # checked against the record above
    state = ServerState(
        rec=rec, cfg=cfg, log_dir=Path(cfg.log_dir), promoted=promoted, root=Path(args.root),
        promoted_hash=promoted_hash,
        # a promoted model is a new training run: its splits come from its own card (--db still applies)
        loader=lambda d: Recommender.load(d, None, args.db, **options),
    )
    print(f"slmrec serve: model {rec.model_hash[:12]} ({model_dir}), "
          f"{'following ' + str(promoted) if promoted else 'pinned'}, answer log {cfg.log_dir}, "
          f"micro-batch {cfg.max_batch} / {cfg.max_wait_ms} ms", file=sys.stderr, flush=True)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info", access_log=args.access_log,
                timeout_graceful_shutdown=30, limit_concurrency=cfg.max_concurrency)
    return 0
