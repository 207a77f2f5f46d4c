"""Benchmark: scene-embedding throughput of the embedding API (what `python -m sslam.embed` runs per
file) for the CPU tiny model and the ViT-B shape, random weights, 10 s clips; against the naive way of
one window per forward pass, measured in the same run (the embeddings agree, checked).

    python bench/embed.py [--clips 8] [--seconds 10] [--device cuda] [--bf16]

``--bf16`` runs the encoder under bfloat16 autocast and prints how far its embeddings are from float32's
(cosine similarity), the check a GPU user needs before trusting the faster path.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from sslam.config.model import ModelConfig
from sslam.config.params import load_config
from sslam.embed import load_model
from sslam.pretrain.student import Student

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny (params.yaml)": ({}, None),
    "ViT-B (768 x 12, 1024 frames)": ({"embed_dim": 768, "depth": 12, "num_heads": 12}, 1024),
}


def naive_scene(model, audio: torch.Tensor) -> torch.Tensor:
    """One window per forward pass."""
    x, valid = model._windows(model.logmel(audio), 0)
    grid_t = model.window // model.patch_frames
    with torch.no_grad():
        hs = [model.encoder(w[None])[0][:, 1:] for w in x]
    tokens = torch.cat(hs).reshape(x.shape[0] * grid_t, -1, model.scene_embedding_size)[:valid]
    return tokens.mean(dim=(0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast against float32")
    args = ap.parse_args()

    def timed(fn) -> tuple[torch.Tensor, float]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = torch.stack([fn(a) for a in audio])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    base = load_config(REPO / "params.yaml")
    audio = 0.1 * torch.randn(args.clips, int(args.seconds * base.data.sample_rate))
    for name, (size, frames) in SHAPES.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ModelConfig.model_validate(base.model.model_dump() | size)
            params = base.model_dump(mode="json")
            params["model"] = cfg.model_dump(mode="json")
            if frames:
                params["features"]["target_frames"] = frames
            (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
            folder = Path(tmp) / "final"
            folder.mkdir()
            student = Student(cfg, params["features"]["target_frames"], params["features"]["num_mel_bins"], "bootstrap")
            save_file(student.state_dict(), folder / "student.safetensors")
            (folder / "meta.json").write_text(json.dumps({"fingerprint": {"model": cfg.model_dump(mode="json")}}))
            (Path(tmp) / "stats.json").write_text(json.dumps({"mean": -6.0, "std": 3.0}))
            model = load_model(str(folder), str(Path(tmp) / "params.yaml"), str(Path(tmp) / "stats.json"), args.device)
            model.scene(audio[0]), naive_scene(model, audio[0])  # warm-up: one-time allocations and caches
            fast, t_fast = timed(model.scene)
            slow, t_slow = timed(partial(naive_scene, model))
            assert torch.allclose(fast, slow, atol=1e-4), (fast - slow).abs().max()
            print(
                f"{name} on {args.device}: {args.clips / t_fast:.2f} clips/s of {args.seconds:g} s "
                f"({model.window} frames per window), one window per pass {args.clips / t_slow:.2f} clips/s: "
                f"{t_slow / t_fast:.2f}x"
            )
            if args.bf16:
                with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16):
                    model.scene(audio[0])
                    half, t_half = timed(model.scene)
                cos = torch.nn.functional.cosine_similarity(half, fast, dim=1)
                print(
                    f"{name} bf16 autocast: {args.clips / t_half:.2f} clips/s, {t_fast / t_half:.2f}x float32; "
                    f"cosine to float32 min {cos.min():.5f} mean {cos.mean():.5f}"
                )


if __name__ == "__main__":
    main()
