"""Adding an encoder is one new file: a copy of the project gets ``src/sslam/models/toy.py`` (a residual GRU
encoder with a section of its own, ``model.toy``) and nothing else changes in ``src/``; the encoder then
validates as ``model.encoder: toy``, builds, and passes the shared contract tests
(tests/test_encoder_contract.py, run in the copy on that encoder only). The worked example of
docs/models.md, "Adding an encoder"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

TOY = '''"""A toy encoder: pre-norm residual GRU blocks (the worked example of docs/models.md)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sslam.config.base import Section
from sslam.models.contract import ModelSettings, SequenceEncoder, drop_path
from sslam.models.registry import register_encoder


class ToyConfig(Section):
    """``model.toy``: the GRU's direction and where the summary token sits (values in params.yaml)."""

    bidirectional: bool
    cls_position: Literal["start", "middle", "none"]


class GruBlock(nn.Module):
    """Returns the new state and the layer target (the GRU's output before the residual)."""

    def __init__(self, dim: int, bidirectional: bool):
        super().__init__()
        self.drop_path = 0.0  # set by set_drop_path (fine-tuning)
        self.norm = nn.LayerNorm(dim)
        self.gru = nn.GRU(dim, dim // 2 if bidirectional else dim, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.gru(self.norm(x))[0]
        return x + drop_path(t, self.drop_path, self.training), t


@register_encoder("toy", options=ToyConfig, masked_tokens="mask_token")
class ToyEncoder(SequenceEncoder):
    """The shared front end, GRU blocks, a final LayerNorm; SequenceEncoder does the rest of the contract."""

    def __init__(self, dim, depth, bidirectional, cls_position, patch, frames, mel, patch_init, masked_tokens):
        super().__init__(dim, patch, frames, mel, masked_tokens, cls_position)
        self.blocks = nn.ModuleList(GruBlock(dim, bidirectional) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim)
        self.init_front_end(patch_init)

    @classmethod
    def from_config(
        cls, cfg: ModelSettings, options: ToyConfig, frames: int, mel: int, masked_tokens: str
    ) -> ToyEncoder:
        return cls(
            cfg.embed_dim,
            cfg.depth,
            options.bidirectional,
            options.cls_position,
            cfg.patch,
            frames,
            mel,
            cfg.patch_init,
            masked_tokens,
        )

    @classmethod
    def check_config(cls, cfg: ModelSettings, options: ToyConfig) -> None:
        if options.bidirectional and cfg.embed_dim % 2:
            raise ValueError(f"model.toy.bidirectional needs an even embed_dim, got {cfg.embed_dim}")
'''

# a test of the copy: the params load, the section's checks and the build, through the public entry points
TOY_PARAMS_TEST = """
import pytest

import sslam
from sslam.config.base import ConfigError
from sslam.config.params import load_config
from sslam.models.registry import ENCODERS, build_encoder


def test_the_toy_is_a_model_encoder():
    assert sslam.__file__.startswith({src!r}), sslam.__file__
    assert list(ENCODERS) == ["mamba", "toy", "transformer", "xlstm"]
    cfg = load_config("params.yaml", {{"model.encoder": "toy", "model.embed_dim": 32, "model.depth": 2}})
    assert type(cfg.model.toy).__name__ == "ToyConfig" and cfg.model.toy.cls_position == "middle"
    assert cfg.model.model_dump()["toy"] == {{"bidirectional": True, "cls_position": "middle"}}
    enc = build_encoder(cfg.model, 64, 32)
    assert type(enc).__name__ == "ToyEncoder" and enc.masked_tokens == "mask_token" and enc.num_layers == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({{"model.encoder": "toy", "model.embed_dim": 33}}, "needs an even embed_dim"),
        ({{"model.toy.hidden": 3}}, "model.toy.hidden: unknown key"),
        ({{"model.encoder": "gru"}}, "'mamba', 'toy', 'transformer' or 'xlstm'"),
    ],
)
def test_the_toy_section_is_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("params.yaml", overrides)
"""


def copy_project(root: Path) -> None:
    """``src/``, the tests the contract run needs, params.yaml with a ``model.toy`` section, pyproject.toml."""
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "tests").mkdir()
    for name in ("conftest.py", "pretrain_helpers.py", "test_encoder_contract.py"):
        shutil.copy(REPO / "tests" / name, root / "tests" / name)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["toy"] = {"bidirectional": True, "cls_position": "middle"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_new_encoder_is_one_new_file(tmp_path):
    copy_project(tmp_path)
    before = {p.relative_to(tmp_path) for p in (tmp_path / "src").rglob("*") if p.is_file()}
    (tmp_path / "src" / "sslam" / "models" / "toy.py").write_text(TOY)
    after = {p.relative_to(tmp_path) for p in (tmp_path / "src").rglob("*") if p.is_file()}
    assert after - before == {Path("src/sslam/models/toy.py")}

    (tmp_path / "tests" / "test_toy_params.py").write_text(TOY_PARAMS_TEST.format(src=str(tmp_path / "src")))

    # the DVC-tracking check is left out: a copy has no dvc.yaml, and the toy is not named in models/__init__
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"), SSLAM_TEST_ENCODERS="toy")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-k", "not tracked_by_dvc"]
    tests = ["tests/test_toy_params.py", "tests/test_encoder_contract.py"]
    run = subprocess.run([*cmd, *tests], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    ran = {line.split("::", 1)[1] for line in out.splitlines() if line.startswith("PASSED ")}
    toy = {t.split("[")[0] for t in ran if "[toy-auto" in t}  # every contract test that takes an encoder
    assert "test_the_toy_is_a_model_encoder" in ran and len(toy) == 6, sorted(ran)
