"""The results page: one self-contained HTML file, safe to open and to pass around.

Each query is a section with its top-K thumbnails (JPEG ``data:`` URIs, so the page needs
nothing beside it and works when moved or mailed), rank, score, path and, when the index knows
person ids, the person id. With a query whose person id is known, a thumbnail's frame is green
for that person and red for anyone else; otherwise it is grey.

Safety: every piece of text that comes from outside (paths, captions, queries, model names) is
HTML-escaped, quotes included, so a file named ``<img src=x onerror=alert(1)>.jpg`` shows as
that text. The page holds no script and no URL other than its ``data:`` images, and its
Content-Security-Policy (``default-src 'none'; img-src data:; style-src 'unsafe-inline'``)
tells the browser to load nothing else, not even if a value slipped through.
"""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from tbps.fileio import write_text_atomic
from tbps.gallery.encoder import describe
from tbps.gallery.layout import GalleryIndex
from tbps.gallery.thumbnails import THUMBNAIL_BOX, thumbnail

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }}
header p {{ margin: .2em 0; color: #555; }}
section {{ margin: 1.5em 0; }}
h2 {{ font-size: 1.1em; margin: 0 0 .4em; }}
ol {{ list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 10px; }}
li {{ width: {THUMBNAIL_BOX[0] + 8}px; font-size: 12px; }}
.frame {{ box-sizing: border-box; width: {THUMBNAIL_BOX[0] + 8}px; height: {THUMBNAIL_BOX[1] + 8}px;
  border: 4px solid #bbb; display: flex; align-items: center; justify-content: center; background: #f4f4f4; }}
.correct .frame {{ border-color: #1a9641; }}
.wrong .frame {{ border-color: #d7191c; }}
.missing {{ padding: 4px; color: #a00; }}
.path {{ overflow-wrap: anywhere; color: #555; }}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _hit(row: dict, entry: dict, shard_folder: Path | None) -> str:
    state = {True: "correct", False: "wrong", None: "unknown"}[row["correct"]]
    thumb = thumbnail(entry, shard_folder)
    if thumb.data_uri is not None:
        picture = (f'<img src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
                   f'alt="rank {row["rank"]}">')
    else:
        picture = f'<div class="missing">{_e(thumb.problem)}</div>'
    person = f'<div class="person">person {_e(row["person_id"])}</div>' if row["person_id"] is not None else ""
    return (f'<li class="hit {state}"><div class="frame">{picture}</div>'
            f'<div class="rank">{row["rank"]}. score {row["score"]:.3f}</div>{person}'
            f'<div class="path" title="{_e(row["image_path"])}">{_e(row["image_path"])}</div></li>')


def render_page(index: GalleryIndex, results: pl.DataFrame) -> str:
    """The HTML of the results page (see the module docstring)."""
    shard_folder = index.shard_folder()
    rows_needed = sorted(set(results["row"].to_list()))
    entries = dict(zip(rows_needed, index.entries[rows_needed].iter_rows(named=True), strict=True))
    sections = []
    for (q,), hits in results.group_by(["query_index"], maintain_order=True):
        first = hits.row(0, named=True)
        query_person = first["query_person_id"]
        about = f' <span class="about">(person {_e(query_person)})</span>' if query_person is not None else ""
        items = "\n".join(_hit(row, entries[row["row"]], shard_folder) for row in hits.iter_rows(named=True))
        sections.append(f'<section id="query-{q + 1}"><h2>{q + 1}. {_e(first["query"])}{about}</h2>\n'
                        f'<ol>\n{items}\n</ol></section>')
    source = index.meta["source"]
    frames = ("<p>Frames: green, the query's person; red, another person; grey, no person id to compare.</p>"
              if results["query_person_id"].null_count() < results.height else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tbps search: {_e(index.folder.name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>Search results</h1>
<p>Index {_e(index.folder)}: {index.count} images from {_e(source["kind"])} {_e(source["path"])}</p>
<p>Model: {_e(describe(index.model))}</p>
{frames}
</header>
{chr(10).join(sections)}
</body>
</html>
"""


def write_page(path: str | Path, index: GalleryIndex, results: pl.DataFrame) -> None:
    write_text_atomic(path, render_page(index, results))
