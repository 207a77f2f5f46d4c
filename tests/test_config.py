from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from sslam.config import Config, ConfigError, load_config, parse_config, set_dotted


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_params_file_is_valid_and_complete(raw):
    cfg = load_config(REPO / "params.yaml")
    # every key in params.yaml is explicit: the file and the typed defaults agree on the key set
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
    as booleans. Every default must still validate after that round trip."""
    import io

    from ruamel.yaml import YAML

    rt = YAML()
    data = rt.load((REPO / "params.yaml").read_text())
    data["mix"]["strategy"] = "average"
    buf = io.StringIO()
    rt.dump(data, buf)
    cfg = parse_config(yaml.safe_load(buf.getvalue()))
    assert cfg.mix.strategy == "average" and cfg.pretrain.mixed_precision == "fp32"


def test_downstream_recipe_defaults_equal_params_yaml():
    """params.yaml is the single source of truth: the typed defaults of the two recipes are its values."""
    from sslam.config import FinetuneConfig, LinearEvalConfig

    cfg = load_config(REPO / "params.yaml")
    assert FinetuneConfig() == cfg.finetune
    assert LinearEvalConfig() == cfg.linear_eval
    assert cfg.linear_eval.protocol == "cached"


def test_cached_linear_eval_refuses_input_augmentation(raw):
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


def _diff(a, b, prefix=""):
    """Dotted keys where two nested mappings differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: code {a!r} vs params.yaml {b!r}"]


def test_code_defaults_equal_params_yaml_everywhere():
    """params.yaml is the one source of truth: a Config() built without it (a test, a notebook, a key
    deleted from params.yaml) runs exactly the configured setup. Compared key by key, nested."""
    from sslam.config import Config, load_config

    diffs = _diff(Config().model_dump(), load_config(REPO / "params.yaml").model_dump())
    assert not diffs, "config.py defaults disagree with params.yaml:\n" + "\n".join(diffs)


def test_imports_are_encoders_and_a_file_path_is_told_where_to_go():
    cfg = parse_config(
        {"imports": {"sslam": {"path": "released/SSLAM_pretrain"}}, "evaluate": {"linear_encoders": ["sslam"]}}
    )
    assert cfg.imports["sslam"].overrides() == {} and cfg.imports["sslam"].weights == "student"
    with pytest.raises(ConfigError, match=r"imports: \{released: \{path: released/SSLAM_pretrain\}\}"):
        parse_config({"evaluate": {"linear_encoders": ["file:released/SSLAM_pretrain"]}})
    with pytest.raises(ConfigError, match=r"imports \['stage2'\]: the name of a pretraining run"):
        parse_config({"imports": {"stage2": {"path": "x"}}})
    with pytest.raises(ConfigError, match=r"evaluate.finetune_encoders \['eat'\].*imports \(\[\]\)"):
        parse_config({"evaluate": {"finetune_encoders": ["eat"]}})
