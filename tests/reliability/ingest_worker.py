"""`slmrec ingest ...` without loading every other command (the full CLI imports torch and friends).

    python ingest_worker.py --format seqtxt --path F --db D [--json] [--lock-timeout S]

Runs the same `cmd_ingest` the `slmrec ingest` entry point runs; prints "started" first so a
parent knows the interpreter is up before it times a kill.
"""

import argparse
import sys

from slmrec.data import commands

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="slmrec")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ingest", *sys.argv[1:]])
    print("started", file=sys.stderr, flush=True)
    sys.exit(args.func(args))
