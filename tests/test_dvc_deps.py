"""Every DVC stage depends on exactly the library code its script imports (transitively, function-level
imports included), so `dvc repro` never calls results up to date that the current code would not give."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from sslam.provenance import import_closure


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
