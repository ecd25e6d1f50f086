"""The plan's sample table: every planned sample's JSON member, one Parquet row group per shard.

``tbps shards plan`` reads the caption tables once per split and writes, beside
``plan.json``, ``plan_samples.parquet`` with columns ``shard`` (int32), ``image_index``
(int64) and ``json`` (the sample's JSON member, byte for byte as it goes into the tar), in
plan order, shard ``i`` being row group ``i``. A shard job reads its row group only (the
footer and one group: its cost does not grow with the dataset) and checks it against the
shard's ``samples_sha256`` in ``plan.json``, so a sample table from another plan is refused
rather than written into shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tbps.errors import input_error
from tbps.fileio import atomic_path

_SCHEMA = pa.schema([("shard", pa.int32()), ("image_index", pa.int64()), ("json", pa.binary())])
_REPLAN = "rerun `tbps shards plan` (in the workflow: `snakemake --cores 1 --force <the split's plan.json>`)"


def sample_json(row: dict[str, Any]) -> bytes:
    """The JSON member of one image's sample (a row of :func:`tbps.shards.image_table.image_table`)."""
    n = len(row["caption"])
    aug = row["caption_aug"] if isinstance(row["caption_aug"], list) else [None] * n
    meta = {
        "dataset": row["dataset"],
        "split": row["split"],
        "person_id": int(row["person_id"]),
        "train_id": None if row["train_id"] is None else int(row["train_id"]),
        "image_index": int(row["image_index"]),
        "image_path": row["image_path"],
        "captions": list(row["caption"]),
        "captions_aug": list(aug),
        "caption_ids": [int(c) for c in row["caption_id"]],
    }
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def samples_digest(members: list[bytes]) -> str:
    """sha256 of a shard's JSON members in order (compact JSON has no raw newline, so the join is unambiguous)."""
    return hashlib.sha256(b"\n".join(members)).hexdigest()


def write_plan_samples(path: Path, shards: list[list[tuple[int, bytes]]]) -> list[str]:
    """Write ``(image_index, json)`` per sample, one row group per shard, atomically; return each shard's digest."""
    digests = []
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, _SCHEMA, compression="zstd") as sink:
        for index, samples in enumerate(shards):
            members = [meta for _, meta in samples]
            # One write_table call per shard gives that shard its own row group.
            sink.write_table(pa.table({"shard": pa.array([index] * len(samples), pa.int32()),
                                       "image_index": pa.array([i for i, _ in samples], pa.int64()),
                                       "json": pa.array(members, pa.binary())}, schema=_SCHEMA),
                             row_group_size=max(len(samples), 1))
            digests.append(samples_digest(members))
    return digests


def read_shard_samples(plan: dict[str, Any], plan_path: Path, shard_index: int) -> list[tuple[int, bytes, dict]]:
    """``(image_index, json member, decoded JSON)`` of the planned shard ``shard_index``, in plan order.

    Reads the shard's row group of the plan's sample table only. Raises a
    :class:`~tbps.errors.UserInputError` (rerun the plan) when the table is missing or broken, or
    when its rows are not those the plan lists for the shard (another plan's table).
    """
    path = Path(plan_path).with_name(plan["samples"])
    entry = plan["shards"][shard_index]
    try:
        table = pq.ParquetFile(path)
        if table.metadata.num_row_groups != len(plan["shards"]):
            raise input_error(path, f"has {table.metadata.num_row_groups} row groups, the plan "
                              f"{len(plan['shards'])} shards (written by another plan)", _REPLAN)
        group = table.read_row_group(shard_index, columns=["shard", "image_index", "json"])
    except FileNotFoundError:
        raise input_error(path, "the plan's sample table is missing", _REPLAN) from None
    except (OSError, pa.ArrowException) as e:
        raise input_error(path, f"not a readable sample table ({type(e).__name__}: {e})", _REPLAN) from None
    shards = group["shard"].to_pylist()
    indices = group["image_index"].to_pylist()
    members = group["json"].to_pylist()
    if set(shards) != {shard_index} or indices != entry["image_indices"] or (
            samples_digest(members) != entry.get("samples_sha256")):
        raise input_error(path, f"the rows of shard {shard_index} differ from those {plan_path} lists "
                          "(the table was written by another plan)", _REPLAN)
    samples = []
    for image_index, member in zip(indices, members, strict=True):
        samples.append((image_index, member, json.loads(member)))
    return samples
