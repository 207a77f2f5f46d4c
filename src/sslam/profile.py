"""Print a named profile as `dvc exp run -S` flags, after checking it against the config schema.

dvc exp run $(python -m sslam.profile audioset)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from sslam.config import ConfigError, load_config

PROFILES = Path(__file__).parent / "profiles"


def profile_overrides(name: str) -> dict:
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no profile {name!r}; available: {sorted(p.stem for p in PROFILES.glob('*.yaml'))}")
    return yaml.safe_load(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        overrides = profile_overrides(args.name)
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
