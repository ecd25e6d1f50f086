"""Benchmark: peak memory and time of ``tbps synth`` (the annotation records held vs streamed).

    .venv/bin/python benchmarks/synth.py --ids 400 4000 [--code DIR]

Runs ``python -m tbps synth --format cuhk-pedes`` once per ``--ids`` value, each in its own
process, and prints the images written, wall time, CPU time (user + system, from
``os.wait4``) and peak RSS (``ru_maxrss``). ``--code DIR`` runs the ``tbps`` package found in
DIR instead of the installed one (e.g. ``git archive <commit> tbps | tar -x -C DIR`` for the
figures of an earlier version).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import rss  # benchmarks/rss.py, beside this script


def run_synth(ids: int, out: Path, code: Path | None) -> dict:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    command = [sys.executable, "-m", "tbps", "synth", "--format", "cuhk-pedes", "--out", str(out),
               "--ids", str(ids), "--seed", "0"]
    # Run outside the checkout: ``python -m`` puts the working directory first on sys.path.
    run = rss.measured_child(command, env=env, cwd=out.parent)
    images = sum(1 for p in out.rglob("*") if p.suffix in (".jpg", ".png"))
    return {"ids": ids, "images": images, "wall_s": run["wall"], "cpu_s": run["cpu"], "peak_rss_mib": run["max_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, nargs="+", default=[400, 4000], help="train identities per run")
    parser.add_argument("--code", type=Path, default=None, help="folder holding the tbps package to run")
    args = parser.parse_args()
    env = dict(os.environ, **({"PYTHONPATH": str(args.code)} if args.code else {}))
    with tempfile.TemporaryDirectory() as elsewhere:
        package = subprocess.run([sys.executable, "-c", "import tbps; print(tbps.__file__)"], env=env, cwd=elsewhere,
                                 capture_output=True, text=True, check=True).stdout.strip()
    print(f"tbps from {package}; load average before: {os.getloadavg()}")
    print(f"{'ids':>6} {'images':>8} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13}")
    rows = []
    for ids in args.ids:
        with tempfile.TemporaryDirectory(prefix="tbps-synth-bench-") as tmp:
            row = run_synth(ids, Path(tmp) / "raw", args.code)
        rows.append(row)
        print(f"{row['ids']:>6} {row['images']:>8} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} "
              f"{row['peak_rss_mib']:>13.0f}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
