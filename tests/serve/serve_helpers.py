"""A tiny-profile pipeline for the serving tests: `slmrec experiment` on a planted events file.

Users u0..u39 walk a ring of 30 items (ids m1..m30: original ids that are not the model's indices),
one item a day from day (u % 3) of January 1998, so the users active on a given day differ. u0's
first two events share one timestamp (the tie-break rule: row order). Built once per session.
"""

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from slmrec.stages.experiment import run_experiment

N_ITEMS, N_USERS, LENGTH = 30, 40, 12
DAY0 = int(dt.datetime(1998, 1, 1, tzinfo=dt.timezone.utc).timestamp())

PARAMS = """
sequences: {k_core: 2}
sasrec: {hidden: 32, max_len: 12, dropout: 0.0}
llm: {max_len: 10}
train_sasrec: {epochs: 3, batch_size: 32, lr: 0.005, patience: 0}
train_llm: {epochs: 1, batch_size: 32, lr: 0.005, patience: 0}
eval: {bootstrap: 20, sampled_negatives: 0}
"""


def user_events(u: int) -> list[tuple[str, str, int]]:
    start = (u * 7) % N_ITEMS
    events = []
    for k in range(LENGTH):
        ts = DAY0 + (u % 3 + k) * 86400 + 3600 + u
        if u == 0 and k == 1:
            ts = events[0][2]  # a tie with the first event: row order decides
        events.append((f"u{u}", f"m{(start + k) % N_ITEMS + 1}", ts))
    return events


def write_events(path: Path) -> None:
    rows = ["user_id,item_id,ts"] + [",".join(map(str, e)) for u in range(N_USERS) for e in user_events(u)]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """The experiment folder: warehouse.duckdb, interactions/, splits/, models/{sasrec,teacher,student_nokd,student}."""
    tmp = tmp_path_factory.mktemp("serve")
    write_events(tmp / "events.csv")
    (tmp / "params.yaml").write_text(PARAMS)
    out = tmp / "out"
    args = argparse.Namespace(profile="tiny", format="events", path=str(tmp / "events.csv"), items=None,
                              column_map=None, hf_path=None, out=str(out), max_users=None,
                              params=str(tmp / "params.yaml"))
    run_experiment(args, log=lambda msg: None)
    return out


# ---------------------------------------------------------------- a real server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def card_hash(model_dir: Path) -> str:
    return json.loads((model_dir / "card.json").read_text())["content_hash"]


def promote(record: Path, model_dir: Path) -> None:
    """What the promoted_model asset writes, reduced to the fields the server reads; atomic."""
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model": model_dir.name, "path": str(model_dir), "content_hash": card_hash(model_dir)}))
    tmp.replace(record)


class ServerProcess:
    """`python -m slmrec.cli serve ...` on a free localhost port, output in a file."""

    def __init__(self, args: list[str], cwd: Path, out: Path, startup_s: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = out
        with open(out, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "slmrec.cli", "serve", "--port", str(self.port), *args],
                                         cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{out.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"server did not answer /health within {startup_s} s:\n{out.read_text()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: in-flight requests finish, the answer log is flushed); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.out.read_text()}")
        return self.proc.returncode


# ---------------------------------------------------------------- servers forked from a zygote (fast starts)

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def zygote():
    """One zygote for the session (server_zygote.py): each start forks a real server from it."""
    proc = subprocess.Popen([sys.executable, str(HERE / "server_zygote.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=HERE)
    yield proc
    proc.stdin.close()
    proc.wait(30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(zygote, args: list[str], out: Path) -> tuple[int, str]:
    port = free_port()
    zygote.stdin.write(json.dumps([str(out), "--port", str(port), *args]) + "\n")
    zygote.stdin.flush()
    pid, url = int(zygote.stdout.readline()), f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert alive(pid), f"server exited:\n{out.read_text()}"
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return pid, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not ready:\n{out.read_text()}")


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)
