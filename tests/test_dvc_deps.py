"""Every DVC stage depends on exactly the library code its script imports (transitively, function-level
imports included), so `dvc repro` never calls results up to date that the current code would not give."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """src/ file of a dotted ``sslam`` module (a package resolves to its __init__.py)."""
    base = SRC / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def imported_modules(path: Path, package: str | None) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and package:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m == "sslam" or m.startswith("sslam.")}


def import_closure(script: Path) -> set[Path]:
    """The src/ files a script pulls in (empty package __init__ files left out)."""
    seen: set[Path] = set()
    todo = [(script, None)]
    while todo:
        path, package = todo.pop()
        for mod in imported_modules(path, package):
            f = module_file(mod)
            if f is None or f in seen:
                continue
            seen.add(f)
            pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
            todo.append((f, pkg))
    return {f for f in seen if not (f.name == "__init__.py" and not f.read_text().strip())}


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: (st["do"] if "do" in st else st) for name, st in raw.items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_exactly_the_code_it_imports(name):
    st = stages()[name]
    script = next(REPO / tok for tok in st["cmd"].split() if tok.startswith("stages/") and tok.endswith(".py"))
    needed = import_closure(script)
    code_deps = [REPO / d for d in st["deps"] if isinstance(d, str) and d.startswith("src/")]
    covered = lambda f, d: f == d or d in f.parents  # noqa: E731
    missing = sorted(str(f.relative_to(REPO)) for f in needed if not any(covered(f, d) for d in code_deps))
    assert not missing, f"stage {name}: imports {missing} but does not list them in deps"
    extra = sorted(str(d.relative_to(REPO)) for d in code_deps if not any(covered(f, d) for f in needed))
    assert not extra, f"stage {name}: lists {extra} in deps but never imports them"
    assert str(script.relative_to(REPO)) in st["deps"], f"stage {name}: its own script {script.name} is not a dep"


def test_the_closure_sees_function_level_and_from_imports():
    script = REPO / "stages" / "evaluate.py"
    files = {str(f.relative_to(REPO)) for f in import_closure(script)}
    assert "src/sslam/config.py" in files  # module level
    assert "src/sslam/downstream/tasks.py" in files  # inside main()
    assert "src/sslam/models/vit.py" in files  # transitively
