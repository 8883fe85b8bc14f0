"""Starts `slmrec serve` processes quickly, for the kill tests: imports once, then forks one server per line.

    python server_zygote.py          # stdin: one JSON list of `slmrec serve` arguments a line
                                     # stdout: the pid of each forked server, a line each

Each child is a real server process running `slmrec.cli.main(["serve", ...])`, the code path of the
command line; only the interpreter start and the imports (~10 s here, mostly torch / transformers)
are paid once instead of once per trial. The parent imports but never runs torch, so no thread
exists at the fork.
"""

import json
import os
import signal
import sys

import slmrec.serve.app  # noqa: F401 - the imports a server needs, paid once
import slmrec.serve.recommender  # noqa: F401
import uvicorn  # noqa: F401
from slmrec import cli

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel: the test polls their pid
for line in sys.stdin:
    args = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(args.pop(0), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os._exit(cli.main(["serve", *args]) or 0)
    print(pid, flush=True)
