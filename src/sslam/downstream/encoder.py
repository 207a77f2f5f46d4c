"""The encoder under evaluation and the head on top of it: building it, pooling its tokens, running it.

Representation (``pooling``): ``mean`` of the final patch tokens (the default: measured better than CLS
on the tiny model), ``cls`` (the reference; the global loss trains that token), or ``freq_mean``
(time-average per frequency row, rows concatenated: keeps where in frequency a source sits). Then
LayerNorm and one linear layer (:class:`Head`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from sslam.config import Config
from sslam.downstream.tasks import TaskStore
from sslam.models.contract import PatchEncoder
from sslam.models.student import Student
from sslam.released import check_input, imported_input, load_folder_encoder

BATCH = 64  # clips per forward pass when embedding or predicting (no gradient)


def load_encoder(
    cfg: Config, name: str, frames: int, mel: int, checkpoints: str | Path = "checkpoints"
) -> PatchEncoder:
    """``randomN``: a fresh encoder from seed N (random0 is exactly pretraining's starting point);
    otherwise the student encoder of ``checkpoints/<name>/final`` (built for ``pretrain.objective``, whose
    student it is; the encoder's positions follow ``frames``, so a model pretrained on crops reads whole
    clips), or the encoder an ``import_weights`` stage wrote there (built as its ``meta.json`` says)."""
    m = re.fullmatch(r"random(\d+)", name)
    torch.manual_seed(int(m.group(1)) if m else 0)
    folder = Path(checkpoints) / name / "final"
    if not m and imported_input(folder) is not None:  # an import: its own model, not params' model section
        return load_folder_encoder(folder, frames, mel)
    student = Student(cfg.model, frames, mel, cfg.pretrain.objective)
    if not m:
        path = folder / "student.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no final checkpoint for encoder {name!r}")
        student.load_state_dict(load_file(path))
    return student.encoder


def store_for_encoder(
    cfg: Config, name: str, task: str, store: TaskStore, norm_stats: str, checkpoints: str | Path = "checkpoints"
) -> TaskStore:
    """The task's clips as encoder ``name`` must read them. An imported encoder (``imports``) brings its
    input: the task's log-mel must be the one it was trained on (else a clear error) and, under
    ``norm_stats: pretrain``, its own statistics (the released weights': AudioSet's) replace the
    features stage's. The clip length stays the task's (the positions follow it, as in the reference)."""
    spec = imported_input(Path(checkpoints) / name / "final")
    if spec is None:
        return store
    section = f"datasets.{task}" if task in cfg.datasets else "features"
    check_input(spec, cfg.data.sample_rate, cfg.task_features(task), f"encoder {name} on task {task} ({section})")
    if norm_stats == "task":
        return store
    return store.renormalised({"mean": spec["features"]["norm_mean"], "std": spec["features"]["norm_std"]})


class Head(nn.Module):
    """LayerNorm + Linear on the pooled representation (trunc-normal 0.02, as the reference)."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(z))


def pool(encoder: PatchEncoder, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """The pooled representation (B, :func:`pooled_dim`) of a normalised log-mel batch."""
    h, _ = encoder(x)
    if pooling == "cls":
        return h[:, 0]
    if pooling == "freq_mean":  # tokens are time-major: (B, T*F, D) -> (B, T, F, D) -> mean over T
        return h[:, 1:].reshape(h.shape[0], encoder.grid[0], encoder.grid[1], -1).mean(1).flatten(1)
    return h[:, 1:].mean(dim=1)


def pooled_dim(encoder: PatchEncoder, pooling: str) -> int:
    return encoder.dim * (encoder.grid[1] if pooling == "freq_mean" else 1)


def embed(encoder: PatchEncoder, store: TaskStore, rows: np.ndarray, pooling: str, batch: int = BATCH) -> torch.Tensor:
    """Pooled representations of the given rows, encoder in eval mode, no gradient."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(rows), batch):
            out.append(pool(encoder, store.batch(rows[k : k + batch]), pooling))
    return torch.cat(out)


def predict(encoder: PatchEncoder, head: Head, store: TaskStore, rows: np.ndarray, pooling: str) -> torch.Tensor:
    """Logits of the given rows, encoder in eval mode, no gradient (validation and test)."""
    encoder.eval()
    with torch.no_grad():
        return torch.cat(
            [head(pool(encoder, store.batch(rows[k : k + BATCH]), pooling)) for k in range(0, len(rows), BATCH)]
        )
