"""`tbps search`: the people in a gallery index that best match a description."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tbps.cli.argtypes import positive_int
from tbps.cli.model_options import add_model_options, check_model_options

_OUT_SUFFIXES = (".parquet", ".json")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the images of a gallery index that best match a text description",
        description=(
            "Rank the images of a gallery index (made by `tbps index`) for each description and print rank, score "
            "and path of the top K; --html writes a self-contained results page with thumbnails. Only the index is "
            "read to rank (the images are read for the page's thumbnails only). The model is the one the index was "
            "built with, unless --checkpoint or --model names it (it must be the same weights). Example: tbps "
            "search --index people.index \"a woman in a red coat with a black backpack\" --top 20 --html "
            "results.html"
        ),
    )
    gallery = parser.add_mutually_exclusive_group()
    gallery.add_argument("--index", type=Path, help="the gallery index folder written by `tbps index`")
    gallery.add_argument("--gallery", type=Path, metavar="MANIFEST",
                         help="older usage: a shard manifest.json, embedded anew on every call (needs --checkpoint "
                              "or --model); `tbps index --images MANIFEST` once and --index is faster")
    parser.add_argument("queries", nargs="*", metavar="DESCRIPTION", help="one or more text descriptions")
    parser.add_argument("--queries", dest="queries_file", type=Path, metavar="FILE",
                        help="more descriptions: a text file with one per line, or a JSON list of descriptions or "
                             "{\"query\": ..., \"person_id\": ...} objects")
    parser.add_argument("--captions", type=int, default=0, metavar="N",
                        help="also search N captions of the index's own images, one per person (seeded; indexes "
                             "built from a shard manifest only): queries with known answers")
    parser.add_argument("--top", type=positive_int, default=10, help="images per description (default: 10)")
    add_model_options(parser, required=False)
    parser.add_argument("--html", type=Path, default=None, help="write a self-contained results page (HTML)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the results, one row per (query, rank): .parquet or .json")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2,
                        help="image decoding workers (with --gallery only; default: 2)")
    parser.set_defaults(func=_run, parser=parser)


def _run(args) -> int:
    from tbps.errors import UserInputError
    from tbps.gallery.queries import Query, check_queries, read_queries_file

    parser = args.parser
    check_model_options(parser, args)
    if args.index is None and args.gallery is None:
        parser.error("give --index INDEX (made by `tbps index`), e.g. tbps search --index gallery.index "
                     "\"a man in a black jacket\"")
    if args.gallery is not None and args.checkpoint is None and args.model_name is None:
        parser.error("--gallery MANIFEST needs --checkpoint or --model (or index it once: tbps index --images "
                     "MANIFEST --out gallery.index, then tbps search --index gallery.index)")
    if args.captions < 0:
        parser.error("--captions must be >= 0")
    if args.out is not None and args.out.suffix.lower() not in _OUT_SUFFIXES:
        raise UserInputError(f"--out {args.out}: unknown format. Fix: name a .parquet or .json file")
    queries = [Query(text) for text in args.queries]
    if args.queries_file is not None:
        queries += read_queries_file(args.queries_file)
    if queries or not args.captions:  # fail before loading anything; --captions N alone comes from the index
        check_queries(queries)
    if args.gallery is not None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tbps-search-") as tmp:
            _search_manifest(args, queries, Path(tmp) / "gallery.index")
        return 0
    _search(args, queries)
    return 0


def _search_manifest(args, queries, index_folder: Path) -> None:
    from tbps.device import resolve_device
    from tbps.gallery.build import build_index
    from tbps.gallery.encoder import load_search_model
    from tbps.gallery.layout import open_index

    model = load_search_model(resolve_device(args.device), checkpoint=args.checkpoint, model_name=args.model_name,
                              pretrained=args.pretrained)
    build_index(str(args.gallery), index_folder, model, num_workers=args.workers)
    _answer(args, open_index(index_folder), model, queries)


def _search(args, queries) -> None:
    from tbps.device import resolve_device
    from tbps.gallery.encoder import load_search_model, require_same_model
    from tbps.gallery.layout import open_index

    index = open_index(args.index)
    model = load_search_model(resolve_device(args.device), checkpoint=args.checkpoint, model_name=args.model_name,
                              pretrained=args.pretrained, recorded=index.model, index_folder=index.folder)
    require_same_model(index.folder, index.model, model.identity,
                       "search it without --checkpoint/--model (the index's own model is the default), or "
                       "index the images with this model first: tbps index ... --out NEW_INDEX")
    _answer(args, index, model, queries)


def _answer(args, index, model, queries) -> None:
    from tbps.fileio import write_json_atomic, write_parquet_atomic
    from tbps.gallery.page import write_page
    from tbps.gallery.queries import captions_from_index
    from tbps.gallery.search import search_index

    queries = queries + captions_from_index(index.entries, args.captions)
    results = search_index(index, model, queries, args.top)
    if args.json:
        json.dump(_as_json(index, results), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print(results)
    if args.out is not None:
        if args.out.suffix.lower() == ".json":
            write_json_atomic(args.out, _as_json(index, results))
        else:
            write_parquet_atomic(results, args.out)
    if args.html is not None:
        write_page(args.html, index, results)
        print(f"results page: {args.html}", file=sys.stderr)


def _print(results) -> None:
    with_ids = results["person_id"].null_count() < results.height
    for (_,), hits in results.group_by(["query_index"], maintain_order=True):
        first = hits.row(0, named=True)
        about = f"  (person {first['query_person_id']})" if first["query_person_id"] is not None else ""
        print(f"\n{first['query']}{about}")
        for row in hits.iter_rows(named=True):
            mark = {True: " +", False: " -", None: ""}[row["correct"]]
            person = f"person {row['person_id']:<6} " if with_ids else ""
            print(f"  {row['rank']:>3}. {row['score']:.3f}{mark}  {person}{row['image_path']}")


def _as_json(index, results) -> dict:
    queries = []
    for (_,), hits in results.group_by(["query_index"], maintain_order=True):
        first = hits.row(0, named=True)
        queries.append({
            "query": first["query"], "person_id": first["query_person_id"],
            "results": [{k: row[k] for k in ("rank", "score", "image_path", "person_id", "correct")}
                        for row in hits.iter_rows(named=True)],
        })
    return {"index": str(index.folder), "images": index.count, "model": index.model, "queries": queries}
