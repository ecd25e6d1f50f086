"""The model options `tbps index` and `tbps search` share: a trained checkpoint or plain open_clip weights."""

from __future__ import annotations

from pathlib import Path


def add_model_options(parser, *, required: bool) -> None:
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("--checkpoint", type=Path, help="final.pt written by `tbps train`")
    which.add_argument("--model", dest="model_name", metavar="NAME",
                       help="plain open_clip weights instead (zero-shot, no fine-tuning): an open_clip model "
                            "name such as ViT-B-16, with --pretrained")
    parser.add_argument("--pretrained", metavar="TAG_OR_FILE", default=None,
                        help="with --model: an open_clip pretrained tag (default: openai; read from open_clip's "
                             "cache, downloaded once when online) or a local weights file")


def check_model_options(parser, args) -> None:
    if args.pretrained is not None and args.model_name is None:
        parser.error("--pretrained goes with --model NAME (a checkpoint carries its own weights)")
