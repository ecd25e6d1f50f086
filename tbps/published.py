"""Published retrieval numbers (docs/method.md#published-numbers) and the compression probe's
parameter table (the paper's Table 17) as data, for reference marks in plots and tables.

Text->image, full ranking, percent. ``None`` = not reported. The main rows are the TBPS-CLIP
paper's Tables 6-8. The paper selected the best epoch on the test split
(docs/method.md#model-selection), so these are "best-on-test" figures, while
the pipeline reports the last epoch: expect ours to sit slightly below at equal
quality. Seed variance in this field is about ±2 R@1.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid")
METRICS = ("R1", "R5", "R10", "mAP", "mINP")

PAPER = "TBPS-CLIP paper (Cao et al., AAAI 2024)"


@dataclass(frozen=True)
class Published:
    method: str
    dataset: str
    R1: float
    R5: float | None
    R10: float | None
    mAP: float | None
    mINP: float | None = None
    source: str = PAPER

    def metric(self, name: str) -> float | None:
        return getattr(self, name)


NOT_PRINTED = "–"


def parse_values(values: str) -> tuple[float | None, float | None, float | None, float | None]:
    """``"R1/R5/R10/mAP"`` as printed in the paper's tables -> four numbers, None for "–" (not printed)."""
    parts = values.split("/")
    if len(parts) != 4:
        raise ValueError(f"{values!r}: expected R1/R5/R10/mAP")
    return tuple(None if v.strip() == NOT_PRINTED else float(v) for v in parts)


def _row(method: str, dataset: str, values: str, source: str = PAPER, minp: float | None = None) -> Published:
    """``values`` = "R1/R5/R10/mAP" exactly as printed in the paper's tables."""
    r1, r5, r10, m = parse_values(values)
    return Published(method, dataset, r1, r5, r10, m, minp, source)


def _peer(method: str, dataset: str, values: str, source: str) -> Published:
    """``values`` = "R1/R5/R10/mAP/mINP" with '–' where not reported."""
    parts = [None if v == "–" else float(v) for v in values.split("/")]
    r1, r5, r10, m, minp = parts
    return Published(method, dataset, r1, r5, r10, m, minp, source)


_MAIN = {
    "CLIP B/32, fine-tuned": ("60.67/81.99/88.87/54.72", "53.96/73.69/80.43/32.37", "50.10/76.10/84.95/41.14"),
    "TBPS-CLIP B/32": ("69.54/86.99/91.24/61.57", "59.88/77.40/83.33/34.96", "56.65/80.75/87.30/44.00"),
    "CLIP B/16, fine-tuned": ("65.37/85.83/91.59/59.42", "55.97/74.62/81.35/30.63", "56.15/78.30/86.60/43.26"),
    "TBPS-CLIP B/16": ("73.54/88.19/92.35/65.38", "65.05/80.34/85.47/39.83", "61.95/83.55/88.75/48.26"),
    "Simplified B/16": ("72.66/88.14/92.72/64.97", "64.52/80.03/85.39/39.54", "62.10/81.90/87.75/48.00"),
}
# mINP of TBPS-CLIP B/16 is not in the paper; a later paper (ICL) reports it for two datasets.
_TBPS_MINP = {"cuhk-pedes": 49.25, "icfg-pedes": 7.87}
_ICL = "ICL paper"

_PEERS = {
    ("CLIP-B/16 InfoNCE fine-tune (IRRA's baseline, 384x128)", "IRRA paper"): (
        "68.19/86.47/91.47/61.12/44.86", "56.74/75.72/82.26/31.84/5.03", "54.05/80.70/88.00/43.41/22.31"),
    ("IRRA (CLIP-B/16, 384x128)", "IRRA, CVPR'23"): (
        "73.38/89.93/93.71/66.13/50.24", "63.46/80.25/85.82/38.06/7.93", "60.20/81.30/88.20/47.17/25.28"),
    ("RDE (CLIP-B/16 + token selection)", "RDE, CVPR'24"): (
        "75.94/90.14/94.12/67.56/51.44", "67.68/82.47/87.36/40.06/7.87", "65.35/83.95/89.90/50.88/28.08"),
    ("PLOT (CLIP-B/16 + part slots)", "PLOT, ECCV'24"): (
        "75.28/90.42/94.12/–/–", "65.76/81.39/86.73/–/–", "61.80/82.85/89.45/–/–"),
    ("RaSa (ALBEF, top-128 re-rank)", "RaSa, IJCAI'23"): (
        "76.51/90.29/94.25/69.38/–", "65.28/80.40/85.12/41.29/–", "66.90/86.50/91.35/52.31/–"),
    ("APTM (Swin-B + BERT, 1.5 M synthetic pairs, re-rank)", "APTM, MM'23"): (
        "76.53/90.04/94.15/66.91/–", "68.51/82.99/87.56/41.22/–", "67.50/85.70/91.45/52.56/–"),
}

# Zero-shot CLIP B/16 (NAM paper) gives R@1/R@5/mAP only.
ZERO_SHOT_METHOD = "zero-shot CLIP B/16"
_ZERO_SHOT = {"cuhk-pedes": (12.65, 27.16, 11.15), "icfg-pedes": (6.67, 17.91, 2.51), "rstpreid": (13.45, 33.85, 10.31)}

BATCH_160_METHOD = "Simplified B/16, global batch 160"


def _build() -> tuple[Published, ...]:
    rows: list[Published] = []
    for method, per_dataset in _MAIN.items():
        for dataset, values in zip(DATASETS, per_dataset, strict=True):
            minp = _TBPS_MINP.get(dataset) if method == "TBPS-CLIP B/16" else None
            source = PAPER if minp is None else f"{PAPER}; mINP: {_ICL}"
            rows.append(_row(method, dataset, values, source=source, minp=minp))
    rows.append(_row(BATCH_160_METHOD, "cuhk-pedes", "71.22/87.77/92.19/63.85", source="TBPS-CLIP maintainers"))
    for (method, source), per_dataset in _PEERS.items():
        for dataset, values in zip(DATASETS, per_dataset, strict=True):
            rows.append(_peer(method, dataset, values, source))
    for dataset, (r1, r5, m) in _ZERO_SHOT.items():
        rows.append(Published(ZERO_SHOT_METHOD, dataset, r1, r5, None, m, None, "NAM paper"))
    return tuple(rows)


PUBLISHED: tuple[Published, ...] = _build()

# Our experiment presets (config/experiments/) -> the paper's row they reproduce.
EXPERIMENT_TO_METHOD = {
    "tbps_clip": "TBPS-CLIP B/16",
    "tbps_clip_simplified": "Simplified B/16",
    "clip_baseline": "CLIP B/16, fine-tuned",
}


def lookup(method: str, dataset: str) -> Published | None:
    for row in PUBLISHED:
        if row.method == method and row.dataset == dataset:
            return row
    return None


def for_experiment(experiment: str, dataset: str, selection: str = "last") -> Published | None:
    """The published row a result of ours should be compared with, or None (e.g. synthetic data).

    ``selection`` as in the metrics tables: 'zero-shot' rows (pretrained weights, no fine-tuning)
    compare with the zero-shot CLIP B/16 row, whatever the run is called (the workflow names it
    ``zero_shot``; every preset with pretrained weights is a B/16).
    """
    if selection == "zero-shot":
        return lookup(ZERO_SHOT_METHOD, dataset)
    method = EXPERIMENT_TO_METHOD.get(experiment)
    if method is None:
        return None
    return lookup(method, dataset)


def as_frame() -> pl.DataFrame:
    """Every published row as a table (method, dataset, R1, R5, R10, mAP, mINP, source)."""
    return pl.DataFrame(
        [{"method": r.method, "dataset": r.dataset, **{m: r.metric(m) for m in METRICS}, "source": r.source}
         for r in PUBLISHED],
        schema={"method": pl.String, "dataset": pl.String, **dict.fromkeys(METRICS, pl.Float64),
                "source": pl.String},
    )


# --------------------------------------------------------------------------- the paper's study

ABLATION_DATASET = "cuhk-pedes"
"""The paper ran every ablation (Tables 1-5, 13, 14) on CUHK-PEDES with ViT-B/32 (docs/method.md#d12-backbone)."""

# The ablation tables transcribed one by one as printed (docs/method.md#tricks-table to #losses-table),
# keyed by the paper's table and the row ids of the study file (config/study.yaml): row id -> (the row as
# printed, "R1/R5/R10/mAP" with "–" where that table prints no number). A row printed in several tables
# (CLIP* in Tables 1 and 2; BT at alpha 0.1 in Tables 3 and 14) is listed in each; `study_numbers` merges
# them and refuses two tables that disagree.
ABLATION_TABLES: dict[str, dict[str, tuple[str, str]]] = {
    "Table 1": {
        "clip": ("CLIP", "60.67/81.99/88.87/54.72"),
        "global_grad": ("+ GlobalGrad", "63.66/84.08/90.11/56.46"),
        "dropout": ("+ Dropout", "61.06/82.00/88.95/55.10"),
        "lock_bl": ("+ LockBL", "61.27/82.23/88.79/55.43"),
        "soft_label": ("+ SLabel", "61.53/81.99/88.71/55.22"),
        "clip_star": ("CLIP*", "64.34/84.05/90.51/57.53"),
    },
    "Table 2": {
        "clip_star": ("CLIP*", "64.34/84.05/90.51/57.53"),
        "resized_crop": ("RandomResizedCrop", "65.29/85.01/90.68/58.62"),
        "erasing": ("RandomErasing", "64.64/84.34/90.74/58.08"),
        "grayscale": ("RandomGrayscale", "65.29/84.67/90.56/58.18"),
        "gaussian_blur": ("GaussianBlur", "55.30/77.86/85.88/49.82"),
        "color_jitter": ("ColorJitter-BCS", "64.86/84.65/90.47/57.85"),
        "color_jitter_hue": ("ColorJitter-Hue", "64.12/84.81/90.87/57.41"),
        "hflip": ("HorizontalFlip", "65.48/84.86/90.48/58.46"),
        "vflip": ("VerticalFlip", "64.23/83.98/90.16/57.35"),
        "rotation": ("RandomRotation", "65.50/85.20/91.13/58.92"),
        "stack_all": ("Stacking Together", "65.92/85.33/90.89/59.43"),
        "autoaugment": ("AutoAugment", "65.43/84.84/91.07/58.55"),
        "randaugment": ("RandAugment", "65.58/85.72/91.00/59.08"),
        "trivialaugment": ("TrivialAugment", "65.59/84.58/90.81/58.58"),
        "pool": ("Augmentation Pool", "66.13/85.38/91.21/59.30"),
    },
    # App. B.1: R@1 of each sweep point, one op alone on CLIP*.
    "Table 13": {
        "resized_crop_min_030": ("RandomResizedCrop, scale 0.3", "64.82/–/–/–"),
        "resized_crop_min_060": ("RandomResizedCrop, scale 0.6", "65.11/–/–/–"),
        "resized_crop_min_090": ("RandomResizedCrop, scale 0.9", "65.29/–/–/–"),
        "erasing_area_02_10": ("RandomErasing, area [.02, .10]", "64.51/–/–/–"),
        "erasing_area_10_20": ("RandomErasing, area [.10, .20]", "64.64/–/–/–"),
        "erasing_area_20_30": ("RandomErasing, area [.20, .30]", "64.30/–/–/–"),
        "gaussian_blur_k3": ("GaussianBlur, kernel 3", "55.30/–/–/–"),
        "gaussian_blur_k7": ("GaussianBlur, kernel 7", "47.01/–/–/–"),
        "gaussian_blur_k11": ("GaussianBlur, kernel 11", "46.48/–/–/–"),
        "color_jitter_010": ("ColorJitter-BCS, 0.1", "64.86/–/–/–"),
        "color_jitter_020": ("ColorJitter-BCS, 0.2", "64.72/–/–/–"),
        "color_jitter_040": ("ColorJitter-BCS, 0.4", "64.23/–/–/–"),
        "color_jitter_hue_010": ("ColorJitter-Hue, 0.1", "64.12/–/–/–"),
        "color_jitter_hue_020": ("ColorJitter-Hue, 0.2", "63.86/–/–/–"),
        "color_jitter_hue_040": ("ColorJitter-Hue, 0.4", "63.69/–/–/–"),
        "rotation_075": ("RandomRotation, 7.5 degrees", "65.42/–/–/–"),
        "rotation_150": ("RandomRotation, 15 degrees", "65.50/–/–/–"),
        "rotation_300": ("RandomRotation, 30 degrees", "65.06/–/–/–"),
    },
    # App. B.1: R@1 of each text augmentation at each alpha, on CLIP*.
    "Table 14": {
        "bt_005": ("BT, alpha 0.05", "64.31/–/–/–"),
        "bt_010": ("BT, alpha 0.1", "64.77/–/–/–"),
        "bt_020": ("BT, alpha 0.2", "64.47/–/–/–"),
        "rd_005": ("RD, alpha 0.05", "65.53/–/–/–"),
        "rd_010": ("RD, alpha 0.1", "64.99/–/–/–"),
        "rd_020": ("RD, alpha 0.2", "64.31/–/–/–"),
        "sr_005": ("SR, alpha 0.05", "63.95/–/–/–"),
        "sr_010": ("SR, alpha 0.1", "61.45/–/–/–"),
        "sr_020": ("SR, alpha 0.2", "59.70/–/–/–"),
        "ri_005": ("RI, alpha 0.05", "63.71/–/–/–"),
        "ri_010": ("RI, alpha 0.1", "62.83/–/–/–"),
        "ri_020": ("RI, alpha 0.2", "60.09/–/–/–"),
        "rs_005": ("RS, alpha 0.05", "56.41/–/–/–"),
        "rs_010": ("RS, alpha 0.1", "51.06/–/–/–"),
        "rs_020": ("RS, alpha 0.2", "49.51/–/–/–"),
        "eda_005": ("EDA, alpha 0.05", "63.43/–/–/–"),
        "eda_010": ("EDA, alpha 0.1", "62.17/–/–/–"),
        "eda_020": ("EDA, alpha 0.2", "60.66/–/–/–"),
    },
    # §4.2: each text augmentation at its chosen alpha (0.05 for the rejected ones), and BT + RD.
    "Table 3": {
        "bt_010": ("BT", "64.77/84.67/90.56/57.49"),
        "rd_005": ("RD", "65.53/84.70/90.87/57.90"),
        "sr_005": ("SR", "63.95/83.76/89.96/56.90"),
        "ri_005": ("RI", "63.71/84.29/90.03/56.77"),
        "rs_005": ("RS", "56.41/79.08/86.14/49.29"),
        "eda_005": ("EDA", "63.43/83.77/90.27/56.15"),
        "bt_rd": ("Stacking Together (BT + RD)", "65.72/84.62/90.76/58.68"),
    },
    "Table 4": {
        "pool": ("image: Augmentation Pool", "66.13/85.38/91.21/59.30"),
        "bt_rd": ("text: BT + RD", "65.72/84.62/90.76/58.68"),
        "clip_star_aug": ("image + text (CLIP*+Aug)", "66.78/85.98/91.23/59.68"),
    },
    "Table 5": {
        "n_itc": ("N-ITC", "66.91/85.98/91.68/60.01"),
        "ss_i": ("SS-I", "67.54/86.13/91.78/60.94"),
        "ss_t": ("SS-T", "65.97/85.40/90.72/59.10"),
        "ss_it": ("SS-IT", "66.81/86.09/91.63/59.82"),
        "mvs_i": ("MVS-I", "67.50/86.45/91.63/60.84"),
        "mvs_t": ("MVS-T", "66.46/85.96/91.13/60.24"),
        "mvs_it": ("MVS-IT", "67.01/85.66/91.33/59.83"),
        "r_itc": ("R-ITC", "68.19/86.01/90.94/60.90"),
        "c_itc": ("C-ITC", "67.15/86.31/92.04/60.58"),
        "tbps_clip": ("all = TBPS-CLIP", "69.54/86.99/91.24/61.57"),
    },
}

# Study rows that are rows of the main tables (Tables 6-8, every dataset) or the batch-160 answer of the
# authors' issue tracker: row id -> the method of `PUBLISHED`.
STUDY_MAIN_ROWS = {
    "clip_b32": "CLIP B/32, fine-tuned",
    "tbps_clip_b32": "TBPS-CLIP B/32",
    "clip_b16": "CLIP B/16, fine-tuned",
    "tbps_clip_b16": "TBPS-CLIP B/16",
    "simplified_b16": "Simplified B/16",
    "simplified_b16_batch160": BATCH_160_METHOD,
}


def _merge_ablation(row: str) -> Published | None:
    """One ablation row over every table that prints it: each metric from the tables that print it (they
    must agree), the tables named in ``source``."""
    printed = [(table, rows[row]) for table, rows in ABLATION_TABLES.items() if row in rows]
    if not printed:
        return None
    values: dict[str, float] = {}
    for _table, (_, text) in printed:
        for metric, value in zip(("R1", "R5", "R10", "mAP"), parse_values(text), strict=True):
            if value is None:
                continue
            if values.setdefault(metric, value) != value:
                raise ValueError(f"tbps/published.py: row {row!r} has {metric} {values[metric]} and {value} "
                                 f"({', '.join(t for t, _ in printed)})")
    numbers = sorted(int(t.removeprefix("Table ")) for t, _ in printed)
    tables = f"Tables {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}" if len(numbers) > 1 \
        else f"Table {numbers[0]}"
    source = f"{PAPER}, {tables}"
    return Published(printed[0][1][0], ABLATION_DATASET, values["R1"], values.get("R5"), values.get("R10"),
                     values.get("mAP"), None, source)


def study_numbers(row: str, dataset: str) -> Published | None:
    """What the paper (or, for batch 160, its authors) published for a study row on ``dataset``, or None."""
    if row in STUDY_MAIN_ROWS:
        return lookup(STUDY_MAIN_ROWS[row], dataset)
    if dataset != ABLATION_DATASET:
        return None
    return _merge_ablation(row)


def study_rows() -> tuple[str, ...]:
    """Every study row id with published numbers, in the order of the tables above."""
    ids = [row for rows in ABLATION_TABLES.values() for row in rows] + list(STUDY_MAIN_ROWS)
    return tuple(dict.fromkeys(ids))


# Checked once at import: a transcription slip between two tables stops every use of the numbers.
for _row_id in study_rows():
    study_numbers(_row_id, ABLATION_DATASET)


# --------------------------------------------------------------------------- compression (Table 17)


@dataclass(frozen=True)
class CompressionRow:
    """One row of the paper's Table 17 (ViT-B/16, §3.5 and App. B.2)."""

    x: int
    """Text layers frozen or dropped."""
    text_layers: tuple[int, ...]
    """Their ids as printed; this project reads them 1-based (docs/method.md D24)."""
    trainable_millions: dict[str, float]
    """Trainable parameters in millions, by preset ('tbps_clip', 'tbps_clip_simplified')."""


COMPRESSION_PRESETS = ("tbps_clip", "tbps_clip_simplified")
COMPRESSION_TABLE: tuple[CompressionRow, ...] = tuple(
    CompressionRow(x, layers, dict(zip(COMPRESSION_PRESETS, millions, strict=True)))
    for x, layers, millions in (
        (0, (), (149.2, 149.0)),
        (1, (7,), (146.0, 145.9)),
        (2, (7, 8), (142.9, 142.7)),
        (3, (3, 7, 8), (139.7, 139.6)),
        (4, (3, 5, 7, 8), (136.6, 136.4)),
        (5, (3, 5, 6, 7, 8), (133.4, 133.3)),
    )
)
"""Frozen or dropped text layers and trainable parameters of ViT-B/16; the paper gives no R@1 numbers
for these runs (Fig. 3 only)."""


def compression_row(x: int) -> CompressionRow | None:
    return next((row for row in COMPRESSION_TABLE if row.x == x), None)


# --------------------------------------------------------------------------- few-shot (Tables 11 and 16)

FEW_SHOT_FRACTIONS = (0.01, 0.05, 0.1)
FEW_SHOT_METHODS = {
    "clip": "CLIP, fine-tuned",
    "coop": 'CoOp ("a pedestrian photo of")',
    "clip_adapter": "CLIP-Adapter (image side, alpha = 0.4)",
    "tbps_clip": "TBPS-CLIP",
    "simplified": "Simplified TBPS-CLIP",
}
"""The few-shot table's methods (our key -> the paper's row; docs/method.md#few-shot-table)."""
_FEW_SHOT = {  # R1/R5/R10/mAP at 1 %, 5 %, 10 % of CUHK-PEDES's training data
    "clip": ("27.84/49.51/60.56/25.88", "38.37/62.26/72.34/35.39", "42.37/66.13/75.31/38.20"),
    "coop": ("10.98/23.98/31.50/10.22", "11.37/24.19/32.46/10.48", "12.10/25.55/33.97/10.96"),
    "clip_adapter": ("11.22/24.22/31.71/10.30", "11.96/25.45/33.56/10.91", "12.61/27.19/35.32/11.77"),
    "tbps_clip": ("27.94/51.20/62.07/27.60", "42.98/66.26/74.94/38.86", "49.19/71.98/80.46/43.81"),
    "simplified": ("30.05/51.56/62.23/28.53", "43.65/66.60/75.91/39.30", "50.26/72.51/80.28/44.28"),
}
FEW_SHOT_SOURCE = f"{PAPER}, Table 11 (5 %) and Table 16 (1 %, 10 %)"
FEW_SHOT_DATASET = "cuhk-pedes"


def few_shot_published(method: str, fraction: float, dataset: str) -> Published | None:
    """The paper's few-shot row for ``method`` (a key of :data:`FEW_SHOT_METHODS`) at ``fraction``; the
    paper reports CUHK-PEDES only, so other datasets get None."""
    if dataset != FEW_SHOT_DATASET or method not in _FEW_SHOT:
        return None
    for known, values in zip(FEW_SHOT_FRACTIONS, _FEW_SHOT[method], strict=True):
        if abs(known - fraction) < 1e-9:
            return _row(FEW_SHOT_METHODS[method], dataset, values, source=FEW_SHOT_SOURCE)
    return None
