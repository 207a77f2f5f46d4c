"""Write an encoder of this project out for other programs: ``python -m sslam.export <checkpoint> <dir>``.

A Transformer goes out in the model-hub layout of the released EAT / SSLAM weights (``model.safetensors``
with the keys under ``model.``, ``config.json`` with the EAT config fields), so code written for those
weights reads it; this project's input settings ride along in ``config.json``'s ``sslam`` entry. Mamba
and xLSTM encoders have no published layout: they go out in this project's own (``encoder.safetensors``
with the encoder's state-dict names, ``config.json`` with ``format: sslam-encoder``, the ``model``
section and the input). Both read back with ``sslam.interop.load_weights``, the ``imports`` params
section and ``sslam.embed.load_model``. The input settings written are the ones the checkpoint's
``meta.json`` records; ``--params`` and ``--stats`` only stand in for a run written before it recorded them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslam.checkpoints import folder_input, own_input
from sslam.config.params import load_config
from sslam.interop import CheckpointError, export_encoder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/stage2/final")
    ap.add_argument("out", help="the folder to write")
    ap.add_argument(
        "--params", default="params.yaml", help="the front end of a run whose meta.json does not record its input"
    )
    ap.add_argument("--stats", default="data/features/stats.json", help="the normalisation statistics of such a run")
    args = ap.parse_args(argv)
    try:
        spec = folder_input(args.checkpoint)
        if spec is None:  # a run from before meta.json recorded its input
            cfg = load_config(args.params)
            spec = own_input(cfg.features, cfg.data.sample_rate, args.stats)
        layout = export_encoder(args.checkpoint, args.out, spec)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    files = ", ".join(sorted(p.name for p in Path(args.out).iterdir()))
    print(f"export: {args.checkpoint} -> {args.out} ({layout} layout: {files})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
