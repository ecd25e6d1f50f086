"""`tbps prepare`: raw annotation folder -> normalised caption table."""

from __future__ import annotations

import argparse
from pathlib import Path

from tbps.cli.argtypes import fraction
from tbps.datasets import DATASET_KEYS

DEFAULT_MAX_REJECT_FRACTION = 0.01  # mirrors tbps.ingest.annotations (not imported: keeps --help fast)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="parse and validate a raw dataset folder into annotations.parquet",
        description=(
            "Read the annotation JSON and image headers of a raw dataset folder and write one row per "
            "(image, caption). Structural problems in the JSON are fatal (exit 2, nothing written); missing "
            "or unreadable images and empty captions are skipped, counted and listed in the rejects table."
        ),
    )
    parser.add_argument(
        "--dataset",
        required=True,
        choices=DATASET_KEYS,
        help="dataset key; 'synthetic' = a `tbps synth` folder in any of the three formats",
    )
    parser.add_argument(
        "--raw", required=True, type=Path, help="raw folder holding the annotation JSON and imgs/"
    )
    parser.add_argument("--out", required=True, type=Path, help="annotations Parquet file to write")
    parser.add_argument(
        "--rejects",
        type=Path,
        default=None,
        help="rejects Parquet file to write (default: not written; counts are still logged)",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="summary JSON to write (input/accepted/rejected counts per split and reason)",
    )
    parser.add_argument(
        "--max-reject-fraction",
        type=fraction,
        default=DEFAULT_MAX_REJECT_FRACTION,
        metavar="F",
        help="fail if more than this fraction of images is rejected (default: %(default)s; "
        "a complete download has none — raise it to use a partial download)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tbps.ingest.annotations import prepare

    prepare(
        args.dataset,
        args.raw,
        args.out,
        rejects=args.rejects,
        summary=args.summary,
        max_reject_fraction=args.max_reject_fraction,
    )
    return 0
