"""CLI: `slmrec train {sasrec,teacher,student}`, `slmrec evaluate`, `slmrec report`, `slmrec experiment`.

Exit codes: 0 ok; 2 bad input (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from slmrec.config import load_params

EXPECTED = (ValueError, FileNotFoundError)
MODEL_NAMES = ("sasrec", "teacher", "student_nokd", "student")


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train one model of the chain")
    train.add_argument("model", choices=("sasrec", "teacher", "student"))
    train.add_argument("--params", default="params.yaml")
    train.add_argument("--splits", default="data/splits")
    train.add_argument("--sasrec", default="models/sasrec", help="SASRec model dir (its item table is frozen input)")
    train.add_argument("--teacher", help="teacher model dir: distill the student from it (omit = student_nokd)")
    train.add_argument("--out", required=True, help="model directory to write (model.pt, train.json, card.json)")
    train.add_argument("--runs", default="runs", help="resumable working checkpoints")
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="test metrics of trained models (full ranking + sampled, with CIs)")
    ev.add_argument("--params", default="params.yaml")
    ev.add_argument("--splits", default="data/splits")
    ev.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="repeatable")
    ev.add_argument("--out", default="results/metrics.json")
    ev.add_argument("--table", default="results/results.md")
    ev.add_argument("--curves", help="folder for per-model validation curves (CSV, DVC plots)")
    ev.add_argument("--device", help="override the device recorded in the checkpoints (e.g. cpu); never the dtype")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    it = sub.add_parser("item-text", help="encode every item's text once with the frozen backbone (issue 19)")
    it.add_argument("--params", default="params.yaml")
    it.add_argument("--splits", default="data/splits")
    it.add_argument("--interactions", default="data/interactions", help="ingest snapshot (its items.parquet)")
    it.add_argument("--out", default=None, help="default: item_text.out_dir")
    it.add_argument("--report", help="JSON with the counts and the timings (s per 1,000 items)")
    it.add_argument("--json", action="store_true")
    it.set_defaults(func=cmd_item_text)

    cs = sub.add_parser("cold-split", help="a split dir with a seeded share of items cold (issue 19)")
    cs.add_argument("--splits", default="data/splits")
    cs.add_argument("--out", required=True)
    cs.add_argument("--share", type=float, default=0.1)
    cs.add_argument("--seed", type=int, default=2025)
    cs.set_defaults(func=cmd_cold_split)

    ce = sub.add_parser("cold-eval", help="metrics on cold and warm test targets, per model and popularity")
    ce.add_argument("--params", default="params.yaml")
    ce.add_argument("--splits", required=True, help="a split dir made by cold-split (the models trained on it)")
    ce.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="repeatable")
    ce.add_argument("--out", help="JSON")
    ce.add_argument("--table", help="markdown")
    ce.add_argument("--json", action="store_true")
    ce.set_defaults(func=cmd_cold_eval)

    par = sub.add_parser("parallel-stages", help="run independent DVC stages at once, ahead of `dvc repro`")
    par.add_argument("stages", nargs="+", help="stage names in dvc.yaml whose dependencies are all up to date")
    par.add_argument("--dvc-yaml", default="dvc.yaml")
    par.set_defaults(func=cmd_parallel_stages)

    rep = sub.add_parser("report", help="print the results table of the last evaluation")
    rep.add_argument("--params", default="params.yaml")
    rep.add_argument("--table", default="results/results.md")
    rep.set_defaults(func=cmd_report)

    exp = sub.add_parser("experiment", help="the whole chain on one file, outside Dagster/DVC")
    exp.add_argument("--profile", choices=("tiny", "smol", "hf"), required=True)
    exp.add_argument("--format", required=True)
    exp.add_argument("--path", required=True)
    exp.add_argument("--items")
    exp.add_argument("--column-map", help="events: user_id=uid,item_id=iid,ts=time")
    exp.add_argument("--hf-path", help="local HF checkpoint for --profile hf")
    exp.add_argument("--out", required=True, help="folder for the store, splits, models and results")
    exp.add_argument("--models", nargs="+", metavar="NAME",
                     help="train only these (chain order; parents included), e.g. --models sasrec")
    exp.add_argument("--max-users", type=int, help="keep a deterministic sample of this many users")
    exp.add_argument("--params", default=None, help="base params.yaml (default: built-in defaults for the profile)")
    exp.add_argument("--json", action="store_true")
    exp.set_defaults(func=cmd_experiment)


def _fail(command: str, err: BaseException) -> int:
    print(f"slmrec {command}: error: {err}", file=sys.stderr)
    return 2


def _log_to_stderr(json_mode: bool):
    """Progress lines, flushed (DVC and Dagster read them through a pipe); stderr when stdout carries JSON."""
    stream = sys.stderr if json_mode else sys.stdout
    return lambda msg: print(msg, file=stream, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """One process, or one rank of `torchrun --nproc_per_node N -m slmrec.cli train ...` (gloo on CPU,
    nccl on GPU): every rank runs the same stage, fit() shards the batches, rank 0 writes and prints."""
    from slmrec.stages.models import train_llm, train_sasrec
    from slmrec.train.distributed import cleanup, init_from_env

    info = init_from_env()
    log = _log_to_stderr(args.json) if info.is_main else (lambda _: None)
    if info.distributed:
        log(f"torchrun: {info.world_size} processes ({'nccl' if info.device.type == 'cuda' else 'gloo'})")
    try:
        params = load_params(args.params)
        if args.model == "sasrec":
            summary = train_sasrec(args.splits, params, args.out, args.runs, log=log)
        else:
            teacher = args.teacher if args.model == "student" else None
            summary = train_llm(args.model, args.splits, params, args.out, args.sasrec, teacher, args.runs, log=log)
    except EXPECTED as err:
        return _fail("train", err)
    finally:
        cleanup()
    if not info.is_main:
        return 0
    summary = {k: v for k, v in summary.items() if k != "history"}
    print(json.dumps(summary) if args.json else
          f"{summary['model']}: best valid {summary['best_valid']} in {summary['train_seconds']:.1f} s -> {args.out}")
    return 0


def cmd_item_text(args: argparse.Namespace) -> int:
    from slmrec.stages.item_text import build_item_text

    log = _log_to_stderr(args.json)
    try:
        params = load_params(args.params)
        meta = build_item_text(args.splits, args.interactions, params, args.out or params.item_text.out_dir, log=log)
        if args.report:
            from slmrec.lineage import atomic_write_text

            atomic_write_text(args.report, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    except EXPECTED as err:
        return _fail("item-text", err)
    print(json.dumps(meta) if args.json else f"item text table: {meta['n_items']} items, key {meta['key']}")
    return 0


def cmd_cold_split(args: argparse.Namespace) -> int:
    from slmrec.eval.cold import make_cold_splits

    try:
        info = make_cold_splits(args.splits, args.out, args.share, args.seed)
    except EXPECTED as err:
        return _fail("cold-split", err)
    print(json.dumps(info))
    return 0


def cmd_cold_eval(args: argparse.Namespace) -> int:
    from slmrec.eval.cold import cold_evaluate

    log = _log_to_stderr(args.json)
    try:
        result = cold_evaluate(args.splits, load_params(args.params), parse_models(args.model), args.out, args.table,
                               log=log)  # fmt: skip
    except EXPECTED as err:
        return _fail("cold-eval", err)
    table = result.pop("table")
    print(json.dumps(result) if args.json else table)
    return 0


def parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model wants NAME=DIR, got {spec!r}")
        models[name] = path
    return models


def cmd_evaluate(args: argparse.Namespace) -> int:
    from slmrec.stages.models import evaluate_models

    log = _log_to_stderr(args.json)
    try:
        summary = evaluate_models(args.splits, load_params(args.params), parse_models(args.model), args.out,
                                  args.table, curves_dir=args.curves, log=log, device=args.device)
    except EXPECTED as err:
        return _fail("evaluate", err)
    table = summary.pop("table")
    print(json.dumps(summary) if args.json else table)
    return 0


def cmd_parallel_stages(args: argparse.Namespace) -> int:
    from slmrec.stages.parallel import parallel_stages

    dvc = [os.environ.get("SLMREC_DVC") or "dvc"]
    try:
        failed = parallel_stages(args.stages, dvc, args.dvc_yaml, log=lambda line: print(line, flush=True))
    except (ValueError, RuntimeError) as err:
        return _fail("parallel-stages", err)
    if failed:
        print(f"parallel-stages: failed: {', '.join(failed)} (the others' finished runs are kept in runs/)",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    table = Path(args.table)
    if not table.exists():
        return _fail("report", FileNotFoundError(f"{table} missing: run the pipeline first (make demo / dvc repro)"))
    print(table.read_text())
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from slmrec.stages.experiment import run_experiment

    log = _log_to_stderr(args.json)
    try:
        summary = run_experiment(args, log=log)
    except EXPECTED as err:
        return _fail("experiment", err)
    table = summary.pop("table")
    print(json.dumps(summary) if args.json else table)
    return 0
