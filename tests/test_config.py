from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Annotated, Any, get_args, get_origin

import pytest
import yaml
from conftest import REPO
from pydantic import ValidationError

from sslam.config.base import ConfigError, Section, merged, set_dotted
from sslam.config.params import Config, load_config, parse_config


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_params_file_is_valid_and_complete(raw):
    cfg = load_config(REPO / "params.yaml")
    # every section of the schema is in the file, and nothing else
    assert set(raw) == set(Config.model_fields)
    assert cfg.mix.strategy == raw["mix"]["strategy"]
    assert cfg.download.synthetic.clips.unbalanced == raw["download"]["synthetic"]["clips"]["unbalanced"]


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("mix.strategy", "foo", ["mix.strategy", "'max'", "'average'", "'waveform'", "'foo'"]),
        ("mask.ratio", 1.5, ["mask.ratio", "less than 1", "1.5"]),
        ("download.source", "youtube", ["download.source", "'synthetic'", "'folder'", "'audioset'"]),
        ("download.synthetic.num_classes", "24", ["download.synthetic.num_classes", "integer"]),
        ("download.synthetic.num_classes", 41, ["download.synthetic.num_classes", "less than or equal to 40"]),
        ("mix.partial", 1, ["mix.partial", "boolean"]),
        ("srl.aggregation", "median", ["srl.aggregation", "'mean'", "'max'"]),
        ("pretrain.stage2.variant", "mb", ["pretrain.stage2.variant", "'sslam'"]),
        ("mix.stratgy", "max", ["mix.stratgy", "unknown key"]),
        ("nonsense", {}, ["nonsense", "unknown key"]),
        ("download.synthetic.events_per_clip", [5, 1], ["events_per_clip", "low <= high"]),
        ("model.num_heads", 5, ["model", "must be divisible by num_heads (5)"]),
        ("pretrain.stage1.warmup_steps", 10_000, ["warmup_steps", "exceeds steps"]),
        ("tasks", {"Mono": {}}, ["tasks.Mono", "pattern"]),
        ("evaluate.finetune_tasks", ["nope"], ["finetune_tasks", "nope"]),
        ("evaluate.linear_encoders", ["stage3"], ["evaluate.linear_encoders ['stage3']", "pretrain.stage2_runs"]),
        ("evaluate.linear_encoders", ["Stage2"], ["evaluate.linear_encoders.0", "pattern"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(raw, key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(set_dotted(copy.deepcopy(raw), key, value), "params.yaml")
    msg = str(err.value)
    assert msg.startswith("params.yaml:")
    for part in expected:
        assert part in msg, f"{part!r} not in:\n{msg}"


def test_folder_source_needs_its_paths(raw):
    with pytest.raises(ConfigError, match="folder.audio_dir and folder.labels_csv"):
        parse_config(set_dotted(raw, "download.source", "folder"))


def test_overrides_apply_like_dvc_exp_run_set(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((REPO / "params.yaml").read_text())
    cfg = load_config(p, overrides={"mix.strategy": "average", "mask.ratio": 0.75})
    assert (cfg.mix.strategy, cfg.mask.ratio) == ("average", 0.75)
    with pytest.raises(ConfigError, match="dotted name"):
        load_config(p, overrides={"mix..strategy": "max"})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mix: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(top)


def test_dvc_stages_declare_only_known_param_sections():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    cfg = load_config(REPO / "params.yaml")
    for name, stage in dvc["stages"].items():
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else next(iter(entry.values()))
            for key in [keys] if isinstance(keys, str) else keys:
                node = cfg
                for part in key.split("."):
                    assert hasattr(node, part), f"stage {name} lists unknown param {key}"
                    node = getattr(node, part)


def test_audioset_profile_validates_and_prints_dvc_flags(capsys):
    from sslam.profile import main, profile_overrides

    assert main(["audioset", "--params", str(REPO / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "-S 'model.embed_dim=768'" in out and "-S 'pretrain.stage1.ema_decay=[0.9998,0.99999]'" in out
    cfg = load_config(REPO / "params.yaml", profile_overrides("audioset"))
    assert (cfg.model.depth, cfg.pretrain.stage1.steps, cfg.features.target_frames) == (12, 400000, 1024)
    assert main(["nope"]) == 2


def test_params_survive_the_yaml_round_trip_of_dvc_exp_run(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel.yaml; YAML 1.1 readers then see bare no/yes/on
    as booleans. Every value must still validate after that round trip."""
    import io

    from ruamel.yaml import YAML

    rt = YAML()
    data = rt.load((REPO / "params.yaml").read_text())
    data["mix"]["strategy"] = "average"
    buf = io.StringIO()
    rt.dump(data, buf)
    cfg = parse_config(yaml.safe_load(buf.getvalue()))
    assert cfg.mix.strategy == "average" and cfg.pretrain.mixed_precision == "fp32"


def test_cached_linear_eval_refuses_input_augmentation(raw):
    assert parse_config(raw).linear_eval.protocol == "cached"  # params.yaml's recipe
    with pytest.raises(ConfigError, match=r"linear_eval.*protocol 'cached'"):
        parse_config(set_dotted(copy.deepcopy(raw), "linear_eval.mixup", True), "params.yaml")
    cfg = parse_config(
        set_dotted(set_dotted(copy.deepcopy(raw), "linear_eval.mixup", True), "linear_eval.protocol", "paper")
    )
    assert cfg.linear_eval.protocol == "paper" and cfg.linear_eval.mixup


def test_audioset_profile_sets_the_paper_downstream_recipes():
    from sslam.profile import profile_overrides

    cfg = load_config(REPO / "params.yaml", profile_overrides("audioset"))
    lin, ft = cfg.linear_eval, cfg.finetune
    assert (lin.protocol, lin.lr, lin.epochs, lin.batch_size, lin.warmup_epochs, lin.pooling) == (
        "paper",
        1e-3,
        50,
        48,
        5,
        "cls",
    )
    assert (lin.mixup, lin.mixup_alpha, lin.mixup_prob, lin.specaug_freq, lin.specaug_time) == (
        True,
        0.8,
        0.9,
        0.2,
        0.2,
    )
    assert (ft.lr, ft.min_lr, ft.batch_size, ft.pooling, ft.epochs) == (5e-5, 1e-6, 48, "cls", 94)
    assert (ft.decay_norm_and_bias, ft.bce_reduction, ft.mixup_lambda, ft.roll, ft.roll_gain) == (
        False,
        "per_positive",
        "per_batch",
        True,
        True,
    )


# ----------------------------------------------------------------------------- values live in params.yaml only

# Entries a user adds (a task, a dataset, an import, a stage-2 run and their recipe overrides) are values of
# mappings and state only what differs, so their schemas have defaults: the walk below does not enter them.


def _section_types(annotation: Any) -> list[type[Section]]:
    """The sections an annotation holds itself or in a union; not the values of a mapping (user entries)."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [annotation]
    origin = get_origin(annotation)
    if origin is dict:
        return []
    if origin is Annotated:
        return _section_types(get_args(annotation)[0])
    return [t for arg in get_args(annotation) for t in _section_types(arg)]


def _sections(model: type[Section], path: str = "") -> Iterator[tuple[str, type[Section]]]:
    """(dotted path, schema) of ``model`` and of every section nested in it."""
    yield path, model
    for name, field in model.model_fields.items():
        for sub in _section_types(field.annotation):
            yield from _sections(sub, f"{path}.{name}" if path else name)


def test_no_value_params_yaml_carries_has_a_default_in_the_schema():
    """A key deleted from params.yaml is an error, never a value from the code: no schema of a section
    the file carries has a default (only the entries users add do)."""
    visited = dict(_sections(Config))
    assert {"model.xlstm", "pretrain.stage2", "download.synthetic.tasks.masked"} <= set(visited)  # the walk goes deep
    defaults = [
        f"{path}.{name}" if path else name
        for path, model in visited.items()
        for name, field in model.model_fields.items()
        if not field.is_required()
    ]
    assert not defaults, f"schema defaults for values params.yaml holds: {defaults}"


def _without(tree: dict, dotted: str) -> dict:
    """A copy of ``tree`` without the key ``dotted``."""
    out = copy.deepcopy(tree)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    return out


def test_every_key_deleted_from_params_yaml_is_named_missing(raw):
    """Each key of each section, deleted alone, is the one error, named by its dotted key."""
    keys = [f"{path}.{name}" if path else name for path, model in _sections(Config) for name in model.model_fields]
    assert len(keys) > 200 and {"features.norm_mean", "pretrain.stage2.variant", "tasks"} <= set(keys)
    for key in keys:
        parent = functools.reduce(lambda n, k: n.get(k) if isinstance(n, dict) else None, key.split(".")[:-1], raw)
        if not isinstance(parent, dict):  # inside a section params.yaml leaves null (stage1.clone_batch)
            continue
        with pytest.raises(ConfigError) as err:
            parse_config(_without(raw, key), "params.yaml")
        assert str(err.value) == (
            "params.yaml: 1 invalid value(s):\n"
            f"  - {key}: missing: params.yaml holds every value (copy the key from the repository's params.yaml)"
        )


@pytest.mark.parametrize("key", ["model.embed_dim", "pretrain.crop_seconds", "download.synthetic.tasks.masked.tmr_db"])
def test_a_missing_key_says_where_its_value_comes_from(tmp_path, raw, key):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(_without(raw, key)))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: 1 invalid value(s):") and f"{key}: missing" in msg
    assert "copy the key from the repository's params.yaml" in msg


def test_merged_validates_what_model_copy_would_not():
    """``merged`` (how code and tests change a section) checks the result as a params file would."""
    cfg = load_config(REPO / "params.yaml")
    stage = merged(cfg.pretrain.stage2, {"steps": 20, "warmup_steps": 5})
    assert type(stage) is type(cfg.pretrain.stage2) and (stage.steps, stage.warmup_steps) == (20, 5)
    assert stage.model_dump() == {**cfg.pretrain.stage2.model_dump(), "steps": 20, "warmup_steps": 5}
    assert cfg.model.model_copy(update={"num_heads": 5}).num_heads == 5  # unchecked: what merged prevents
    with pytest.raises(ValidationError, match=r"must be divisible by num_heads \(5\)"):
        merged(cfg.model, {"num_heads": 5})
    with pytest.raises(ValidationError, match="warmup_steps"):
        merged(cfg.pretrain.stage1, {"steps": 2})  # warm-up 30 > 2 steps
    with pytest.raises(ValidationError, match="strategy"):
        merged(cfg.mix, {"strategy": "foo"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        merged(cfg.mix, {"stratgy": "max"})
    with pytest.raises(ValidationError, match="integer"):
        merged(cfg.model, {"depth": "2"})  # strict, as a params file


def test_imports_are_encoders_and_a_file_path_is_told_where_to_go(raw):
    imported = set_dotted(raw, "imports", {"sslam": {"path": "released/SSLAM_pretrain"}})
    cfg = parse_config(set_dotted(imported, "evaluate.linear_encoders", ["sslam"]))
    assert cfg.imports["sslam"].overrides() == {} and cfg.imports["sslam"].weights == "student"
    with pytest.raises(ConfigError, match=r"imports: \{released: \{path: released/SSLAM_pretrain\}\}"):
        parse_config(set_dotted(raw, "evaluate.linear_encoders", ["file:released/SSLAM_pretrain"]))
    with pytest.raises(ConfigError, match=r"imports \['stage2'\]: the name of a pretraining run"):
        parse_config(set_dotted(raw, "imports", {"stage2": {"path": "x"}}))
    with pytest.raises(ConfigError, match=r"evaluate.finetune_encoders \['eat'\].*imports \(\[\]\)"):
        parse_config(set_dotted(raw, "evaluate.finetune_encoders", ["eat"]))
