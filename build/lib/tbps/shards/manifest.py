"""Step 3 of writing shards (``tbps shards manifest``): check every shard, then write manifest.json.

The manifest is written last: a folder without one is never complete.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from tbps.errors import input_error
from tbps.fileio import read_json_checked, sha256_file, write_json_atomic
from tbps.shards.layout import rewrite_hint, sidecar_path
from tbps.shards.plan import load_plan

log = logging.getLogger(__name__)


def build_manifest(
    plan_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shards_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check every planned shard (+ sidecar) and write ``out`` (manifest.json) last, atomically.

    Shards are looked up in ``shards_dir`` (default: the manifest's folder). A missing
    shard or sidecar, a sha256 mismatch, a sidecar from another plan or mixed image
    settings raise :class:`UserInputError` naming the file and the rule to rerun.
    """
    plan_path, out = Path(plan_path), Path(out)
    folder = Path(shards_dir) if shards_dir is not None else out.parent
    plan = load_plan(plan_path)
    plan_sha = sha256_file(plan_path)
    entries, reasons, params = [], Counter(), None
    for index, planned in enumerate(plan["shards"]):
        shard = folder / planned["name"]
        side = sidecar_path(shard)
        hint = rewrite_hint(shard, plan_path, index)
        if not shard.is_file():
            raise input_error(shard, "planned shard is missing", hint)
        info = read_json_checked(side, "the shard's sidecar (counts and sha256)", hint,
                                 ("plan_sha256", "sha256", "samples", "rejected", "bytes", "params"))
        if info.get("plan_sha256") != plan_sha:
            raise input_error(side, f"written from another plan than {plan_path}", hint)
        if sha256_file(shard) != info.get("sha256"):
            raise input_error(shard, "sha256 differs from its sidecar (corrupted or overwritten)", hint)
        if info["samples"] + len(info["rejected"]) != len(planned["image_indices"]):
            raise input_error(side, "accepted + rejected differs from the planned images", hint)
        if params is None:
            params = info["params"]
        elif info["params"] != params:
            raise input_error(side, f"written with other image settings ({info['params']} vs {params})", hint)
        reasons.update(r["reason"] for r in info["rejected"])
        entries.append({"name": planned["name"], "samples": info["samples"],
                        "bytes": info["bytes"], "sha256": info["sha256"]})
    num_samples = sum(e["samples"] for e in entries)
    if num_samples == 0:
        raise input_error(folder, f"no image of split {plan['split']!r} could be read (all rejected: "
                          f"{dict(reasons)})", "check the raw images, see the shard sidecars")
    manifest = {
        "split": plan["split"],
        "dataset": plan.get("dataset"),
        "seed": plan.get("seed"),
        "num_shards": len(entries),
        "num_samples": num_samples,
        "num_planned": plan["num_samples"],
        "num_rejected": sum(reasons.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "shards": entries,
        "total_bytes": sum(e["bytes"] for e in entries),
        "params": params,
        "plan_sha256": plan_sha,
    }
    write_json_atomic(out, manifest)
    if manifest["num_rejected"]:
        log.warning("%s: %d of %d images rejected %s (details in the shard sidecars)", out,
                    manifest["num_rejected"], manifest["num_planned"], manifest["rejected_by_reason"])
    return manifest
