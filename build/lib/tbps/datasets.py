"""What tbps knows about each dataset: annotation format, published statistics, where to get it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SplitStats:
    ids: int
    images: int
    captions: int


@dataclass(frozen=True)
class DatasetInfo:
    key: str
    title: str
    annotation_files: tuple[str, ...]
    """Accepted annotation file names in the raw folder (first = canonical)."""
    path_field: str
    """Field holding the image path relative to ``imgs/``."""
    splits: tuple[str, ...]
    first_train_id: int
    """Train ids are contiguous from this value in the published files."""
    captions_per_image: int
    published: dict[str, SplitStats] = field(default_factory=dict)
    """Per-split counts of the published release (spec §2.2); empty for synthetic data."""
    download: str = ""
    """How to obtain the raw release (shown when it is missing)."""


CUHK_PEDES = DatasetInfo(
    key="cuhk-pedes",
    title="CUHK-PEDES",
    annotation_files=("reid_raw.json",),
    path_field="file_path",
    splits=("train", "val", "test"),
    first_train_id=1,
    captions_per_image=2,
    published={
        "train": SplitStats(11003, 34054, 68126),
        "val": SplitStats(1000, 3078, 6158),
        "test": SplitStats(1000, 3074, 6156),
    },
    download=(
        "CUHK-PEDES is distributed by its authors on request (Li et al., CVPR 2017, "
        "'Person Search with Natural Language Description'; request form linked from "
        "the project page of the CUHK Multimedia Lab). Unpack it so that the folder holds "
        "reid_raw.json and imgs/{CUHK01,CUHK03,Market,test_query,train_query}/"
    ),
)

ICFG_PEDES = DatasetInfo(
    key="icfg-pedes",
    title="ICFG-PEDES",
    annotation_files=("ICFG-PEDES.json", "ICFG_PEDES.json"),
    path_field="file_path",
    splits=("train", "test"),
    first_train_id=0,
    captions_per_image=1,
    published={
        "train": SplitStats(3102, 34674, 34674),
        "test": SplitStats(1000, 19848, 19848),
    },
    download=(
        "ICFG-PEDES is distributed by the SSAN authors (Ding et al., 2021, 'Semantically "
        "Self-Aligned Network for Text-to-Image Part-aware Person Re-identification'; see the "
        "SSAN repository's README for the request). Unpack it so that the folder holds "
        "ICFG-PEDES.json and imgs/{train,test}/"
    ),
)

RSTPREID = DatasetInfo(
    key="rstpreid",
    title="RSTPReid",
    annotation_files=("data_captions.json",),
    path_field="img_path",
    splits=("train", "val", "test"),
    first_train_id=0,
    captions_per_image=2,
    published={
        "train": SplitStats(3701, 18505, 37010),
        "val": SplitStats(200, 1000, 2000),
        "test": SplitStats(200, 1000, 2000),
    },
    download=(
        "RSTPReid is distributed by the DSSL authors (Zhu et al., ACM MM 2021, 'DSSL: Deep "
        "Surroundings-person Separation Learning for Text-based Person Retrieval'; see the "
        "RSTPReid-Dataset repository's README for the request form). Unpack it so that the "
        "folder holds data_captions.json and imgs/<file>.jpg"
    ),
)

REAL_DATASETS = {d.key: d for d in (CUHK_PEDES, ICFG_PEDES, RSTPREID)}
FORMATS = tuple(REAL_DATASETS)
"""The three published annotation formats (``tbps synth --format``)."""
SYNTHETIC = "synthetic"
DATASET_KEYS = (*FORMATS, SYNTHETIC)


def info(key: str) -> DatasetInfo:
    try:
        return REAL_DATASETS[key]
    except KeyError:
        raise KeyError(f"unknown dataset format {key!r}; expected one of {FORMATS}") from None
