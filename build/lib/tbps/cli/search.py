"""`tbps search`: the people in a gallery that best match a description."""

from __future__ import annotations

from pathlib import Path

from tbps.cli.argtypes import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the gallery images that best match a text description",
        description=(
            "Encode a gallery (the images of a shard manifest, e.g. a test split) with a trained model and "
            "print the top-K images for each description. Example: tbps search --checkpoint "
            "results/synthetic/tiny_tbps_clip_simplified/train/final.pt --gallery "
            "results/synthetic/shards/test/manifest.json \"a woman in a red coat with a black backpack\""
        ),
    )
    parser.add_argument("queries", nargs="+", metavar="DESCRIPTION", help="one or more text descriptions")
    parser.add_argument("--checkpoint", required=True, type=Path, help="final.pt written by `tbps train`")
    parser.add_argument("--gallery", required=True, type=Path, help="manifest.json of the shards to search")
    parser.add_argument("--top", type=positive_int, default=5, help="images per description (default: 5)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as Parquet")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2, help="image decoding workers (default: 2)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from tbps.fileio import write_parquet_atomic
    from tbps.search import search

    results = search(args.checkpoint, args.gallery, args.queries, top_k=args.top, device=args.device,
                     num_workers=args.workers)
    for query in args.queries:
        print(f"\n{query}")
        for row in results.filter(results["query"] == query).iter_rows(named=True):
            print(f"  {row['rank']:>2}. {row['score']:.3f}  person {row['person_id']:<6} {row['image_path']}")
    if args.out is not None:
        write_parquet_atomic(results, args.out)
    return 0
