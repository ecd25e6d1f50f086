"""`tbps augment`: annotations.parquet -> captions_aug.parquet (one paraphrase per train caption)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tbps.cli.argtypes import positive_int, probability

# Mirrors tbps.augment.backends / tbps.augment.backtranslation (not imported: keeps --help fast).
BACKENDS = ("none", "synonyms", "backtranslation")
DEFAULT_EN_FR = "Helsinki-NLP/opus-mt-en-fr"
DEFAULT_FR_EN = "Helsinki-NLP/opus-mt-fr-en"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "augment",
        help="paraphrase every train caption once (back-translation or synonyms) -> captions_aug.parquet",
        description=(
            "Compute one paraphrase per caption of the chosen splits, offline and once (spec §3); training "
            "swaps it in with probability 0.1. Backends: 'backtranslation' = MarianMT English->French->"
            "English (the paper's method; needs the two models, from the Hugging Face cache or local "
            "folders), 'synonyms' = swap true synonyms from a shipped table (no model, no download), "
            "'none' = caption_aug is the caption itself. Results are cached per caption in --cache, "
            "committed after every batch, so reruns only compute new captions."
        ),
    )
    parser.add_argument("--captions", required=True, type=Path,
                        help="annotations.parquet written by `tbps prepare`")
    parser.add_argument("--out", required=True, type=Path, help="captions_aug Parquet file to write")
    parser.add_argument("--backend", required=True, choices=BACKENDS, help="how to paraphrase (see above)")
    parser.add_argument("--cache", type=Path, default=None, metavar="FILE.sqlite",
                        help="SQLite cache of computed paraphrases, reused across runs (default: none)")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help="captions per backend call and cache commit "
                             "(default: 32 for backtranslation, 1024 for synonyms)")
    parser.add_argument("--splits", nargs="+", default=["train"], metavar="SPLIT",
                        help="splits whose captions are paraphrased (default: train)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synonyms backend (each caption's draw depends only on seed and "
                             "caption text); back-translation is deterministic beam search (default: 0)")
    syn = parser.add_argument_group("synonyms backend")
    syn.add_argument("--synonym-table", type=Path, default=None, metavar="FILE.yaml",
                     help="table of interchangeable words (default: the one shipped with tbps, "
                          "tbps/resources/pedestrian_synonyms.yaml)")
    syn.add_argument("--synonym-p", type=probability, default=0.5, metavar="P",
                     help="fraction of the replaceable words of a caption that are replaced, at least one "
                          "(default: %(default)s)")
    bt = parser.add_argument_group("backtranslation backend")
    bt.add_argument("--model-en-fr", default=DEFAULT_EN_FR, metavar="NAME_OR_DIR",
                    help="English->French MarianMT model: hub name or local folder (default: %(default)s)")
    bt.add_argument("--model-fr-en", default=DEFAULT_FR_EN, metavar="NAME_OR_DIR",
                    help="French->English MarianMT model: hub name or local folder (default: %(default)s)")
    bt.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the models run; auto = cuda when a GPU is visible (default: auto)")
    bt.add_argument("--num-beams", type=positive_int, default=4, metavar="K",
                    help="beam width of both translation steps (default: %(default)s, OPUS-MT's own)")
    bt.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="T",
                    help="longest translation in tokens (default: %(default)s)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tbps.augment.backends import make_backend
    from tbps.augment.stage import augment_captions

    backend = make_backend(
        args.backend, seed=args.seed, synonym_table=args.synonym_table, synonym_p=args.synonym_p,
        device=args.device, model_en_fr=args.model_en_fr, model_fr_en=args.model_fr_en,
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
    )
    augment_captions(args.captions, args.out, backend, cache_path=args.cache, batch_size=args.batch_size,
                     splits=args.splits)
    return 0
