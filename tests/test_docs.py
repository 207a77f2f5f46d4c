"""The manual stays true to the tree: README.md and docs/*.md name only paths, modules and functions that
exist, link only inside the repository, stay short where they should, and every command the README shows
in a ```bash block is run (or checked) by a test.

Fast and offline: it reads files and parses Python, nothing else.
"""

from __future__ import annotations

import ast
import glob
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 260

# Paths the pages may name although they exist only after `dvc repro` (or after a command the pages show).
# Matched against the whole path; a .py path is never excused.
GENERATED = [
    r"data(/.*)?",  # DVC outputs: the corpus, the feature cache, per-clip test scores, converted datasets
    r"checkpoints(/.*)?",  # pretraining and import outputs
    r"metrics/datasets(/.*)?",  # dataset@<name> metrics: only with a `datasets` entry in params.yaml
    r"metrics/timings(/.*)?",  # throughput logs, written by every run, not tracked
    r"metrics/ablations\.(md|json)",  # written by `python -m sslam.experiments.ablations`
]

# README commands that no test can run, with the reason. Keep it short and honest: a command that a test
# could run (in a temporary copy, on loopback, on the CPU) belongs in a test, not here.
EXEMPT = {
    "make test": "CI's own command (.ci/run runs exactly this); a test running it would run the suite inside itself",
}

ROOT_PATH = re.compile(r"(?<![\w./$~-])(?:\.ci|src|stages|bench|tests|docs|metrics|data|checkpoints)/[\w.<>{},*/-]*")
PY_PATH = re.compile(r"(?<![\w./$~<{-])[\w<>-]+(?:/[\w<>-]+)*\.py\b")
MODULE = re.compile(r"(?<![\w.-])sslam(?:\.\w+)+")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FILE_FUNCTION = re.compile(r"^(\S+\.py): (\w+)$")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SEARCHED = ("src", "stages", "bench", "tests")


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def rel(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def expand_braces(path: str) -> list[str]:
    """`a/{b,c}.png` -> [`a/b.png`, `a/c.png`]; a single alternative (`{split}`) is a placeholder."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    alternatives = m.group(1).split(",") if "," in m.group(1) else ["*"]
    return [p for alt in alternatives for p in expand_braces(path[: m.start()] + alt + path[m.end() :])]


def as_glob(path: str) -> str:
    return re.sub(r"<[^<>/]*>", "*", path)


def tree_files() -> list[str]:
    files = []
    for top in SEARCHED:
        for p in (REPO / top).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and not any(s.endswith(".egg-info") for s in p.parts):
                files.append(p.relative_to(REPO).as_posix())
    return files


def exists_from_root(path: str) -> bool:
    return all(glob.glob(str(REPO / as_glob(p))) for p in expand_braces(path))


def exists_as_suffix(path: str, files: list[str]) -> bool:
    """A library path written relative to its package (`pretrain/losses.py`, `vit.py`): some file of the
    tree ends with it."""
    pattern = re.escape(path).replace(r"\*", "[^/]*")
    pattern = re.sub(r"<[^<>/]*>", "[^/]+", pattern.replace(r"\<", "<").replace(r"\>", ">"))
    return any(re.fullmatch(r"(?:.*/)?" + pattern, f) for f in files)


def generated(path: str) -> bool:
    return not path.endswith(".py") and any(re.fullmatch(g, path.rstrip("/")) for g in GENERATED)


def defines(file: Path, name: str) -> bool:
    src = file.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*[:=]", src, re.M) is not None


def module_file(parts: list[str]) -> Path | None:
    base = REPO / "src" / Path(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def dotted_exists(name: str) -> bool:
    """`sslam.a.b` is a module or package under src/, or `sslam.a.b.Name` a name defined in one."""
    parts = name.split(".")
    for k in range(len(parts), 1, -1):
        found = module_file(parts[:k])
        if found is None:
            continue
        rest = parts[k:]
        if not rest:
            return True
        files = [found] if found.name != "__init__.py" else sorted(found.parent.rglob("*.py"))
        return len(rest) == 1 and any(defines(f, rest[0]) for f in files)
    return False


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose = FENCE.sub("", text(page))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", prose, re.M)}


def test_named_paths_exist():
    files = tree_files()
    missing = []
    for page in PAGES:
        body = text(page)
        for raw in sorted(set(ROOT_PATH.findall(body))):
            path = raw.rstrip(".,;:)")
            ok = exists_from_root(path) or generated(path)
            ok = ok or (path.endswith(".py") and all(exists_as_suffix(p, files) for p in expand_braces(path)))
            if not ok:
                missing.append(f"{rel(page)}: {path}")
        for path in sorted(set(PY_PATH.findall(body))):
            if not path.startswith(("src/", "stages/", "bench/", "tests/")) and not exists_as_suffix(path, files):
                missing.append(f"{rel(page)}: {path}")
    assert not missing, "paths named in the manual that the tree does not have:\n" + "\n".join(missing)


def test_named_modules_exist():
    missing = [
        f"{rel(page)}: {name}"
        for page in PAGES
        for name in sorted(set(MODULE.findall(text(page))))
        if not dotted_exists(name)
    ]
    assert not missing, "modules named in the manual that src/ does not have:\n" + "\n".join(missing)


def test_named_functions_exist():
    """`file.py: name` anywhere, and every bare name after it in the README's equation table, is defined in
    that file (paths relative to src/sslam/ unless they start at the root)."""
    wanted: list[tuple[str, str, str]] = []
    for page in PAGES:
        for span in CODE_SPAN.findall(text(page)):
            if m := FILE_FUNCTION.match(span):
                wanted.append((rel(page), m.group(1), m.group(2)))
    table = text(README).split("## Where each equation of the paper lives", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| paper")]
    assert len(rows) >= 10, "the README's equation table is missing"
    for row in rows:
        for segment in row.rstrip(" |").rsplit("|", 1)[1].split(";"):
            current = None
            for span in CODE_SPAN.findall(segment):
                if m := FILE_FUNCTION.match(span):
                    current = m.group(1)
                elif current and re.fullmatch(r"\w+", span):
                    wanted.append(("README.md (equation table)", current, span))
    missing = []
    for where, file, name in wanted:
        path = REPO / file if file.startswith(("src/", "stages/", "bench/", "tests/")) else REPO / "src/sslam" / file
        if not path.is_file() or not defines(path, name):
            missing.append(f"{where}: {file}: {name}")
    assert not missing, "functions named in the manual that are not defined where it says:\n" + "\n".join(missing)


def test_links_stay_inside_the_repository_and_resolve():
    bad = []
    for page in PAGES:
        for target in LINK.findall(text(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(REPO) or not dest.exists():
                bad.append(f"{rel(page)}: {target} (no such file in the repository)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                bad.append(f"{rel(page)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_readme_is_short():
    lines = len(text(README).splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_nothing_points_outside_the_repository():
    needle = ("../" + "shared").encode()
    roots = [README, REPO / "docs", REPO / "src", REPO / "stages", REPO / "bench", REPO / "tests"]
    roots += [REPO / "dvc.yaml", REPO / "params.yaml", REPO / "Makefile"]
    hits = []
    for root in roots:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            built = "__pycache__" in p.parts or any(s.endswith(".egg-info") for s in p.parts)  # pip's copies
            if p.is_file() and not built and needle in p.read_bytes():
                hits.append(p.relative_to(REPO).as_posix())
    assert not hits, f"{needle.decode()!r} in: {hits}"


def readme_commands() -> list[str]:
    commands = []
    for lang, block in FENCE.findall(text(README)):
        if lang != "bash":
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            if line.strip():
                commands.append(" ".join(line.split()))
    return commands


def strings_in_tests() -> list[str]:
    """String literals of the other test files, docstrings left out (a docstring describes, it does not
    run or check), whitespace normalised."""
    out = []
    for path in sorted((REPO / "tests").glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                out.append(" ".join(node.value.split()))
    return out


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    assert "make repro" in commands and "make test" in commands
    strings = strings_in_tests()
    untested = [c for c in commands if c not in EXEMPT and not any(c in s for s in strings)]
    stale = sorted(set(EXEMPT) - set(commands))
    assert not stale, f"EXEMPT lists commands the README no longer shows: {stale}"
    assert not untested, (
        "README commands that no test runs or checks (put the command, as shown, in a test that runs it, or "
        "add it to EXEMPT with the reason no test can):\n" + "\n".join(untested)
    )
