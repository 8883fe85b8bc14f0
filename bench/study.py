"""The lever study of issue 9: one change to params.yaml at a time, judged on VALIDATION only.

`run` writes a params variant (a base params file plus `--set group.key=value` overrides, values read as
YAML: `null`, `[q_proj, v_proj]`, `3e-4`) under runs/study/NAME/ and trains one LLM model with it through
`slmrec train` (its resume, early stopping and best-checkpoint selection unchanged). `table` reads every
run's train.json and prints the per-epoch validation NDCG@10 table with the overrides that made each row.

    python bench/study.py run t_epochs6 --model teacher --set train_llm.epochs=6
    python bench/study.py run s_kl --model student --teacher models/teacher --set distill.lambda_kl=1.0
    python bench/study.py table --runs runs/study --baseline models > bench/results/ml100k_levers.md

Test metrics are never read here: the levers are chosen on validation, then the chosen profile is scored
on test once (bench/eval_parts.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import yaml

from slmrec.config import Params, load_params
from slmrec.eval.evaluator import protocol_text
from slmrec.lineage import atomic_write_text


def with_overrides(base: dict, sets: list[str]) -> dict:
    """A deep copy of `base` with each `group.key=value` applied (value parsed as YAML)."""
    out = copy.deepcopy(base)
    for spec in sets:
        key, sep, raw = spec.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise SystemExit(f"--set {spec!r}: expected group.key=value, e.g. train_llm.epochs=6")
        group, name = parts
        if group not in out or not isinstance(out[group], dict):
            raise SystemExit(f"--set {spec!r}: params has no group {group!r} (groups: {sorted(out)})")
        value = check_type(group, name, yaml.safe_load(raw))
        out[group][name] = value
    return out


def _fits(value, hint) -> bool:
    """Whether `value` (from YAML) fits the dataclass field type `hint` (the types params.yaml uses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def check_type(group: str, name: str, value):
    """`value` as the field `group.name` takes it; a value of another type exits naming the expected one."""
    groups = typing.get_type_hints(Params)
    if group not in groups:
        raise SystemExit(f"--set {group}.{name}: params.yaml has no typed group {group!r}")
    fields = typing.get_type_hints(groups[group])
    if name not in fields:
        raise SystemExit(f"--set {group}.{name}: {group} has no key {name!r} (keys: {sorted(fields)})")
    if isinstance(value, str) and not _fits(value, fields[name]) and _fits(1.0, fields[name]):
        try:
            value = float(value)  # PyYAML reads `3e-4` (no dot) as a string
        except ValueError:
            pass  # not a number either: the check below names the expected type
    if not _fits(value, fields[name]):
        raise SystemExit(f"--set {group}.{name}={value!r}: expected {fields[name]}")
    return value


def run(args: argparse.Namespace) -> int:
    out = Path(args.runs) / args.name
    base = yaml.safe_load(Path(args.params).read_text())
    params = with_overrides(base, args.set)
    params_path = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    text = f"# bench/study.py run {args.name}: {args.params} with {' '.join(args.set) or 'no change'}\n"
    text += yaml.safe_dump(params, sort_keys=False)
    if params_path.exists() and params_path.read_text() != text:
        raise SystemExit(f"{params_path} exists with other overrides: pick another name or delete {out}")
    atomic_write_text(params_path, text)
    load_params(params_path)  # typed check of every override before any training starts
    kind = "teacher" if args.model == "teacher" else "student"
    cmd = [sys.executable, "-m", "slmrec.cli", "train", kind, "--params", str(params_path),
           "--splits", args.splits, "--sasrec", args.sasrec,
           "--out", str(out / "models" / args.model), "--runs", str(out / "runs")]
    if args.model == "student":
        if not args.teacher:
            raise SystemExit("--model student (distilled) needs --teacher DIR")
        cmd += ["--teacher", args.teacher]
    elif args.teacher:
        raise SystemExit(f"--teacher is only for --model student, not {args.model}")
    meta = {"name": args.name, "model": args.model, "params": args.params, "set": args.set,
            "teacher": args.teacher, "sasrec": args.sasrec, "splits": args.splits, "command": cmd}
    atomic_write_text(out / f"{args.model}.run.json", json.dumps(meta, indent=2))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)


def curve(train_json: Path) -> tuple[list[float], dict, float]:
    d = json.loads(train_json.read_text())
    return [h["valid/ndcg@10"] for h in d["history"]], d["best_valid"], d["seconds_per_epoch"]


def table(args: argparse.Namespace) -> int:
    rows = []
    if args.baseline:
        for model in ("teacher", "student_nokd", "student"):
            tj = Path(args.baseline) / model / "train.json"
            if tj.exists():
                rows.append(("demo (params.yaml)", model, "—", *curve(tj)))
    for meta_path in sorted(Path(args.runs).glob("*/*.run.json")):
        meta = json.loads(meta_path.read_text())
        tj = meta_path.parent / "models" / meta["model"] / "train.json"
        if not tj.exists():  # still training (or failed): no row until its train.json is written
            print(f"study table: {meta['name']} ({meta['model']}) has no train.json yet: not in the table", file=sys.stderr)
            continue
        sets = " ".join(f"`{s}`" for s in meta["set"]) or "—"
        if Path(meta["params"]).name != "params.yaml":  # a profile file, not the demo's params
            sets = f"`{meta['params']}`" + ("" if sets == "—" else f" + {sets}")
        if meta["teacher"]:
            sets += f" (teacher: `{meta['teacher']}`)"
        rows.append((meta["name"], meta["model"], sets, *curve(tj)))
    print("Validation NDCG@10 per epoch from each run's train.json (the split's validation users, "
          f"{protocol_text(load_params(args.params).eval)}); best = the checkpoint each run keeps; test not read.\n")
    print("| run | model | change vs params.yaml (or the profile it starts from) | valid NDCG@10 per epoch | best (epoch) | s/epoch |")
    print("|---|---|---|---|---|---:|")
    for name, model, sets, values, best, spe in rows:
        per_epoch = " / ".join(f"{v:.4f}" for v in values)
        print(f"| {name} | {model} | {sets} | {per_epoch} | {best['metric']:.4f} ({best['epoch']}) | {spe:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one model with one params variant")
    r.add_argument("name")
    r.add_argument("--model", required=True, choices=["teacher", "student_nokd", "student"])
    r.add_argument("--set", action="append", default=[], metavar="GROUP.KEY=VALUE")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--splits", default="data/splits")
    r.add_argument("--sasrec", default="models/sasrec")
    r.add_argument("--teacher", default=None)
    r.add_argument("--runs", default="runs/study")
    t = sub.add_parser("table", help="validation table of every run under --runs")
    t.add_argument("--runs", default="runs/study")
    t.add_argument("--baseline", default=None, help="models dir of the demo run (its rows first)")
    t.add_argument("--params", default="params.yaml", help="its eval section names the protocol")
    args = p.parse_args(argv)
    return run(args) if args.cmd == "run" else table(args)


if __name__ == "__main__":
    raise SystemExit(main())
