"""`tbps index`: embed a folder of photos (or a glob, or a shard manifest) into a gallery index."""

from __future__ import annotations

from pathlib import Path

from tbps.cli.argtypes import positive_int
from tbps.cli.model_options import add_model_options, check_model_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index",
        help="embed a folder of person photos into a gallery index for `tbps search`",
        description=(
            "Embed every image of a folder (recursive; .jpg .jpeg .png .webp), of a quoted glob pattern "
            "('photos/**/*.jpg') or of a shard manifest into a gallery index folder. The images should be person "
            "crops (one person each, as in the datasets): there is no person detector. Running it again on the "
            "same --out embeds only new or changed images; an interrupted run resumes where it stopped. "
            "Files that are not images, or cannot be decoded, are skipped, counted and listed. "
            "Example: tbps index --checkpoint results/synthetic/tiny_tbps_clip_simplified/train/final.pt "
            "--images ~/photos/people --out people.index"
        ),
    )
    add_model_options(parser, required=True)
    parser.add_argument("--images", required=True, metavar="FOLDER|GLOB|MANIFEST",
                        help="a folder (walked recursively), a quoted glob pattern, or a shard manifest.json")
    parser.add_argument("--out", required=True, type=Path, help="the index folder to create or update")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="images per forward pass, also the most work an interruption loses (default: 64)")
    parser.add_argument("--workers", type=int, default=2, help="image reading/decoding processes (default: 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: the GPU when there is one")
    parser.set_defaults(func=_run, parser=parser)


def _run(args) -> int:
    from tbps.device import resolve_device
    from tbps.gallery.build import build_index
    from tbps.gallery.encoder import load_search_model

    check_model_options(args.parser, args)
    model = load_search_model(resolve_device(args.device), checkpoint=args.checkpoint, model_name=args.model_name,
                              pretrained=args.pretrained)
    report = build_index(args.images, args.out, model, batch_size=args.batch_size, num_workers=args.workers)
    print(report.summary() if not report.unchanged else f"{args.out}: up to date ({report.count} images)")
    return 0
