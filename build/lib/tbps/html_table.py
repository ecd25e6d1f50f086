"""Tables as small self-contained HTML pages (no scripts, no external files) that a browser, and
the Snakemake report's viewer, open directly. The Parquet file stays the data; the page is a
rendering of it: numbers right-aligned at a fixed precision, the header kept in view, and for a
long table (a per-step training log) evenly spaced rows with the first and the last.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import polars as pl

from tbps.fileio import read_parquet_checked, write_text_atomic

MAX_ROWS = 2000
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2937; }
h1 { font-size: 1.25em; margin: 0 0 0.3em; }
p { margin: 0.2em 0 0.8em; max-width: 60em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e5e7eb; white-space: nowrap; }
thead th { position: sticky; top: 0; background: #f3f4f6; border-bottom: 2px solid #9ca3af; text-align: left; }
td.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafafa; }
tbody tr:hover { background: #eef2ff; }
""".strip()


def format_cell(value, dtype: pl.DataType, float_format: str = ".5g") -> str:
    """A cell as text: floats as ``float_format`` (default 5 significant digits), nulls and NaN as
    empty cells."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if dtype.is_float():
        return format(value, float_format)
    return str(value)


def shown_rows(height: int, max_rows: int) -> list[int]:
    """Indices of at most ``max_rows`` evenly spaced rows, the first and the last among them."""
    if height <= max_rows:
        return list(range(height))
    step = (height - 1) / (max_rows - 1)
    return sorted({round(i * step) for i in range(max_rows)})


def table_html(df: pl.DataFrame, *, title: str, note: str | None = None, max_rows: int = MAX_ROWS,
               float_formats: dict[str, str] | None = None) -> str:
    """The page: a title, an optional note, the row count, then the table. ``float_formats``:
    column -> format spec for the float columns that want a fixed one (metrics: ".2f")."""
    float_formats = float_formats or {}
    rows = shown_rows(df.height, max_rows)
    count = f"{df.height} rows, {df.width} columns"
    if len(rows) < df.height:
        count += f"; {len(rows)} evenly spaced rows shown (the first and the last among them), the Parquet file has all"
    numeric = [dtype.is_numeric() for dtype in df.dtypes]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for i in rows:
        cells = []
        for name, value, dtype, is_num in zip(df.columns, df.row(i), df.dtypes, numeric, strict=True):
            css = ' class="num"' if is_num else ""
            text = format_cell(value, dtype, float_formats.get(name, ".5g"))
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{STYLE}\n</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        *([f"<p>{html.escape(note)}</p>"] if note else []),
        f"<p>{html.escape(count)}.</p>",
        "<table>",
        f"<thead><tr>{head}</tr></thead>",
        "<tbody>",
        *body,
        "</tbody>",
        "</table>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_table_html(df: pl.DataFrame, out: Path, *, title: str, note: str | None = None,
                     max_rows: int = MAX_ROWS, float_formats: dict[str, str] | None = None) -> None:
    write_text_atomic(Path(out), table_html(df, title=title, note=note, max_rows=max_rows,
                                            float_formats=float_formats))


def parquet_to_html(table: Path, out: Path, *, title: str | None = None, note: str | None = None,
                    max_rows: int = MAX_ROWS) -> None:
    """``tbps plots table``: any Parquet table a stage wrote, as an HTML page."""
    df = read_parquet_checked(table, "table", "pass a Parquet file written by a tbps stage")
    write_table_html(df, out, title=title or str(table), note=note, max_rows=max_rows)

