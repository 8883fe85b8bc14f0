"""Every command the README shows exists as written (issue 17, item 8).

The README's ```bash blocks are parsed; each command is checked against the tool it calls, from a clean
PATH (no venv on it), as a new user's shell would run it:
- `make T`: the target exists (`make -n T`);
- `.venv/bin/slmrec SUB ...` and `.venv/bin/python -m orchestration.replay CMD ...`: `--help` works and
  names every option the README passes (choices too, where the README gives one);
- `.venv-dvc/bin/dvc SUB ...`: the one DVC CLI exists, `SUB --help` works from a clean PATH and names the
  options. The heavy ones run for real elsewhere: `dvc exp run -S` in tests/orchestration/test_dvc_exp.py
  (from a clean PATH too), `slmrec serve` + `curl` in tests/serve, `make demo` / `make test` by CI.
- `curl` and `cat` read what a run wrote: not run here (see above).
"""

import argparse
import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLEAN = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "DVC_NO_ANALYTICS": "1",
         "LANG": "C.UTF-8"}


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split(" / ") if line.startswith(".venv-dvc") else [line]:
                argv = shlex.split(part, comments=True)
                out.append([a.strip("[]") for a in argv if a.strip("[]")])
    return out


COMMANDS = readme_commands()


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=CLEAN, capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def help_of(*head: str) -> subprocess.CompletedProcess:
    """`head --help` once per distinct command. `slmrec SUB`: from the CLI's own parser, in process (a process
    per sub-command imports torch each time); the `slmrec` entry point itself is run once from a clean PATH."""
    if head[0] == ".venv/bin/slmrec" and len(head) == 2:
        from slmrec.cli import build_parser

        subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        if head[1] not in subparsers.choices:
            return subprocess.CompletedProcess(head, 2, "", f"no sub-command {head[1]!r}")
        return subprocess.CompletedProcess(head, 0, subparsers.choices[head[1]].format_help(), "")
    return run(*head, "--help")


def test_the_slmrec_entry_point_runs_from_a_clean_path():
    proc = run(".venv/bin/slmrec", "--help")
    assert proc.returncode == 0 and "monitor-reference" in proc.stdout, proc.stderr


def options(argv: list[str]) -> list[str]:
    return [a.split("=")[0] for a in argv if a.startswith("--")]


def test_the_readme_shows_commands_of_every_kind_checked_here():
    kinds = {argv[0] for argv in COMMANDS}
    assert kinds <= {"make", ".venv/bin/slmrec", ".venv/bin/python", ".venv-dvc/bin/dvc", "curl", "cat"}, kinds
    assert {"make", ".venv/bin/slmrec", ".venv-dvc/bin/dvc"} <= kinds and len(COMMANDS) >= 20


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] == "make"], ids=lambda c: " ".join(c))
def test_make_targets_exist(argv):
    proc = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] in (".venv/bin/slmrec", ".venv/bin/python")],
                         ids=lambda c: " ".join(c[:4]))
def test_slmrec_and_python_commands_accept_what_the_readme_passes(argv):
    if argv[0] == ".venv/bin/python":
        assert argv[1] == "-m", argv
        head, rest = argv[:3], argv[3:]
    else:
        head, rest = argv[:2], argv[2:]
    proc = help_of(*head)
    assert proc.returncode == 0, proc.stderr
    help_text = proc.stdout
    for opt in options(rest):
        assert opt in help_text, f"{' '.join(argv)}: {opt} is not an option of {' '.join(head)}"
    positional = [a for a in rest[:1] if not a.startswith("-")]
    for word in positional:
        assert word in help_text, f"{' '.join(argv)}: {word} is not a choice of {' '.join(head)}"


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] == ".venv-dvc/bin/dvc"], ids=lambda c: " ".join(c[:4]))
def test_dvc_commands_run_from_a_clean_path(argv):
    words = [a for a in argv[1:] if not a.startswith("-")]
    sub = words[:2] if words[:1] in (["exp"], ["metrics"], ["plots"]) else words[:1]
    proc = help_of(argv[0], *sub)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    for opt in options(argv):
        assert opt in proc.stdout, f"{' '.join(argv)}: {opt} is not an option of dvc {' '.join(sub)}"


def test_there_is_one_dvc_cli_and_it_finds_the_stage_commands():
    assert not (REPO / ".venv/bin/dvc").exists(), ".venv/bin/dvc would be a second DVC (fails on exp run -S)"
    proc = subprocess.run(["sh", "-c", "command -v slmrec"], env={**CLEAN}, capture_output=True, text=True)
    assert proc.returncode != 0  # a clean PATH has no slmrec ...
    wrapper = (REPO / ".venv-dvc/bin/dvc").read_text()
    assert ".venv/bin" in wrapper  # ... and the DVC wrapper puts it there for the stage commands
