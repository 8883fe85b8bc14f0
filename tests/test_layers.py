"""The library's layers import downward only (docs/ARCHITECTURE.md): no import circle between packages.

    hashing, config, days -> lineage -> data -> models -> distill, eval -> train -> stages -> serve -> monitor -> CLI

`commands.py` modules are the command line (registered by slmrec/cli.py): they sit on top, whatever
package holds them. Lazy imports inside functions count too. The library never imports dagster or dvc.
"""

import ast
from pathlib import Path

SLMREC = Path(__file__).resolve().parents[1] / "slmrec"
LEVEL = {"hashing": 0, "config": 0, "days": 0, "lineage": 1, "data": 2, "models": 3, "distill": 4, "eval": 4, "train": 5,
         "stages": 6, "serve": 7, "monitor": 8, "cli": 9}
CLI_LEVEL = LEVEL["cli"]


def unit(module: Path) -> str:
    rel = module.relative_to(SLMREC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(module: Path):
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def test_packages_import_downward_only():
    bad = []
    for module in sorted(SLMREC.rglob("*.py")):
        if unit(module) == "__init__":
            continue
        level = CLI_LEVEL if module.name == "commands.py" else LEVEL[unit(module)]
        for name, line in imports(module):
            parts = name.split(".")
            if parts[0] in ("dagster", "dvc"):
                bad.append(f"{module.relative_to(SLMREC)}:{line} imports {name} (the library is orchestrator-free)")
            if parts[0] != "slmrec" or len(parts) < 2:
                continue
            target = parts[1]
            if target == unit(module):
                continue
            if LEVEL[target] >= level:
                bad.append(f"{module.relative_to(SLMREC)}:{line} imports {name} (layer {target} is not below)")
    assert not bad, "\n".join(bad)


def test_every_package_has_a_layer():
    units = {unit(m) for m in SLMREC.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= set(LEVEL), sorted(units - set(LEVEL))
