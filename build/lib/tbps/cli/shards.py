"""``tbps shards plan|write|manifest``: WebDataset shards in three rerunnable steps."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MAX_SAMPLES = 64  # mirrors tbps.shards.plan.DEFAULT_MAX_SAMPLES (kept here: no heavy import)


# Options with an optional value (nargs="?"): given bare they mean "none", so the workflow can
# write `--augmented {input.augmented:q}` with an empty list and every value stays one quoted word.


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards",
        help="write WebDataset shards of one split (plan, write one shard, manifest)",
        description="Shards are written in three steps so one lost shard can be rewritten alone: "
        "`plan` assigns images to shards, `write` writes one shard (+ sidecar .json), "
        "`manifest` verifies all shards and writes manifest.json last.",
    )
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True)

    plan = steps.add_parser("plan", help="assign the split's images to shards (seeded order) -> plan.json")
    plan.add_argument("--captions", required=True, help="annotations.parquet from `tbps prepare`")
    plan.add_argument("--split", required=True, help="split to write (train, val or test)")
    plan.add_argument("--raw", required=True, help="raw dataset folder (image paths are relative to it)")
    plan.add_argument("--out", required=True, help="plan JSON to write")
    plan.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES,
                      help=f"images per shard (default {DEFAULT_MAX_SAMPLES}: >= 4 shards in each split of the default synthetic set)")
    plan.add_argument("--max-bytes", type=int, nargs="?", default=None, const=None,
                      help="cap on a shard's estimated size, from the source image sizes "
                      "(default, or given without a value: none)")
    plan.add_argument("--seed", type=int, default=0, help="seed of the image order (default 0)")
    plan.add_argument("--name-prefix", default="shard", help="shard file name prefix (default: shard)")
    plan.set_defaults(func=_plan)

    write = steps.add_parser("write", help="write one planned shard (tar + sidecar .json), atomically")
    write.add_argument("--plan", required=True, help="plan JSON from `tbps shards plan`")
    write.add_argument("--shard-index", type=int, required=True, help="index of the shard in the plan")
    write.add_argument("--captions", required=True, help="the annotations.parquet the plan was made from")
    write.add_argument("--augmented", nargs="?", default=None, const=None,
                       help="captions_aug.parquet from `tbps augment` (joined on caption_id; train only; "
                       "given without a value: none)")
    write.add_argument("--raw", required=True, help="raw dataset folder")
    write.add_argument("--out", required=True, help="shard path, named as in the plan (shard-000000.tar)")
    write.add_argument("--image-size", nargs="?", default=None, const=None, metavar="HxW",
                       help="re-encode images at this size, e.g. 224x224 (default, or given without a value: "
                       "original bytes)")
    write.add_argument("--image-format", choices=["keep", "jpg", "png"], default=None,
                       help="keep = original bytes; jpg/png = re-encode "
                       "(default: keep, or jpg when --image-size is given)")
    write.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality when re-encoding (default 90)")
    write.set_defaults(func=_write)

    manifest = steps.add_parser("manifest", help="verify all shards of a plan and write manifest.json")
    manifest.add_argument("--plan", required=True, help="plan JSON")
    manifest.add_argument("--out", required=True, help="manifest JSON to write (last)")
    manifest.add_argument("--shards-dir", default=None, help="folder of the shards (default: the manifest's)")
    manifest.set_defaults(func=_manifest)


def _plan(args: argparse.Namespace) -> int:
    from tbps.fileio import write_json_atomic
    from tbps.shards.plan import plan_shards

    plan = plan_shards(args.captions, args.split, args.raw, max_samples=args.max_samples,
                       max_bytes=args.max_bytes, seed=args.seed, name_prefix=args.name_prefix)
    write_json_atomic(args.out, plan)
    return 0


def _write(args: argparse.Namespace) -> int:
    from tbps.shards.writer import ImageEncoding, ShardSources, parse_image_size, write_shard

    sources = ShardSources(Path(args.captions), Path(args.raw), Path(args.augmented) if args.augmented is not None else None)
    encoding = ImageEncoding(args.image_format, parse_image_size(args.image_size), args.jpeg_quality)
    write_shard(args.plan, args.shard_index, args.out, sources, encoding=encoding)
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from tbps.shards.manifest import build_manifest

    build_manifest(args.plan, args.out, shards_dir=args.shards_dir)
    return 0
