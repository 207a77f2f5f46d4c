"""Every DVC stage depends on exactly the code it runs: its code manifest (``data/code/<script>.json``,
written by the ``code`` stage) lists the script and every library file it imports, transitively
(function-level imports and registry discovery included), so `dvc repro` never calls results up to date
that the current code would not give, and never reruns a stage for code it does not import."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import REPO

from sslam.provenance import code_manifest, import_closure, write_code_manifests


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: (st["do"] if "do" in st else st) for name, st in raw.items()}


@pytest.mark.parametrize("name", sorted(set(stages()) - {"code"}))
def test_stage_depends_on_its_code_manifest_and_nothing_else_of_the_code(name):
    st = stages()[name]
    script = next(tok for tok in st["cmd"].split() if tok.startswith("stages/") and tok.endswith(".py"))
    deps = [d for d in st["deps"] if isinstance(d, str)]
    assert f"data/code/{script[len('stages/') : -3]}.json" in deps, f"stage {name}: its code manifest is no dep"
    listed = [d for d in deps if d.startswith(("src/", "stages/"))]
    assert not listed, f"stage {name}: lists code {listed} beside its manifest"


def test_the_code_stage_covers_every_script_and_the_library():
    st = stages()["code"]
    assert st["cmd"] == "python -m sslam.provenance stages data/code"
    assert set(st["deps"]) == {"stages", "src/sslam"} and st["outs"] == ["data/code"]


def test_a_manifest_is_the_script_and_its_import_closure(tmp_path):
    changed = write_code_manifests(tmp_path, REPO / "stages")
    assert sorted(changed) == sorted(f"{p.stem}.json" for p in (REPO / "stages").glob("*.py"))
    manifest = json.loads((tmp_path / "evaluate.json").read_text())
    want = {"stages/evaluate.py"} | {str(f.relative_to(REPO)) for f in import_closure(REPO / "stages" / "evaluate.py")}
    assert set(manifest["code"]) == want
    assert write_code_manifests(tmp_path, REPO / "stages") == []  # unchanged code: nothing rewritten


def test_a_manifest_changes_with_its_code_only(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "sslam", src / "sslam", ignore=shutil.ignore_patterns("__pycache__"))
    script = REPO / "stages" / "features.py"
    before = code_manifest(script, src)
    (src / "sslam" / "features" / "store.py").write_text((src / "sslam" / "features" / "store.py").read_text() + "#\n")
    edited = code_manifest(script, src)
    assert edited != before and edited["code"].keys() == before["code"].keys()
    (src / "sslam" / "report" / "tables.py").write_text("# the report's, not the features stage's\n")
    assert code_manifest(script, src) == edited


def test_the_closure_sees_function_level_and_from_imports():
    script = REPO / "stages" / "evaluate.py"
    files = {str(f.relative_to(REPO)) for f in import_closure(script)}
    assert "src/sslam/config/params.py" in files  # module level
    assert "src/sslam/downstream/tasks.py" in files  # inside main()
    assert "src/sslam/models/vit.py" in files  # found by the encoder registry (DISCOVERS)
    assert "src/sslam/config/__init__.py" in files  # a package's __init__ runs before its modules


def test_a_stage_that_reads_few_sections_imports_few_schemas():
    files = {str(f.relative_to(REPO)) for f in import_closure(REPO / "stages" / "pretrain.py")}
    assert "src/sslam/config/pretrain.py" in files
    assert not {"src/sslam/config/downstream.py", "src/sslam/config/report.py", "src/sslam/config/params.py"} & files
