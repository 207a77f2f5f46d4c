"""Print named profiles as `dvc exp run -S` flags, after checking them against the config schema.

Several profiles merge left to right (a setting, then sizes); ``--encoder`` picks the encoder last:

    dvc exp run $(python -m sslam.profile audioset)
    dvc exp run $(python -m sslam.profile ssast ssamba_tiny)
    dvc exp run $(python -m sslam.profile overview_msm --encoder xlstm)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from sslam.config.base import ConfigError
from sslam.config.params import load_config
from sslam.models.registry import ENCODERS

PROFILES = Path(__file__).parent / "profiles"


def profile_overrides(name: str) -> dict:
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no profile {name!r}; available: {sorted(p.stem for p in PROFILES.glob('*.yaml'))}")
    return yaml.safe_load(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "names", nargs="+", metavar="name", help=f"profiles: {sorted(p.stem for p in PROFILES.glob('*.yaml'))}"
    )
    ap.add_argument("--encoder", choices=list(ENCODERS), help="model.encoder, set last")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        overrides: dict = {}
        for name in args.names:
            overrides |= profile_overrides(name)
        if args.encoder is not None:
            overrides["model.encoder"] = args.encoder
        load_config(args.params, overrides)  # the profile must validate on top of this params file
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(
        " ".join(
            f"-S '{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}'"
            for k, v in overrides.items()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
