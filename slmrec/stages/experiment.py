"""`slmrec experiment`: the whole chain on one file, for a user trying the method on their own data.

ingest (fresh store, quarantine) -> splits -> SASRec -> teacher -> student_nokd -> distilled student
-> test metrics with paired-bootstrap CIs. Everything lands in `--out`; nothing outside it changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Callable

from slmrec.config import DataConfig, Params, load_params
from slmrec.data.commands import parse_column_map
from slmrec.stages.data import rebuild_store, sequences_stage
from slmrec.lineage import atomic_write_text
from slmrec.models.item_side import side_needs_text
from slmrec.stages.item_text import build_item_text
from slmrec.stages.models import evaluate_models, train_llm, train_sasrec

# Layer counts per profile: the paper's 8 -> 4 with B = 4 where the backbone has the depth.
PROFILE_DEFAULTS = {
    "tiny": dict(llm=dict(teacher_layers=4, student_layers=2), distill=dict(blocks=2)),
    "smol": dict(llm=dict(teacher_layers=8, student_layers=4), distill=dict(blocks=4)),
    "hf": dict(llm=dict(teacher_layers=8, student_layers=4), distill=dict(blocks=4)),
}


def experiment_params(args: argparse.Namespace) -> Params:
    params = load_params(args.params) if args.params else Params()
    preset = PROFILE_DEFAULTS[args.profile]
    llm = dataclasses.replace(params.llm, profile=args.profile, hf_path=args.hf_path or params.llm.hf_path,
                              **preset["llm"])
    distill = dataclasses.replace(params.distill, **preset["distill"])
    if args.profile == "hf" and not llm.hf_path:
        raise ValueError("--profile hf needs --hf-path (a local Hugging Face Llama-family checkpoint directory)")
    return dataclasses.replace(params, llm=llm, distill=distill)


CHAIN = ("sasrec", "teacher", "student_nokd", "student")
NEEDS = {"teacher": "sasrec", "student_nokd": "sasrec", "student": "teacher"}


def chosen_models(names: list[str] | None) -> list[str]:
    """The models to train, in chain order (default: all four); each one's parent must be chosen too."""
    names = list(CHAIN) if not names else names
    unknown = sorted(set(names) - set(CHAIN))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(CHAIN)}")
    missing = [f"{n} needs {NEEDS[n]}" for n in names if n in NEEDS and NEEDS[n] not in names]
    if missing:
        raise ValueError("--models: " + "; ".join(missing))
    return [n for n in CHAIN if n in names]


def run_experiment(args: argparse.Namespace, log: Callable = print) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = experiment_params(args)

    data = DataConfig(
        format=args.format, path=args.path, items=args.items or None, db=str(out / "warehouse.duckdb"),
        column_map=parse_column_map(args.column_map) if args.column_map else {},
        landing_dir=str(out / "landing"), snapshot_dir=str(out / "interactions"),
    )
    ingest_report = rebuild_store(data, data.snapshot_dir)
    log(f"ingested {ingest_report['accepted']} interactions ({ingest_report['quarantined']} quarantined)")
    interactions = Path(data.snapshot_dir)
    seq_cfg = dataclasses.replace(params.sequences, out_dir=str(out / "splits"))
    # --max-users: sampled from the k-cored data, not re-filtered (slmrec/data/sequences.py: sample_users)
    stats = sequences_stage(str(interactions), seq_cfg, max_users=args.max_users or None)
    log(f"splits: {stats['n_users']} users, {stats['n_items']} items, {stats['n_interactions']} interactions")

    splits, models, runs = seq_cfg.out_dir, out / "models", str(out / "runs")
    if side_needs_text(params.sasrec.item_side) or side_needs_text(params.llm.item_side):  # issue 19
        item_text = dataclasses.replace(params.item_text, out_dir=str(out / "item_text"),
                                        runs_dir=str(out / "runs" / "item_text"))  # fmt: skip
        params = dataclasses.replace(params, item_text=item_text)
        build_item_text(splits, str(interactions), params, item_text.out_dir, log=log)
    chosen = chosen_models(getattr(args, "models", None))
    dirs = {name: str(models / name) for name in chosen}
    trainers = {
        "sasrec": lambda: train_sasrec(splits, params, dirs["sasrec"], runs, log=log),
        "teacher": lambda: train_llm("teacher", splits, params, dirs["teacher"], dirs["sasrec"], None, runs, log=log),
        "student_nokd": lambda: train_llm("student", splits, params, dirs["student_nokd"], dirs["sasrec"], None, runs,
                                          log=log),
        "student": lambda: train_llm("student", splits, params, dirs["student"], dirs["sasrec"], dirs["teacher"], runs,
                                     log=log),
    }
    for name in chosen:
        trainers[name]()
    summary = evaluate_models(splits, params, dirs, str(out / "metrics.json"), str(out / "results.md"), log=log)
    summary["dataset"] = {k: stats[k] for k in ("n_users", "n_items", "n_interactions", "dataset_hash")}
    summary["ingest"] = {k: ingest_report[k] for k in ("rows_read", "accepted", "quarantined", "quarantine_reasons",
                                                       "catalog_items", "catalog_quarantined")}
    summary["profile"] = args.profile
    summary["out"] = str(out)
    atomic_write_text(out / "experiment.json", json.dumps({k: v for k, v in summary.items() if k != "table"},
                                                          indent=2) + "\n")
    return summary
