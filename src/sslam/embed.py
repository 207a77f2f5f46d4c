"""Embeddings for other programs, with the HEAR API's names and shapes.

    from sslam.embed import load_model, get_scene_embeddings, get_timestamp_embeddings
    model = load_model("checkpoints/stage2/final")          # any encoder this project trained, an import,
                                                            # or the released weights' folder itself
    scene = get_scene_embeddings(audio, model)              # audio: float [n, samples] at model.sample_rate
    frames, times_ms = get_timestamp_embeddings(audio, model)  # [n, T, D], [n, T] window centres in ms

The front end is applied inside (the log-mel the model was trained on, the pretraining statistics), so
a caller passes raw audio in [-1, 1] of any length: audio longer than the model's input is cut into
consecutive windows of ``features.target_frames`` frames. A time token of the encoder covers one patch
of frames (16 x 10 ms = 160 ms for the default), so the timestamp embeddings come from passes whose
windows are shifted by a fraction of a patch and are interleaved, giving a hop of at most 50 ms
(40 ms for 16-frame patches); each timestamp embedding is the mean over frequency of the tokens of one
time patch, kept when its centre lies within the audio. The scene embedding is the clip's pooled
representation exactly as evaluation computes it (:mod:`sslam.models.pooling`, ``pooling``: by default
params' ``linear_eval.pooling``): ``mean`` of the unshifted pass's kept tokens, ``freq_mean`` per
frequency row, or ``cls`` (the mean of the windows' summary tokens).

Bulk extraction: ``python -m sslam.embed <audio folder> <out.npz>`` (``--help``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslam.config.features import FeaturesConfig
from sslam.config.params import load_config
from sslam.features.fbank import log_mel
from sslam.models.contract import PatchEncoder
from sslam.models.pooling import POOLINGS, pool_patches, pooled_width, valid_time_patches

MAX_HOP_MS = 50.0  # the HEAR API's limit for timestamp embeddings
# An input spec holds the front end, the window and the normalisation; the features section's other keys
# (the feature cache's, and f_min / f_max, which only the logmel front end reads) take these inert values.
NOT_IN_AN_INPUT_SPEC = {
    "f_min": 50.0,
    "f_max": 8000.0,
    "stats_split": "unbalanced",
    "shard_size": 128,
    "store_waveforms": False,
}


class EmbeddingModel(nn.Module):
    """A frozen encoder with its front end: what :func:`get_scene_embeddings` and
    :func:`get_timestamp_embeddings` take."""

    def __init__(
        self,
        encoder: PatchEncoder,
        features: FeaturesConfig,
        sample_rate: int,
        mean: float,
        std: float,
        pooling: str = "mean",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder.eval()
        self.features, self.sample_rate, self.pooling = features, sample_rate, pooling
        self.mean, self.std = float(mean), float(std)
        self.timestamp_embedding_size = encoder.dim
        self.scene_embedding_size = pooled_width(encoder.dim, encoder.grid[1], pooling)
        self.window = features.target_frames  # frames per encoder input
        self.patch_frames = encoder.patch_size[0]
        if self.window % self.patch_frames:
            raise ValueError(
                f"features.target_frames {self.window} is not a multiple of the patch's {self.patch_frames} "
                "frames: consecutive windows would leave frames between their time patches"
            )
        # the largest step (frames) dividing a patch whose duration stays within the hop limit
        self.step = max(
            d
            for d in range(1, self.patch_frames + 1)
            if self.patch_frames % d == 0 and d * features.frame_shift_ms <= MAX_HOP_MS
        )

    @property
    def hop_ms(self) -> float:
        return self.step * self.features.frame_shift_ms

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(samples,) float in [-1, 1] -> (frames, mel) raw log-mel: the features stage's front end, which
        also reads the clip as floats in [-1, 1]."""
        return log_mel(audio.detach().float().cpu(), self.sample_rate, self.features)

    def _windows(self, fb: torch.Tensor, offset: int) -> tuple[torch.Tensor, int]:
        """The raw log-mel from ``offset`` cut into windows of ``self.window`` frames (zero-padded, as the
        store pads), normalised; and how many time patches are centred on audio (the pooling rule)."""
        x = fb[offset:]
        n = max(1, math.ceil(x.shape[0] / self.window))
        valid = valid_time_patches(x.shape[0], self.patch_frames, n * (self.window // self.patch_frames))
        padded = torch.zeros(n * self.window, fb.shape[1])
        padded[: x.shape[0]] = x
        return (padded.view(n, self.window, -1) - self.mean) / (2 * self.std), valid

    def _encode(self, fb: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The windows from ``offset`` through the encoder: their summary tokens (windows, D), their patch
        tokens as one sequence of time patches (windows * T', F', D), and how many of those hold audio."""
        x, valid = self._windows(fb, offset)
        h, _ = self.encoder(x.to(next(self.encoder.parameters()).device))
        h = h.float().cpu()
        return h[:, 0], h[:, 1:].reshape(x.shape[0] * (self.window // self.patch_frames), -1, h.shape[-1]), valid

    def _time_patches(self, fb: torch.Tensor, offset: int) -> torch.Tensor:
        """(valid time patches, D): each time patch's tokens averaged over frequency (tokens are
        time-major), patches of padding dropped."""
        _, tokens, valid = self._encode(fb, offset)
        return tokens.mean(1)[:valid]

    @torch.no_grad()
    def time_tokens(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One clip: (T, D) timestamp embeddings and (T,) their centre times in ms, sorted."""
        fb = self.logmel(audio)
        embs, times = [], []
        for offset in range(0, self.patch_frames, self.step):
            if offset and offset >= fb.shape[0]:  # a clip shorter than the shift: the unshifted pass only
                break
            tokens = self._time_patches(fb, offset)
            first = offset + torch.arange(len(tokens)) * self.patch_frames  # first frame of each time patch
            centre = (first + (self.patch_frames - 1) / 2) * self.features.frame_shift_ms
            embs.append(tokens)
            times.append(centre + self.features.frame_length_ms / 2)
        emb, t = torch.cat(embs), torch.cat(times)
        order = torch.argsort(t, stable=True)
        return emb[order], t[order]

    @torch.no_grad()
    def scene(self, audio: torch.Tensor) -> torch.Tensor:
        """One clip: its pooled representation (``pooling``) over the unshifted windows: the mean (per
        frequency row for ``freq_mean``) over the time patches holding audio, or the mean of the windows'
        summary tokens (``cls``)."""
        summary, tokens, valid = self._encode(self.logmel(audio), 0)
        if self.pooling == "cls":
            return summary.mean(0)
        keep = torch.arange(tokens.shape[0])[None, :] < valid
        return pool_patches(tokens[None], self.pooling, keep)[0]


def load_model(
    model_file_path: str = "checkpoints/stage2/final",
    params: str = "params.yaml",
    stats: str = "data/features/stats.json",
    device: str = "cpu",
    pooling: str | None = None,
) -> EmbeddingModel:
    """Any encoder checkpoint: a checkpoint folder of this project (``checkpoints/<name>/final``, a run or
    an import: the encoder its ``meta.json`` builds, with the input settings it records), or straight
    from the file: the released EAT / SSLAM weights (hub folder or fairseq ``.pt``) or an export of this
    project (``python -m sslam.export``). ``params`` and ``stats`` are read only for a run written before
    its ``meta.json`` recorded its input: the front end of ``params``, the normalisation it was pretrained
    with from ``stats`` or ``features.norm_*``. ``pooling`` (None: ``linear_eval.pooling`` of
    ``params``, else ``mean``): the scene embedding is then the vector linear evaluation trains its head
    on."""
    from sslam.checkpoints import META, folder_input, own_input, read_encoder
    from sslam.interop import load_weights

    if pooling is None:
        pooling = load_config(params).linear_eval.pooling if Path(params).is_file() else "mean"
    folder = Path(model_file_path)
    if not (folder / META).is_file():  # a released or exported checkpoint
        encoder, info = load_weights(folder)
        return _embedding_model(encoder, info["input"], device, pooling)
    spec = folder_input(folder)
    if spec is None:  # a run from before meta.json recorded its input
        cfg = load_config(params)
        spec = own_input(cfg.features, cfg.data.sample_rate, stats)
    f = spec["features"]
    encoder = read_encoder(folder, f["target_frames"], f["num_mel_bins"])
    return _embedding_model(encoder, spec, device, pooling)


def _embedding_model(encoder: PatchEncoder, spec: dict, device: str, pooling: str) -> EmbeddingModel:
    """The encoder with the front end and normalisation of its input settings (:mod:`sslam.checkpoints`)."""
    features = FeaturesConfig.model_validate(NOT_IN_AN_INPUT_SPEC | spec["features"])
    return EmbeddingModel(
        encoder.to(device), features, spec["sample_rate"], features.norm_mean, features.norm_std, pooling
    )


def _clips(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    audio = torch.as_tensor(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n, samples], got shape {tuple(audio.shape)}")
    return audio


def get_scene_embeddings(audio: torch.Tensor, model: EmbeddingModel) -> torch.Tensor:
    """[n, samples] -> [n, scene_embedding_size] float32."""
    return torch.stack([model.scene(a) for a in _clips(audio)]).float()


def get_timestamp_embeddings(audio: torch.Tensor, model: EmbeddingModel) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, samples] -> ([n, T, timestamp_embedding_size] float32, [n, T] centre times in ms)."""
    out = [model.time_tokens(a) for a in _clips(audio)]
    return torch.stack([e for e, _ in out]).float(), torch.stack([t for _, t in out]).float()


# ----------------------------------------------------------------------------- bulk extraction

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif")


def extract_folder(model: EmbeddingModel, folder: str | Path, out: str | Path, chunk: int = 64) -> dict:
    """Scene embeddings of every audio file under ``folder`` into ``out`` (npz: ``clip_ids``,
    ``embeddings`` [n, D], ``failed_ids``, ``failed_reasons``). Resumable: finished chunks are kept
    beside ``out`` (``<out>.part-<k>.npz``, written atomically) and reused; a bad file is a failure row."""
    from tqdm import tqdm

    from sslam.data.folder import decode_audio, to_mono
    from sslam.io import atomic_path

    folder, out = Path(folder), Path(out)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    ids = [str(p.relative_to(folder).with_suffix("")) for p in files]
    parts = []
    bar = tqdm(total=len(files), desc="embedding", unit="clip", mininterval=1.0)
    for k in range(0, len(files), chunk):
        part = out.with_name(f"{out.name}.part-{k // chunk:05d}.npz")
        if not part.is_file():
            got, emb, bad, why = [], [], [], []
            for cid, path in zip(ids[k : k + chunk], files[k : k + chunk], strict=True):
                try:
                    data, rate = decode_audio(path)
                    if data.shape[0] == 0:
                        raise RuntimeError("no audio samples")
                    mono, _ = to_mono(data, rate, model.sample_rate)
                    emb.append(model.scene(torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))).numpy())
                    got.append(cid)
                except (RuntimeError, ValueError) as err:
                    bad.append(cid)
                    why.append(" ".join(str(err).split())[:300])
            with atomic_path(part) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    clip_ids=np.array(got, dtype=str),
                    embeddings=np.array(emb, dtype=np.float32).reshape(len(got), model.scene_embedding_size),
                    failed_ids=np.array(bad, dtype=str),
                    failed_reasons=np.array(why, dtype=str),
                )
        parts.append(part)
        bar.update(min(chunk, len(files) - k))
    bar.close()
    loaded = [np.load(p) for p in parts]
    merged = {
        key: np.concatenate([d[key] for d in loaded])
        for key in ("clip_ids", "embeddings", "failed_ids", "failed_reasons")
    }
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **merged)
    for p in parts:
        p.unlink()
    return {"clips": len(merged["clip_ids"]), "failed": len(merged["failed_ids"]), "dim": model.scene_embedding_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Scene embeddings of every audio file of a folder, into one npz.")
    ap.add_argument("folder")
    ap.add_argument("out", help="the .npz to write (clip_ids, embeddings, failed_ids, failed_reasons)")
    ap.add_argument(
        "--checkpoint",
        default="checkpoints/stage2/final",
        help="a run or import of this project (checkpoints/<name>/final), the released EAT / SSLAM weights "
        "(model-hub folder or fairseq .pt) or an export (python -m sslam.export)",
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--stats", default="data/features/stats.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--pooling", choices=POOLINGS, default=None, help="default: params' linear_eval.pooling (evaluation's vector)"
    )
    args = ap.parse_args(argv)
    try:
        model = load_model(args.checkpoint, args.params, args.stats, args.device, args.pooling)
        summary = extract_folder(model, args.folder, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"embed: {err}", file=sys.stderr)
        return 2
    print(f"embed: {summary['clips']} clips -> {args.out} ({summary['dim']} dims), {summary['failed']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
