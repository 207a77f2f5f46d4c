"""Released weights through DVC: an imports entry is converted by its own stage, evaluated and
fine-tuned beside this project's encoders with the checkpoint's own normalisation, and a new download
of the weights reruns the import and everything that read it."""

from __future__ import annotations

import json

import pytest
import yaml
from test_interop import hub_weights, write_hub
from test_pipeline_e2e import commit, copy_repo, sh, tiny_pipeline

pytestmark = pytest.mark.slow


def test_released_weights_are_an_encoder_like_any_other(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    released = write_hub(tmp_path / "released" / "EAT-tiny", hub_weights(0, mel=128), mel=128)
    params = tiny_pipeline(repo)
    params["imports"] = {"eat": {"path": str(released)}}
    params["evaluate"].update(
        linear_encoders=["stage2", "eat", "random0"], finetune_tasks=["mono"], finetune_encoders=["eat"]
    )
    params["finetune"].update(epochs=1)
    params["linear_eval"].update(epochs=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert "Running stage 'import_weights@eat'" in sh(["dvc", "repro"], repo).stdout
    meta = json.loads((repo / "checkpoints" / "eat" / "final" / "meta.json").read_text())
    assert meta["imported"]["layout"] == "hub" and meta["fingerprint"]["model"]["embed_dim"] == 32
    assert (meta["input"]["features"]["norm_mean"], meta["input"]["features"]["norm_std"]) == (-4.268, 4.569)
    lin = json.loads((repo / "metrics" / "eval" / "mono_linear.json").read_text())
    ft = json.loads((repo / "metrics" / "eval" / "mono_finetune.json").read_text())
    assert set(lin["encoders"]) == {"stage2", "eat", "random0"} and set(ft["encoders"]) == {"eat"}

    # the stage's score is the imported encoder's on the clips normalised with the checkpoint's statistics
    from sslam.config.params import load_config
    from sslam.downstream.encoder import load_encoder, store_for_encoder
    from sslam.downstream.linear import linear_eval
    from sslam.downstream.tasks import load_task

    cfg = load_config(repo / "params.yaml")
    task, store = load_task(repo / "data" / "corpus", "square", cfg.tasks["square"], repo / "data" / "features")
    assert store.mean != -4.268  # the features stage's own statistics differ from the checkpoint's
    recipe, seed, ck = cfg.linear_recipe("square"), cfg.evaluate.seed, repo / "checkpoints"
    frames, mel = store.raw(0).shape
    data = store_for_encoder(cfg, "eat", "square", store, recipe.norm_stats, ck)
    assert (data.mean, data.std) == (-4.268, 4.569)
    stage = json.loads((repo / "metrics" / "eval" / "square_linear.json").read_text())["encoders"]["eat"]["map"]
    got = linear_eval(load_encoder(cfg, "eat", frames, mel, ck), task, data, recipe, seed, None).metrics["map"]
    assert got == pytest.approx(stage, abs=1e-6)
    unnormalised = linear_eval(load_encoder(cfg, "eat", frames, mel, ck), task, store, recipe, seed, None).metrics[
        "map"
    ]
    assert abs(unnormalised - stage) > 1e-4  # the normalisation reached the scores

    commit(repo, "imported")
    write_hub(released, hub_weights(1, mel=128), mel=128)  # a new download of the weights
    assert set(json.loads(sh(["dvc", "status", "--json"], repo).stdout)) == {"import_weights@eat"}
    ran = {line.split("'")[1] for line in sh(["dvc", "repro"], repo).stdout.splitlines() if "Running stage" in line}
    assert ran == {"import_weights@eat", "linear_eval@mono", "linear_eval@square", "finetune@mono", "report"}
