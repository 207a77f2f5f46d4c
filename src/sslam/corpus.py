"""Work with a corpus folder (``data.corpus_dir``) by hand: take clips out of its tar shards to listen to
them, or pack a corpus of the older per-file layout (one FLAC per clip) into shards.

    python -m sslam.corpus extract data/corpus CLIP_ID [CLIP_ID ...] --out listen/
    python -m sslam.corpus pack data/corpus --clips-per-shard 2000

``pack`` is resumable (a killed run keeps the clips it packed) and removes a loose FLAC only after the
manifest naming its shard is written. The pipeline also reads the per-file layout as it is; packing
is what makes DVC fast on it (docs/data.md).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from sslam.data.manifest import ManifestRow, corpus_manifests, read_manifest, write_manifest
from sslam.data.shards import ClipLocation, ShardWriter, add_clip, read_clip
from sslam.io import atomic_path


def manifest_rows(path: Path) -> list[ManifestRow]:
    """A manifest as rows (labels back to tuples)."""
    df = read_manifest(path)
    return [
        ManifestRow(
            r.clip_id, r.split, r.path, r.duration, r.sample_rate, tuple(r.labels), r.status, r.reason, r.member
        )
        for r in df.itertuples()
    ]


def extract(corpus: Path, clip_ids: list[str], out: Path) -> list[Path]:
    """Write each named clip to ``out/<clip id>.flac``; an id no manifest lists raises, naming it."""
    wanted = set(clip_ids)
    found: dict[str, ManifestRow] = {}
    for manifest in corpus_manifests(corpus).values():
        for row in manifest_rows(manifest):
            if row.clip_id in wanted and row.path:
                found[row.clip_id] = row
    missing = [c for c in clip_ids if c not in found]
    if missing:
        raise KeyError(
            f"{corpus}: no clip {missing[0]!r} in any manifest"
            + (f" (and {len(missing) - 1} more)" * (len(missing) > 1))
        )
    written = []
    for cid in clip_ids:
        row = found[cid]
        target = out / f"{cid}.flac"
        with atomic_path(target) as tmp:
            tmp.write_bytes(read_clip(corpus, ClipLocation(row.path, row.member)))
        written.append(target)
    return written


def pack(corpus: Path, clips_per_shard: int) -> dict[str, int]:
    """Move every loose clip of every manifest into tar shards beside it; returns clips packed per set."""
    packed: dict[str, int] = {}
    for name, manifest in corpus_manifests(corpus).items():
        rows = manifest_rows(manifest)
        loose = [r for r in rows if r.path and not r.member]
        if not loose:
            continue
        writers: dict[Path, ShardWriter] = {}
        moved: dict[str, ManifestRow] = {}
        for row in tqdm(loose, desc=f"packing {name}", unit="clip", mininterval=1.0):
            folder = (corpus / row.path).parent
            writer = writers.get(folder) or writers.setdefault(folder, ShardWriter(folder, corpus, clips_per_shard))
            if row.clip_id in writer.written:  # packed by a killed run before its manifest was written
                loc = writer.written[row.clip_id].location
                moved[row.clip_id] = replace(row, path=loc.path, member=loc.member)
            else:
                moved[row.clip_id] = add_clip(writer, row, (corpus / row.path).read_bytes())
        for writer in writers.values():
            writer.close()
        write_manifest(manifest, [moved.get(r.clip_id, r) for r in rows])
        for row in loose:
            (corpus / row.path).unlink(missing_ok=True)
        packed[name] = len(loose)
    return packed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="clips out of their shards, as FLAC files")
    ex.add_argument("corpus", type=Path)
    ex.add_argument("clip_ids", nargs="+")
    ex.add_argument("--out", type=Path, required=True)
    pk = sub.add_parser("pack", help="a corpus of the per-file layout into tar shards")
    pk.add_argument("corpus", type=Path)
    pk.add_argument("--clips-per-shard", type=int, required=True, help="as download.clips_per_shard in params.yaml")
    args = ap.parse_args(argv)
    if not (args.corpus / "manifests").is_dir() and not (args.corpus / "tasks").is_dir():
        print(f"{args.corpus}: not a corpus folder (no manifests/ or tasks/)", file=sys.stderr)
        return 2
    if args.command == "extract":
        try:
            paths = extract(args.corpus, args.clip_ids, args.out)
        except (KeyError, FileNotFoundError, ValueError) as err:
            print(f"extract: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
            return 2
        print("\n".join(str(p) for p in paths))
        return 0
    if args.clips_per_shard < 1:
        print(f"pack: --clips-per-shard must be at least 1, got {args.clips_per_shard}", file=sys.stderr)
        return 2
    packed = pack(args.corpus, args.clips_per_shard)
    for name, n in packed.items():
        print(f"{name}: {n} clips packed")
    if not packed:
        print("nothing to pack: every clip is already in a shard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
