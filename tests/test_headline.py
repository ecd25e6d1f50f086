"""tbps.headline: the landing-page table (ours, the paper's row, chance) as reStructuredText."""

import numpy as np
import polars as pl
import pytest
from docutils.core import publish_parts

from tbps.headline import headline_rows, headline_rst, rst_text, write_headline
from tbps.plots import chance_levels


def metrics(dataset: str, experiments: dict[str, float], selection: str = "last") -> pl.DataFrame:
    return pl.DataFrame([
        {"dataset": dataset, "train_dataset": dataset, "experiment": e, "split": "test", "direction": "t2i",
         "selection": selection, "epoch": 5, "R1": r1, "R5": r1 + 10, "R10": r1 + 15, "mAP": r1 - 5,
         "mINP": r1 - 20}
        for e, r1 in experiments.items()
    ] + [  # rows the headline leaves out: another direction, the validation curve
        {"dataset": dataset, "train_dataset": dataset, "experiment": e, "split": split, "direction": direction,
         "selection": selection, "epoch": 5, "R1": 1.0, "R5": 2.0, "R10": 3.0, "mAP": 4.0, "mINP": 5.0}
        for e in experiments for split, direction in (("test", "i2t"), ("val", "t2i"))
    ])


def html_of(rst: str) -> str:
    return publish_parts(rst, writer="html", settings_overrides={"report_level": 1})["html_body"]


def cells(html: str) -> list[list[str]]:
    """The table's rows as text cells (the header row first)."""
    import re

    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    return [[re.sub(r"<[^>]+>", "", c).replace("&#64;", "@").replace("&nbsp;", "").strip()
             for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)] for row in rows]


def test_real_dataset_rows_pair_ours_with_the_papers_row():
    rows = headline_rows(metrics("cuhk-pedes", {"tbps_clip": 70.0, "clip_baseline": 60.0}), "cuhk-pedes")
    assert [(r.kind, r.label) for r in rows] == [
        ("ours", "clip_baseline"), ("paper", "paper: CLIP B/16, fine-tuned"),
        ("ours", "tbps_clip"), ("paper", "paper: TBPS-CLIP B/16")]
    assert rows[2].values == {"R1": 70.0, "R5": 80.0, "R10": 85.0, "mAP": 65.0, "mINP": 50.0}
    assert rows[3].values["R1"] == 73.54 and rows[3].values["mINP"] == 49.25  # mINP from the ICL paper
    assert rows[1].values["mINP"] is None


def test_zero_shot_row_compares_with_the_published_zero_shot_row():
    # The workflow's zero-shot run is called zero_shot (rule evaluate_zero_shot).
    rows = headline_rows(metrics("rstpreid", {"zero_shot": 12.0}, selection="zero-shot"), "rstpreid")
    assert [(r.kind, r.label) for r in rows] == [("ours", "zero_shot (zero-shot)"),
                                                 ("paper", "paper: zero-shot CLIP B/16")]
    assert rows[1].values == {"R1": 13.45, "R5": 33.85, "R10": None, "mAP": 10.31, "mINP": None}
    assert rows[1].source == "NAM paper"


def test_rendered_table_shows_the_numbers_as_text_without_mailto_links():
    chance = chance_levels(np.array([2, 2, 3]), 40)
    rst = headline_rst("synthetic", headline_rows(metrics("synthetic", {"tiny_x_": 17.574}), "synthetic", chance))
    html = html_of(rst)
    assert "mailto:" not in html and "system-message" not in html and "problematic" not in html
    table = cells(html)
    assert table[0] == ["", "R@1", "R@5", "R@10", "mAP", "mINP"]
    assert table[1] == ["tiny_x_", "17.57", "27.57", "32.57", "12.57", "-2.43"]
    assert table[2][0] == "chance (random ranking)"
    assert table[2][1:] == [f"{chance[m]:.2f}" for m in ("R1", "R5", "R10", "mAP", "mINP")]
    assert "<caption>synthetic: text→image retrieval, test split (percent)</caption>" in html
    assert "Chance: the expected value of a uniformly random ranking" in html


def test_missing_paper_numbers_and_tiny_chance_values():
    chance = chance_levels(np.array([2] * 50), 20000)
    rows = headline_rows(metrics("rstpreid", {"tbps_clip": 60.0}), "rstpreid", chance)
    table = cells(html_of(headline_rst("rstpreid", rows)))
    assert table[2][0] == "paper: TBPS-CLIP B/16" and table[2][-1] == "–"  # no published mINP on RSTPReid
    assert table[3][1] == f"{chance['R1']:.2g}"  # 0.01: significant digits, not 0.00


def test_rst_text_escapes_every_markup_character():
    for text in ("R@10", "tiny_", "*bold*", "`x`_", "a|b|", "[1]_", ":role:`x`"):
        html = html_of(rst_text(text))
        assert f"<p>{text}</p>".replace("@", "&#64;") in html.replace("&quot;", '"'), (text, html)


def test_write_headline_needs_test_rows(tmp_path):
    from tbps.errors import UserInputError

    out = tmp_path / "headline.rst"
    write_headline(metrics("synthetic", {"tiny": 10.0}), out, dataset="synthetic")
    assert out.read_text().startswith(".. list-table:: synthetic")
    with pytest.raises(UserInputError, match="no text->image test rows"):
        write_headline(metrics("synthetic", {"tiny": 10.0}), out, dataset="rstpreid")
