"""The `ontology` stage plots and summarises the rule that params.yaml picks (default drop_both_concrete)."""

from __future__ import annotations

import importlib.util
import json

import yaml
from conftest import REPO

from sslam.config.params import load_config


def test_default_rule_is_drop_both_concrete():
    """The reading that reproduces the paper's Figure 3 on AS-2M is params.yaml's rule (the schema has none)."""
    assert load_config(REPO / "params.yaml").ontology.rule == "drop_both_concrete"


def run_stage(tmp_path, labels, rule: str) -> dict:
    """`stages/ontology.py` on ``labels`` with params.yaml but for ontology.rule."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ontology"]["rule"] = rule
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    spec = importlib.util.spec_from_file_location("ontology_stage", REPO / "stages" / "ontology.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    out = tmp_path / rule
    argv = ["--params", str(tmp_path / "params.yaml"), "--labels", str(labels), "--metrics-dir", str(out)]
    assert stage.main(argv) == 0
    return json.loads((out / "polyphony.json").read_text())


def test_stage_reports_the_chosen_rule(tmp_path, audioset_labels):
    """The summary's headline percentages follow ontology.rule (figures on the published lists, as in the README)."""
    concrete = run_stage(tmp_path, audioset_labels, "drop_both_concrete")
    components = run_stage(tmp_path, audioset_labels, "components")
    assert concrete["rule"] == "drop_both_concrete" and components["rule"] == "components"
    assert concrete["splits"]["balanced"]["polyphonic_percent"] == {"1": 53.89, "2": 50.92, "3": 49.04, "4": 47.65}
    assert concrete["splits"]["eval"]["polyphonic_percent"] == {"1": 54.97, "2": 51.56, "3": 49.67, "4": 48.49}
    assert components["splits"]["balanced"]["polyphonic_percent"] == {"1": 62.0, "2": 53.97, "3": 49.77, "4": 48.46}
    assert components["splits"]["eval"]["polyphonic_percent"] == {"1": 63.4, "2": 56.6, "3": 52.5, "4": 51.34}
    levels_csv = (tmp_path / "drop_both_concrete" / "polyphony_levels.csv").read_text().splitlines()
    assert levels_csv[1].startswith("1,") and "53.89" in levels_csv[1] and "54.97" in levels_csv[1]
