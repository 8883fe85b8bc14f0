"""Run independent DVC stages at once, ahead of `dvc repro` (which runs one stage at a time).

`dvc repro` holds the repository lock for its whole run and executes the stages one after another, so
the teacher and student_nokd — both read only SASRec's item table — would train in turn on a machine with
cores to spare. `slmrec parallel-stages teacher student_nokd` runs those stages' own commands (read from
dvc.yaml, so they cannot drift from the pipeline) concurrently, then records the ones that succeeded in dvc.lock with `dvc commit -f` (the
hashes of their deps, params and outputs, exactly what `dvc repro` writes after running a stage), so the
`dvc repro` that follows finds them up to date instead of starting each again (2 x ~15 s of start-up and
resume in the demo). A stage that failed is not recorded: `dvc repro` runs it, and its finished work in
`runs/<name>/<key>/` is resumed under the same key (params, data, parents, backbone, code).

Stages `dvc status` reports up to date are skipped; a stale stage upstream of them is an error (their
runs would be trained on an outdated parent). Each line a stage prints is prefixed with its name; a
failing stage does not stop the others (their finished work is kept for the resume) and the exit code is 1
naming every stage that failed.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Callable

import yaml


def stage_commands(names: list[str], dvc_yaml: str | Path = "dvc.yaml") -> dict[str, str]:
    """{stage: cmd} from dvc.yaml, in the order asked; an unknown stage is a clear error."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    unknown = [n for n in names if n not in stages]
    if unknown:
        raise ValueError(f"{dvc_yaml}: no stage(s) {unknown}; stages: {sorted(stages)}")
    def one_line(cmd) -> str:  # a list of commands runs in turn, as DVC runs it
        return " && ".join(" ".join(str(c).split()) for c in (cmd if isinstance(cmd, list) else [cmd]))

    return {n: one_line(stages[n]["cmd"]) for n in names}


def stale(names: list[str], dvc: list[str]) -> list[str]:
    """The stages of `names` that `dvc status` reports changed. Every stage they depend on must be up to date
    (run `dvc repro <it>` first): trained on a stale parent, their runs would not be the ones `dvc repro` wants."""
    result = subprocess.run([*dvc, "status", "--json", "--with-deps", *names], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc status {' '.join(names)} failed ({result.returncode}): {result.stderr.strip()[-1000:]}")
    changed = {key.split(":")[-1] for key in json.loads(result.stdout or "{}")}  # "dvc.yaml:x" or "x"
    upstream = sorted(changed - set(names))
    if upstream:
        raise ValueError(f"stage(s) {upstream} upstream of {names} are out of date: run `dvc repro "
                         f"{' '.join(upstream)}` first")
    return [n for n in names if n in changed]


def _relay(name: str, stream, log: Callable[[str], None]) -> None:
    for line in stream:
        log(f"[{name}] {line.rstrip()}")


def run_parallel(commands: dict[str, str], log: Callable[[str], None] = print, cwd: str | Path = ".") -> list[str]:
    """Run every command at once (a shell each, the caller's environment); wait for all; return the failed."""
    lock = threading.Lock()

    def say(line: str) -> None:  # whole lines, never two stages' output mixed within one
        with lock:
            log(line)

    procs, relays = {}, []
    for name, cmd in commands.items():
        say(f"[{name}] $ {cmd}")
        procs[name] = subprocess.Popen(cmd, shell=True, cwd=cwd, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        relay = threading.Thread(target=_relay, args=(name, procs[name].stdout, say), daemon=True)
        relay.start()
        relays.append(relay)
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    for relay in relays:
        relay.join()
    for name in failed:
        log(f"[{name}] FAILED (exit {procs[name].returncode})")
    return failed


def parallel_stages(names: list[str], dvc: list[str], dvc_yaml: str | Path = "dvc.yaml",
                    log: Callable[[str], None] = print) -> list[str]:
    """Run the stale ones of `names` concurrently; return the names that failed."""
    commands = stage_commands(names, dvc_yaml)
    todo = stale(names, dvc)
    skipped = [n for n in names if n not in todo]
    if skipped:
        log(f"up to date, not run: {', '.join(skipped)}")
    if not todo:
        return []
    failed = run_parallel({n: commands[n] for n in todo}, log, cwd=Path(dvc_yaml).parent)
    done = [n for n in todo if n not in failed]
    if done:
        result = subprocess.run([*dvc, "commit", "-f", *done], cwd=Path(dvc_yaml).parent, capture_output=True,
                                text=True)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"dvc commit -f {' '.join(done)} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-1000:]}")  # fmt: skip
        log(f"recorded in dvc.lock: {', '.join(done)}")
    return failed


__all__ = ["parallel_stages", "run_parallel", "stage_commands", "stale"]
