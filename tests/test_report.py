"""The Snakemake report of the finished synthetic run: the landing page's headline equals
metrics.parquet, every item has a caption that renders as intended, tables open in the browser,
and the landing page, rendered by headless Chromium, shows the headline."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from helpers.browser import pixel_stats, rendered_dom, require_chromium, screenshot
from helpers.workflow_runs import SMOKE_EXPERIMENT, build_report, copy_run, snakemake

from tbps.plots import METRICS, chance_from_annotations

pytestmark = pytest.mark.timeout(900)

DATASET = "synthetic"
REPO = Path(__file__).resolve().parents[1]
DEMO_PAGE = f"results/{DATASET}/{SMOKE_EXPERIMENT}/search/demo.html"


class Tables(HTMLParser):
    """The text of every table cell of an HTML fragment, per table and row."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def tables_of(fragment: str) -> list[list[list[str]]]:
    parser = Tables()
    parser.feed(fragment)
    return parser.tables


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def app_element(dom: str) -> str:
    """What the report's React app rendered into <div id="app"> (the page's scripts follow it)."""
    return dom.split('<div id="app">', 1)[1].split("<script", 1)[0]


@pytest.fixture(scope="module")
def report(finished_run, tmp_path_factory):
    """The report of the finished run once its demo search page exists too (the `plots` stage
    builds it), made in a copy: other tests share the finished run."""
    scratch = tmp_path_factory.mktemp("report")
    run = copy_run(finished_run, scratch / "run")
    snakemake(run, DEMO_PAGE)
    out = scratch / "report.html"
    return {"path": out, "run": run, **build_report(run, out)}


def test_landing_page_headline_equals_metrics_parquet(report):
    run = report["run"]
    metrics = pl.read_parquet(run / f"results/{DATASET}/metrics.parquet")
    ours = metrics.filter((pl.col("split") == "test") & (pl.col("direction") == "t2i")).row(0, named=True)
    [table] = tables_of(report["workflow_desc"])
    header, *rows = table
    assert header == ["", "R@1", "R@5", "R@10", "mAP", "mINP"]
    by_label = {row[0]: row[1:] for row in rows}
    assert by_label[SMOKE_EXPERIMENT] == [f"{ours[m]:.2f}" for m in METRICS]
    chance = chance_from_annotations(run / f"results/{DATASET}/prepared/annotations.parquet")
    assert by_label["chance (random ranking)"] == [f"{chance[m]:.2f}" for m in METRICS]
    assert set(by_label) == {SMOKE_EXPERIMENT, "chance (random ranking)"}  # no paper row on synthetic data
    assert f"<caption>{DATASET}: text→image retrieval, test split (percent)</caption>" in report["workflow_desc"]


def test_landing_page_links_every_category(report):
    desc = report["workflow_desc"]
    assert set(report["categories"]) == {"Metrics", "Training", "Retrieval examples", "Search"}
    for category in report["categories"]:
        assert re.search(rf'<a class="reference external" href="javascript:app.showCategory\(\'{re.escape(category)}\'\)">'
                         rf"{re.escape(category)}</a>", desc.replace("%20", " ")), category


def test_every_item_has_a_caption_that_renders_as_text(report):
    results = report["results"]
    expected = {f"results/{DATASET}/{name}" for name in (
        "metrics.parquet", "metrics.html", "plots/metrics.png",
        f"{SMOKE_EXPERIMENT}/plots/training.png", f"{SMOKE_EXPERIMENT}/plots/examples.png",
        f"{SMOKE_EXPERIMENT}/train/train_log.parquet", f"{SMOKE_EXPERIMENT}/train/train_log.html",
        f"{SMOKE_EXPERIMENT}/search/demo.html")}
    assert set(results) == expected
    for path, item in [*results.items(), ("landing page", {"caption": report["workflow_desc"]})]:
        caption = item["caption"]
        text = text_of(caption)
        assert len(text.split()) >= 20, (path, text)
        # reST mark-up that did not render: e-mail links (R@10), errors, Jinja left over, escapes.
        assert "mailto:" not in caption, (path, caption)
        assert "system-message" not in caption and "problematic" not in caption, (path, caption)
        assert "{{" not in text and "\\" not in text and "snakemake." not in text, (path, text)
        assert "spec §" not in text, (path, text)
    assert "R@10" in text_of(results[f"results/{DATASET}/plots/metrics.png"]["caption"])
    assert f"of {SMOKE_EXPERIMENT} on {DATASET}" in text_of(
        results[f"results/{DATASET}/{SMOKE_EXPERIMENT}/train/train_log.html"]["caption"])


@pytest.mark.parametrize("caption", sorted(p.name for p in (REPO / "workflow" / "report").glob("*.rst")
                                            if p.name != "workflow.rst"))
def test_caption_file_renders_as_text(caption):
    """Every caption file as Snakemake renders it (Jinja2, then reStructuredText), including the
    ones the synthetic run has no item for (cross-dataset)."""
    from types import SimpleNamespace

    from docutils.core import publish_parts
    from jinja2 import Environment

    wildcards = SimpleNamespace(dataset="cuhk-pedes", experiment="tbps_clip", table="losses")  # study: {table}
    source = (REPO / "workflow" / "report" / caption).read_text()
    rendered = Environment(trim_blocks=True, lstrip_blocks=True).from_string(source).render(
        snakemake=SimpleNamespace(wildcards=wildcards))
    body = publish_parts(rendered, writer="html", settings_overrides={"report_level": 1})["body"]
    assert "mailto:" not in body and "system-message" not in body and "problematic" not in body, body
    assert "{{" not in text_of(body) and "\\" not in text_of(body)


def test_tables_open_in_the_browser(report):
    """The eye button shows text/html in the report's own viewer; Parquet stays a download."""
    for path, item in report["results"].items():
        if path.endswith(".html"):
            assert item["mime_type"] == "text/html", path
            assert item["data_uri"].startswith("data:text/html"), path
        elif path.endswith(".parquet"):
            assert item["labels"]["item"].endswith("(Parquet, download)"), path


def test_tall_figure_starts_in_reach_in_the_image_view(report, tmp_path):
    """The report centres a result in a box of the window's height; the workflow's stylesheet
    (workflow/report/stylesheet.css, set by the profiles) aligns it to the top, so the top of the
    retrieval examples (taller than the window) is on screen, not above the scrollable area."""
    require_chromium()
    examples = f"results/{DATASET}/{SMOKE_EXPERIMENT}/plots/examples.png"
    # What the eye button does; once the image is decoded, where its top edge is, written into
    # the page (the report's menu holds another, small image: the logo).
    script = (
        f"<script>setTimeout(function () {{ var uri = results['{examples}'].data_uri;"
        " app.setView({content: 'img', contentPath: uri});"
        " var poll = setInterval(function () {"
        "  var img = Array.from(document.querySelectorAll('#app img')).find(function (i) { return i.src === uri; });"
        "  if (!img || !img.complete || !img.naturalHeight) return;"
        "  clearInterval(poll);"
        "  document.body.setAttribute('data-image-top', img.getBoundingClientRect().top);"
        "  document.body.setAttribute('data-image-height', img.getBoundingClientRect().height);"
        " }, 200); }, 300);</script>"
    )
    head, body_end, tail = report["path"].read_text().rpartition("</body>")
    page = tmp_path / "examples-view.html"
    page.write_text(head + script + body_end + tail)
    dom = rendered_dom(page)
    top = float(re.search(r'data-image-top="([-\d.]+)"', dom).group(1))
    height = float(re.search(r'data-image-height="([-\d.]+)"', dom).group(1))
    assert height > 1000  # taller than the window: the case the stylesheet is for
    assert 0 <= top < 50, top  # without the stylesheet: about -1170 for the demo's page


def test_landing_page_in_headless_chromium(report, tmp_path_factory):
    require_chromium()
    page = report["path"]
    # The report is a React app: after its scripts ran, the app's element holds the landing page
    # with the headline table (before, it is empty and a loading screen shows).
    app = app_element(rendered_dom(page))
    assert 'class="tbps-headline docutils"' in app and SMOKE_EXPERIMENT in text_of(app)
    # ... and the screenshot shows it (the loading screen is one line of text on white): the
    # menu's dark search box at the top left, text where the headline is, the rule graph.
    shot = screenshot(page, tmp_path_factory.mktemp("screenshots") / "report-landing.png")
    print(f"landing page screenshot: {shot}")
    whole = pixel_stats(shot)
    whole.assert_not_blank()
    assert (whole.width, whole.height) == (1400, 1000)
    search_box = pixel_stats(shot, (20, 40, 180, 60))
    assert search_box.dark_fraction > 0.9, search_box
    headline = pixel_stats(shot, (280, 100, 800, 400))
    headline.assert_not_blank(min_colours=8, min_std=5.0, min_dark=0.01)
    rule_graph = pixel_stats(shot, (820, 80, 1000, 920))
    rule_graph.assert_not_blank(min_colours=8, min_std=5.0, min_dark=0.002)
