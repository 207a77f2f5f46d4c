"""The encoder under evaluation and the head on top of it: building it, pooling its tokens, running it.

Representation (``pooling``, :mod:`sslam.models.pooling`: the embedding API's definition too): ``mean``
of the clip's valid patch tokens (the default: measured better than CLS on the tiny model), ``cls`` (the
reference; the global loss trains that token), or ``freq_mean`` (time-average of the valid patches per
frequency row, rows concatenated). Then LayerNorm and one linear layer (:class:`Head`).

``fbank_stats`` is the floor every table shows: no network, the mean and standard deviation over the
valid frames of the same normalised log-mel (:class:`FbankStats`), through the same head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslam.checkpoints import folder_input, read_encoder, resolve
from sslam.config.params import Config
from sslam.downstream.tasks import TaskStore, task_features
from sslam.interop import check_input
from sslam.models.contract import PatchEncoder
from sslam.models.pooling import pool_tokens, pooled_width, time_patch_mask
from sslam.pretrain.student import Student

BATCH = 64  # clips per forward pass when embedding or predicting (no gradient)


class FbankStats(nn.Module):
    """The non-learned floor: per mel bin, the mean and standard deviation over a clip's valid frames of
    its normalised log-mel, (B, frames, mel) -> (B, 2 mel). Pooling does not apply (no tokens)."""

    def __init__(self, mel: int):
        super().__init__()
        self.dim = 2 * mel

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        w = (torch.arange(x.shape[1])[None, :] < frames[:, None]).to(x.dtype)[:, :, None]  # (B, T, 1)
        n = w.sum(1).clamp_min(1.0)
        mean = (x * w).sum(1) / n
        var = (((x - mean[:, None]) ** 2) * w).sum(1) / n
        return torch.cat([mean, var.sqrt()], dim=1)


Encoder = PatchEncoder | FbankStats


def load_encoder(cfg: Config, name: str, frames: int, mel: int, checkpoints: str | Path = "checkpoints") -> Encoder:
    """The encoder ``name`` names (:func:`sslam.checkpoints.resolve`): ``fbank_stats``, the non-learned
    floor (:class:`FbankStats`); ``randomN``, a fresh encoder of params' model section from seed N (random0
    is exactly pretraining's starting point); otherwise the encoder of ``checkpoints/<name>/final``, a run
    or an import, built as its own ``meta.json`` says (never from params.yaml). The positions follow
    ``frames``, so a model pretrained on crops reads whole clips."""
    source = resolve(name, cfg, checkpoints)
    if source.kind == "fbank_stats":
        return FbankStats(mel)
    if source.kind == "random":
        torch.manual_seed(source.seed)  # the whole student, so the draws stay those of pretraining's start
        return Student(cfg.model, frames, mel, cfg.pretrain.objective).encoder
    return read_encoder(source.folder, frames, mel)


def store_for_encoder(
    cfg: Config, name: str, task: str, store: TaskStore, norm_stats: str, checkpoints: str | Path = "checkpoints"
) -> TaskStore:
    """The task's clips as encoder ``name`` must read them. An imported encoder (``imports``) brings its
    input: the task's log-mel must be the one it was trained on (else a clear error) and, under
    ``norm_stats: pretrain``, its own statistics (the released weights': AudioSet's) replace the
    features stage's. The clip length stays the task's (the positions follow it, as in the reference).
    This project's own encoders read the task as it is."""
    source = resolve(name, cfg, checkpoints)
    if source.kind != "import":
        return store
    spec = folder_input(source.folder)
    section = f"datasets.{task}" if task in cfg.datasets else "features"
    check_input(spec, cfg.data.sample_rate, task_features(cfg, task), f"encoder {name} on task {task} ({section})")
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


def pool(encoder: Encoder, x: torch.Tensor, pooling: str, frames: torch.Tensor) -> torch.Tensor:
    """The pooled representation (B, :func:`pooled_dim`) of a normalised log-mel batch whose clips hold
    ``frames`` (B,) valid frames each (:func:`sslam.models.pooling.pool_tokens`)."""
    if isinstance(encoder, FbankStats):
        return encoder(x, frames)
    h, _ = encoder(x)
    return pool_tokens(h, encoder.grid, pooling, time_patch_mask(frames, encoder.patch_size[0], encoder.grid[0]))


def pooled_dim(encoder: Encoder, pooling: str) -> int:
    if isinstance(encoder, FbankStats):
        return encoder.dim
    return pooled_width(encoder.dim, encoder.grid[1], pooling)


def valid_frames(store: TaskStore, rows: np.ndarray) -> torch.Tensor:
    """(len(rows),) the valid (unpadded) frames of the given rows."""
    return torch.tensor([store.frames(int(r)) for r in rows], dtype=torch.long)


def embed(encoder: Encoder, store: TaskStore, rows: np.ndarray, pooling: str, batch: int = BATCH) -> torch.Tensor:
    """Pooled representations of the given rows, encoder in eval mode, no gradient."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(rows), batch):
            part = rows[k : k + batch]
            out.append(pool(encoder, store.batch(part), pooling, valid_frames(store, part)))
    return torch.cat(out)


def predict(encoder: Encoder, head: Head, store: TaskStore, rows: np.ndarray, pooling: str) -> torch.Tensor:
    """Logits of the given rows, encoder in eval mode, no gradient (validation and test)."""
    with torch.no_grad():
        return head(embed(encoder, store, rows, pooling))
