"""`tbps check-raw`: is a downloaded dataset folder complete and where tbps expects it?"""

from __future__ import annotations

import argparse
from pathlib import Path

from tbps.datasets import DATASET_KEYS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-raw",
        help="check a downloaded dataset folder (annotation file, JSON, images, counts)",
        description=(
            "Quick check after downloading: finds the annotation file, validates the JSON, counts the "
            "referenced images that exist and compares the counts with the published statistics. "
            "Exit 0 when everything is in order, 1 on problems, 2 when the folder or annotation file "
            "is missing or broken (the message says where to get the data)."
        ),
    )
    parser.add_argument("--dataset", required=True, choices=DATASET_KEYS, help="dataset key")
    parser.add_argument(
        "--raw", required=True, type=Path, help="raw folder holding the annotation JSON and imgs/"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tbps.ingest.annotations import check_raw

    return check_raw(args.dataset, args.raw)
