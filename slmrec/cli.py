"""`slmrec` command line. Each package registers its own sub-commands here.

A module listed in COMMAND_MODULES defines `add_commands(subparsers)`; each sub-command sets
`func=callable(args) -> int` with `set_defaults`. The CLI is the one entry point that DVC
stages, Dagster assets (through the same functions) and users share.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "slmrec.data.commands",  # data fetch, ingest, sequences
    "slmrec.stages.commands",  # train-sasrec, train-teacher, train-student, evaluate, experiment
    "slmrec.lineage",  # lineage
    "slmrec.serve.commands",  # recommend, serve
    "slmrec.monitor.commands",  # monitor, monitor-reference
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real import error inside the module: surface it
                raise
            continue  # package not built yet
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
