"""``tbps synth``: write a synthetic dataset in a published dataset's layout."""

from __future__ import annotations

import argparse
import re

from tbps.datasets import FORMATS


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 64x128, got {text!r}")
    return int(match[1]), int(match[2])


def _images_per_id(text: str) -> int | tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected K or A-B, e.g. 5 or 4-6, got {text!r}")
    return int(match[1]) if match[2] is None else (int(match[1]), int(match[2]))


def register(subparsers) -> None:
    from tbps.synth import generate as d  # numpy + PIL only (~0.1 s); keeps the defaults in one place

    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic pedestrian dataset in a published layout",
        description=(
            "Render a synthetic text-based person search dataset (people drawn with fixed clothing "
            "attributes, captions written from those attributes) and write it in exactly the layout "
            "and annotation format of CUHK-PEDES, ICFG-PEDES or RSTPReid. The same --seed always "
            "gives byte-identical files. The folder appears only when complete."
        ),
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="layout and annotation format to write")
    parser.add_argument("--out", required=True,
                        help="output folder: new, empty, or made by an earlier `tbps synth` (then regenerated "
                        "in place); any other non-empty folder is refused unless --force")
    # nargs="?": a bare --ids/--seed keeps the default, so the workflow passes a value only when
    # the config sets one and the generator's defaults stay the only ones.
    parser.add_argument(
        "--ids", type=int, nargs="?", default=d.DEFAULT_IDS, const=d.DEFAULT_IDS,
        help=f"number of TRAIN identities (default {d.DEFAULT_IDS})",
    )
    parser.add_argument("--seed", type=int, nargs="?", default=d.DEFAULT_SEED, const=d.DEFAULT_SEED,
                        help=f"random seed (default {d.DEFAULT_SEED})")
    parser.add_argument(
        "--images-per-id", type=_images_per_id, default=None, metavar="K|A-B",
        help="images per identity: K, or a random count in A..B (default: "
        + ", ".join(f"{lo}-{hi} for {fmt}" if lo != hi else f"{lo} for {fmt}"
                    for fmt, (lo, hi) in d.DEFAULT_IMAGES_PER_ID.items()) + ")",
    )
    held_out = f"default: {round(d.HELD_OUT_FRACTION * 100)}%% of --ids, at least 2"
    parser.add_argument("--val-ids", type=int, default=None, help=f"val identities ({held_out}; icfg-pedes has none)")
    parser.add_argument("--test-ids", type=int, default=None, help=f"test identities ({held_out})")
    parser.add_argument(
        "--size", type=_size, default=d.DEFAULT_SIZE, metavar="WxH",
        help=f"image width x height in pixels (default {d.DEFAULT_SIZE[0]}x{d.DEFAULT_SIZE[1]})",
    )
    parser.add_argument("--force", action="store_true",
                        help="replace --out even if `tbps synth` did not make it (its files are deleted)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tbps.synth.generate import generate_dataset

    counts = generate_dataset(
        args.format,
        Path(args.out),
        ids=args.ids,
        seed=args.seed,
        images_per_id=args.images_per_id,
        val_ids=args.val_ids,
        test_ids=args.test_ids,
        size=args.size,
        overwrite=args.force,
    )
    print(f"{'split':<6} {'ids':>7} {'images':>8} {'captions':>9}")
    for split, c in counts.items():
        print(f"{split:<6} {c['ids']:>7} {c['images']:>8} {c['captions']:>9}")
    print(f"wrote {args.out}")
    return 0
