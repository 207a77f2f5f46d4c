"""What every params section shares: the strict base model, common value types, and reading, merging
and error formatting. ``params.yaml`` holds every value; a schema here says only what a value may be.

Values live in one place: a section that ``params.yaml`` carries has no defaults in its schema, so a
key missing from the file is an error naming it, never a silent value from the code. Only entries a user
adds (a task, a dataset, an import, a stage-2 run) have defaults for the keys they may leave out.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

PARAMS_FILE = "params.yaml"

Pair = Annotated[list[int], Field(min_length=2, max_length=2)]
FloatPair = Annotated[list[float], Field(min_length=2, max_length=2)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
# encoder names with a meaning of their own (sslam.checkpoints.resolve reads the whole name grammar): no
# stage-2 run or import may take one
BUILTIN_ENCODERS = r"random\d+|stage[12]|fbank_stats"

S = TypeVar("S", bound="Section")

# every top-level section of params.yaml; a stage validates the ones it reads (its own schema modules are
# then all its code depends on), and a name outside this list is an error wherever it is read
SECTION_NAMES = (
    "data",
    "download",
    "ontology",
    "features",
    "model",
    "mask",
    "mix",
    "srl",
    "pretrain",
    "finetune",
    "linear_eval",
    "tasks",
    "evaluate",
    "report",
    "datasets",
    "imports",
)


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and what is allowed."""


class Section(BaseModel):
    # strict: "3" is not 3 and 1 is not True; forbid: a misspelt key is an error, not a silent default
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def merged(section: S, update: dict[str, Any]) -> S:
    """``section`` with ``update`` applied, validated again: a merge can never build what a params file
    could not (``model_copy(update=)`` would skip every check). A mapping given for a nested section
    updates that section's keys; any other value replaces the old one."""
    out = section.model_dump()
    for key, value in update.items():
        current = getattr(section, key, None)
        if isinstance(current, Section) and isinstance(value, dict):
            value = merged(current, value).model_dump()
        out[key] = value
    return type(section).model_validate(out)


def check_range(name: str, pair: list[int] | list[float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {pair}")


def overrides_of(model: type[Section], name: str) -> type[Section]:
    """The same keys as ``model``, each optional (None: inherit): a task's partial recipe."""
    fields = {
        k: ((Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation) | None, None)
        for k, f in model.model_fields.items()
    }
    return create_model(name, __base__=Section, **fields)


# ----------------------------------------------------------------------------- reading


def _section_names(cls: type | None = None) -> set[str]:
    cls = cls or Section
    return {cls.__name__} | {n for sub in cls.__subclasses__() for n in _section_names(sub)}


def _is_union_tag(part: Any) -> bool:
    """A ``loc`` part naming a union member (``CloneBatch``, ``constrained-int``), not a key."""
    if not isinstance(part, str):
        return False
    return part in _section_names() or "-" in part or "[" in part or part in _SCALAR_TAGS


_SCALAR_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _relevant(errors: list[dict]) -> list[dict]:
    """Pydantic reports every member of a union; a mapping was meant for the section member, so its errors
    alone are kept there, and the member tags are dropped from each key."""
    sections = _section_names()
    model_branch = {
        tuple(e["loc"][:i]) for e in errors for i, p in enumerate(e["loc"]) if _is_union_tag(p) and p in sections
    }
    out = []
    for e in errors:
        tags = [i for i, p in enumerate(e["loc"]) if _is_union_tag(p)]
        if tags and tuple(e["loc"][: tags[0]]) in model_branch and e["loc"][tags[0]] not in sections:
            continue
        out.append({**e, "loc": tuple(p for p in e["loc"] if not _is_union_tag(p))})
    return out


def format_error(source: str, err: ValidationError) -> str:
    errors = _relevant(err.errors())
    lines = [f"{source}: {len(errors)} invalid value(s):"]
    for e in errors:
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt? see src/sslam/config/ for the allowed keys)"
        elif e["type"] == "missing":
            msg = "missing: params.yaml holds every value (copy the key from the repository's params.yaml)"
        # a whole-section check (empty loc) names its keys in its message: the section itself is no help
        got = "" if e["type"] in ("extra_forbidden", "missing") or not e["loc"] else f" (got {e['input']!r})"
        lines.append(f"  - {key}: {msg}{got}")
    return "\n".join(lines)


def validate(model: type[S], raw: Any, source: str = PARAMS_FILE) -> S:
    """``raw`` (an already-parsed params mapping) as ``model``, or a :class:`ConfigError` naming each key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(source, err)) from None


def load_sections(model: type[S], path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> S:
    """The sections of a params file that ``model`` (a root with some of :data:`SECTION_NAMES` as fields)
    holds, validated; the other sections are left to the stages that read them, but a top-level name
    that is no section at all is refused here too."""
    raw = read_params(path, overrides) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTION_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level section(s) {unknown}; the sections are {list(SECTION_NAMES)}")
    return validate(model, {k: v for k, v in raw.items() if k in model.model_fields}, str(path))


def exit_on_error(load: Any, *args: Any, **kwargs: Any) -> Any:
    """For stage scripts: ``load(*args)``, or its :class:`ConfigError` on stderr and exit status 2."""
    try:
        return load(*args, **kwargs)
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None


def read_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A params file as a mapping; ``overrides`` maps dotted keys to values (as ``dvc exp run -S``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for key, value in (overrides or {}).items():
        raw = set_dotted(raw or {}, key, value)
    return raw


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``tree`` with ``a.b.c`` set to ``value`` (intermediate mappings created)."""
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override key {key!r} is not a dotted name like 'mix.strategy'")
    out = dict(tree)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return out
