"""DVC stage `import_weights@<name>`: a checkpoint from outside into checkpoints/<name>/final.

Reads the released EAT / SSLAM weights (the model-hub folder or a fairseq .pt) or an export of this
project (``python -m sslam.export``), checks every key and shape, and writes this project's checkpoint
folder with the input the encoder expects (sample rate, fbank, window, normalisation), so `<name>` is an
encoder of evaluate.linear_encoders / finetune_encoders and of the embedding API like any other.
"""

from __future__ import annotations

import argparse
import sys

from sslam.config.params import load_config_or_exit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="a key of params.yaml imports")
    ap.add_argument("--checkpoints", default="checkpoints")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.params)
    if args.name not in cfg.imports:
        print(f"import_weights: {args.name!r} is not in params.yaml imports ({sorted(cfg.imports)})", file=sys.stderr)
        return 2
    from sslam.checkpoints import final_folder
    from sslam.interop import CheckpointError, import_checkpoint

    entry = cfg.imports[args.name]
    try:
        meta = import_checkpoint(
            entry.path, final_folder(args.checkpoints, args.name), entry.weights, entry.num_heads, entry.overrides()
        )
    except (CheckpointError, FileNotFoundError) as err:
        print(f"import_weights {args.name} (imports.{args.name}.path): {err}", file=sys.stderr)
        return 2
    m, f = meta["fingerprint"]["model"], meta["input"]["features"]
    print(
        f"import_weights {args.name}: {meta['imported']['layout']} layout, {m['depth']} blocks x {m['embed_dim']} "
        f"({m['num_heads']} heads), input {f['num_mel_bins']} mel x {f['target_frames']} frames, "
        f"norm ({f['norm_mean']}, {f['norm_std']}); classifier tensors skipped: {meta['imported']['classifier']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
