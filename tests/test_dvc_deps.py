"""dvc.yaml lists, for every stage, each pipeline module the stage imports (directly or not),
so a code change re-runs exactly the stages it affects."""

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# imported by every stage; listing them would re-run the whole pipeline on any schema tweak
SHARED = {"pipeline/__init__.py", "pipeline/schemas.py", "pipeline/fsutil.py", "pipeline/params.py", "pipeline/logs.py"}


def _module_file(name: str) -> str | None:
    for rel in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
        if (REPO / rel).exists():
            return rel
    return None


def _imports(rel: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse((REPO / rel).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith("pipeline"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages above it
                f = _module_file(".".join(parts[:i]))
                if f:
                    found.add(f)
    return found


def _closure(script: str) -> set[str]:
    seen, todo = set(), [script]
    while todo:
        for f in _imports(todo.pop()) - seen:
            seen.add(f)
            todo.append(f)
    return seen


def test_every_stage_lists_the_modules_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        script = stage["cmd"].split()[1]
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
        assert script in deps, f"stage {name} does not list its script {script}"
        needed = _closure(script) - SHARED
        missing = sorted(needed - deps)
        unused = sorted(d for d in deps if d.startswith("pipeline/") and d not in needed)
        if missing or unused:
            problems.append(f"{name}: missing {missing}, not imported {unused}")
    assert not problems, "\n".join(problems)
