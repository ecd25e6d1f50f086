"""The prepared caption table as the shard steps read it: validated, one row per image."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tbps.errors import input_error
from tbps.fileio import read_parquet_checked

_REQUIRED_COLUMNS = (
    "caption_id", "dataset", "split", "person_id", "train_id",
    "image_index", "image_path", "caption_index", "caption",
)
_NON_NULL_COLUMNS = ("caption_id", "split", "person_id", "image_index", "image_path", "caption")


def read_annotations(path: Path, split: str | None = None) -> pl.DataFrame:
    """The annotations table (required columns present, key columns non-null), of ``split`` if given."""
    df = read_parquet_checked(path, "annotations file", "regenerate it with `tbps prepare` (or fix --captions)",
                              _REQUIRED_COLUMNS)
    for column in _NON_NULL_COLUMNS:
        nulls = df.filter(pl.col(column).is_null())
        if nulls.height:
            raise input_error(path, f"null {column}", "regenerate it with `tbps prepare`",
                              record=nulls["caption_id"][0] if column != "caption_id" else None)
    if split is not None:
        df = df.filter(pl.col("split") == split)
    return df


def image_table(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    """One row per image: per-image fields + caption lists in caption_id (source) order."""
    df = df.sort("caption_id")
    images = df.group_by("image_index", maintain_order=True).agg(
        pl.col("dataset").first(),
        pl.col("split").first(),
        pl.col("person_id").first(),
        pl.col("train_id").first(),
        pl.col("image_path").first(),
        pl.col("caption_id"),
        pl.col("caption"),
        pl.col("caption_aug") if "caption_aug" in df.columns else pl.lit(None, pl.String).alias("caption_aug"),
        pl.col("image_path").n_unique().alias("_paths"),
        pl.col("person_id").n_unique().alias("_pids"),
    )
    bad = images.filter((pl.col("_paths") > 1) | (pl.col("_pids") > 1))
    if bad.height:
        first = bad.row(0, named=True)
        raise input_error(
            path,
            f"image_index {first['image_index']} has several image paths or person ids",
            "regenerate the table with `tbps prepare` (image_index must identify one image)",
            record=int(first["caption_id"][0]),
        )
    return images.drop("_paths", "_pids")
