"""The headline of a dataset: our test numbers, the paper's beside them, chance level.

One table per dataset, text->image on the test split in percent: a row per evaluated experiment
(the metrics rows ``tbps.plots.metric_rows`` selects, as in ``metrics.png``), under it the
published row it reproduces where there is one (``tbps.published``), and the expected value of a
random ranking at the bottom. Written as reStructuredText: the report's landing page
(workflow/report/workflow.rst) includes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tbps.fileio import write_text_atomic
from tbps.plots import METRIC_LABELS, METRICS, metric_rows, paper_row

MISSING = "–"


@dataclass(frozen=True)
class HeadlineRow:
    """One line of the table: ``kind`` is ours, paper or chance; None where there is no number."""

    kind: str
    label: str
    values: dict[str, float | None]
    source: str | None = None


def headline_rows(metrics: pl.DataFrame, dataset: str, chance: dict[str, float] | None = None) -> list[HeadlineRow]:
    rows = []
    for row in metric_rows(metrics, dataset).iter_rows(named=True):
        label = row["experiment"] if row["selection"] == "last" else f"{row['experiment']} ({row['selection']})"
        rows.append(HeadlineRow("ours", label, {m: row[m] for m in METRICS}))
        paper = paper_row(row, dataset)
        if paper is not None:
            rows.append(HeadlineRow("paper", f"paper: {paper.method}", {m: paper.metric(m) for m in METRICS},
                                    paper.source))
    if chance:
        rows.append(HeadlineRow("chance", "chance (random ranking)", {m: chance.get(m) for m in METRICS}))
    return rows


def rst_text(text: str) -> str:
    """``text`` as literal reStructuredText: every mark-up character backslash-escaped (so ``R@10``
    is no e-mail address and ``tiny_`` no reference)."""
    return re.sub(r"([^A-Za-z0-9\s])", r"\\\1", text)


def _number(value: float | None, chance: bool) -> str:
    if value is None:
        return MISSING
    # Chance on a real gallery is far below 0.01 %: keep its first significant digits.
    return f"{value:.2g}" if chance and value < 0.1 else f"{value:.2f}"


def headline_rst(dataset: str, rows: list[HeadlineRow]) -> str:
    """The table as a reStructuredText ``list-table`` (ours in bold), with the sources under it."""
    header = ["", *(rst_text(METRIC_LABELS[m]) for m in METRICS)]
    lines = [f".. list-table:: {rst_text(dataset)}: text→image retrieval, test split (percent)",
             "   :header-rows: 1", "   :class: tbps-headline", ""]
    body = [header] + [
        [f"**{rst_text(r.label)}**" if r.kind == "ours" else rst_text(r.label),
         *(_number(r.values[m], r.kind == "chance") for m in METRICS)]
        for r in rows
    ]
    for cells in body:
        lines.append(f"   * - {cells[0]}".rstrip())
        lines.extend(f"     - {cell}" for cell in cells[1:])
    lines.append("")
    notes = ["Ours: the last epoch's checkpoint."]
    # "TBPS-CLIP paper (...); mINP: ICL paper" -> each source once.
    sources = sorted({part for r in rows if r.source for part in r.source.split("; ")})
    if sources:
        notes.append("Paper: the published row each experiment reproduces (" + "; ".join(sources) + "), "
                     "its best epoch picked on the test split, so optimistic by construction; "
                     "seed-to-seed variation is about ±2 R@1.")
    if any(r.kind == "chance" for r in rows):
        notes.append("Chance: the expected value of a uniformly random ranking of this test gallery.")
    lines.append(rst_text(" ".join(notes)))
    return "\n".join(lines) + "\n"


def write_headline(metrics: pl.DataFrame, out: Path, *, dataset: str, chance: dict[str, float] | None = None) -> None:
    write_text_atomic(Path(out), headline_rst(dataset, headline_rows(metrics, dataset, chance)))
