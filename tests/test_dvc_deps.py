"""dvc.yaml lists, for every stage, the folder of the stage's own package, ``pipeline/core``, and
each other pipeline module the stage imports (directly or not), and nothing else: a code change
re-runs exactly the stages it can affect (a change to training code never invalidates caption
or encode)."""

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CORE = "pipeline/core"


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


def _own_folder(script: str) -> str:
    """The package of the runner the stage script runs (``pipeline.curate.split.stage`` -> its folder)."""
    runner = next(f for f in _imports(script) if f.endswith("/stage.py") and not f.startswith(CORE))
    return str(Path(runner).parent)


def _needed(script: str) -> set[str]:
    own = _own_folder(script)
    out = {own, CORE}
    for f in _closure(script):
        if f.startswith(own + "/") or f.startswith(CORE + "/") or f.endswith("__init__.py"):
            continue  # in a folder dependency, or a package marker
        out.add(f)
    return out


def test_every_stage_lists_its_folder_core_and_the_modules_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        script = stage["cmd"].split()[1]
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
        assert script in deps, f"stage {name} does not list its script {script}"
        needed = _needed(script)
        listed = {d for d in deps if d.startswith("pipeline/")}
        if needed != listed:
            problems.append(f"{name}: missing {sorted(needed - listed)}, not needed {sorted(listed - needed)}")
    assert not problems, "\n".join(problems)


def test_training_code_never_invalidates_caption_or_encode():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("caption", "encode"):
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stages[name]["deps"]]
        assert not any(d.startswith("pipeline/train") for d in deps), name


def test_bytecode_never_changes_a_folder_dependency():
    assert "__pycache__/" in (REPO / ".dvcignore").read_text().splitlines()
