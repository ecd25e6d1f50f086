"""benchmarks/gpu_check.py, the one-command GPU check, in its tiny size on the CPU (a subset of its parts,
so it cannot rot between GPU sessions): the summary, the per-part JSON, the tables, and that the
measuring parts run without the modules the GPU machine lacks."""

import argparse
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    assert gpu_check.main(["--size", "tiny", "--parts", "eval", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_tiny_check_writes_summary_tables_and_part_json(tiny_check):
    summary = json.loads((tiny_check / "summary.json").read_text())
    assert set(summary["parts"]) == {"sanity", "eval"}
    sanity = summary["parts"]["sanity"]
    assert sanity["status"] == "ok" and sanity["data"]["torch_version"]
    # No CUDA here: the GPU-only figures say so instead of giving a number.
    assert sanity["data"]["bf16_matmul_tflops"] == "skipped: no CUDA"
    assert summary["gpu_hours"] == {"status": "skipped: no CUDA"}
    evaluation = summary["parts"]["eval"]
    assert evaluation["status"] == "ok", evaluation
    embed = evaluation["data"]["embed"]
    assert embed["torch_version"] and {r["precision"] for r in embed["rows"]} == {"fp32", "bf16"}
    assert all(r["per_s"] > 0 for r in embed["rows"])
    ranking = evaluation["data"]["ranking"]["rows"]
    assert {r["method"] for r in ranking} == {"chunked", "full-argsort"} and all("seconds" in r for r in ranking)
    assert (tiny_check / "eval-embed.json").is_file() and (tiny_check / "eval-ranking.log").is_file()
    table = (tiny_check / "summary.md").read_text()
    assert "| eval | ok |" in table and "bf16 matmul TFLOP/s" in table and "| images | bf16 | 32 |" in table


def test_measuring_parts_cannot_import_what_the_gpu_machine_lacks(tmp_path):
    script = tmp_path / "uses_polars.py"
    script.write_text("import polars\n")
    check = gpu_check.Check(argparse.Namespace(
        size="tiny", out=str(tmp_path / "out"), budget_s=60, device="cpu", parts="sanity"))
    result = check.run("sanity", [str(script)], cap=60, log_name="blocked")
    assert result["status"].startswith("failed")
    assert "polars is not installed on the GPU machine" in (tmp_path / "out" / "blocked.log").read_text()
    # The pipeline stages may use polars (carried), but not the rest.
    script.write_text("import polars\nimport nltk\n")
    result = check.run("data", [str(script)], forbid=False, cap=60, log_name="stage")
    assert result["status"].startswith("failed")
    assert "nltk is not installed on the GPU machine" in (tmp_path / "out" / "stage.log").read_text()


def test_a_part_over_its_cap_is_killed_and_recorded(tmp_path):
    script = tmp_path / "sleeps.py"
    script.write_text("import time\ntime.sleep(60)\n")
    check = gpu_check.Check(argparse.Namespace(
        size="tiny", out=str(tmp_path / "out"), budget_s=60, device="cpu", parts="sanity"))
    result = check.run("sanity", [str(script)], cap=6)
    assert result["status"].startswith("timeout") and result["seconds"] < 30
