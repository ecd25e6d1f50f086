"""tbps.html_table and the commands that write HTML tables (tbps plots table, tbps collect --html)."""

import re
from html.parser import HTMLParser

import polars as pl
import pytest

from tbps.cli import main
from tbps.errors import UserInputError
from tbps.html_table import parquet_to_html, shown_rows, table_html


class TableReader(HTMLParser):
    """The cells of an HTML page's table as text, header first; fails on unbalanced tags."""

    def __init__(self):
        super().__init__()
        self.rows, self.open_tags, self.cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("meta",):
            return
        self.open_tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        assert self.open_tags.pop() == tag
        if tag in ("td", "th"):
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def read_table(page: str) -> list[list[str]]:
    reader = TableReader()
    reader.feed(page)
    assert reader.open_tags == []
    return reader.rows


def test_shown_rows_keep_the_first_and_the_last_evenly_spaced():
    assert shown_rows(5, 10) == [0, 1, 2, 3, 4]
    rows = shown_rows(1001, 11)
    assert rows == list(range(0, 1001, 100))
    assert len(shown_rows(10_000, 2000)) == 2000 and shown_rows(10_000, 2000)[-1] == 9999


def test_page_escapes_text_formats_numbers_and_notes_thinned_rows():
    df = pl.DataFrame({"name": ["<b>x</b>", "a&b", None], "R1": [17.5731, float("nan"), 3.0],
                       "step": [1, 2, 3]})
    page = table_html(df, title="t <1>", note="rows & more")
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "<title>t &lt;1&gt;</title>" in page
    assert read_table(page) == [["name", "R1", "step"], ["<b>x</b>", "17.573", "1"], ["a&b", "", "2"],
                                ["", "3", "3"]]
    assert "3 rows, 3 columns." in page and "<script" not in page
    thinned = table_html(pl.DataFrame({"step": range(100)}), title="log", max_rows=10)
    assert len(read_table(thinned)) == 11
    assert "100 rows, 1 columns; 10 evenly spaced rows shown" in thinned


def test_cli_table_writes_a_page_of_a_parquet_file(tmp_path, capsys):
    table = tmp_path / "train_log.parquet"
    pl.DataFrame({"global_step": [1, 2], "loss_total": [3.25, 2.5]}).write_parquet(table)
    out = tmp_path / "train_log.html"
    assert main(["plots", "table", "--table", str(table), "--out", str(out), "--title", "tiny on synthetic",
                 "--note", "one row per step"]) == 0
    page = out.read_text()
    assert read_table(page) == [["global_step", "loss_total"], ["1", "3.25"], ["2", "2.5"]]
    assert "<h1>tiny on synthetic</h1>" in page and "<p>one row per step</p>" in page
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserInputError, match=r"bad.parquet: not a readable Parquet file"):
        parquet_to_html(tmp_path / "bad.parquet", tmp_path / "x.html")
    assert main(["plots", "table", "--table", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "x.html")]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_collect_html_is_the_written_table(tmp_path):
    from test_plots import write_eval

    inputs = [write_eval(tmp_path, "tiny_a", 40.0), write_eval(tmp_path, "tiny_b", 45.123)]
    out, html = tmp_path / "metrics.parquet", tmp_path / "metrics.html"
    assert main(["collect", "--inputs", *map(str, inputs), "--out", str(out), "--html", str(html)]) == 0
    df = pl.read_parquet(out)
    rows = read_table(html.read_text())
    assert rows[0] == df.columns
    assert len(rows) == df.height + 1
    r1 = rows[0].index("R1")
    assert [row[r1] for row in rows[1:]] == [f"{v:.2f}" for v in df["R1"]]  # metrics: 2 decimals
    assert re.search(r"<h1>metrics table: .*metrics.parquet</h1>", html.read_text())

