"""Config values are data, never shell code; the synth rule never deletes a folder it did not make.

Real runs of the data stages (synth -> prepare -> augment -> shards) on a few generated
identities: a dry run with --printshellcmds would only show the quoting, not that the jobs work.
"""

from __future__ import annotations

import json

import pytest
import yaml
from helpers.workflow_runs import SMOKE_OVERLAY, make_run_folder, output_of, snakemake

pytestmark = pytest.mark.timeout(600)

TRAIN_SHARDS = "results/synthetic/shards/train/manifest.json"
HOSTILE_RAW = "resources/raw/syn$(touch PWNED);`touch PWNED2`; touch PWNED3 it's \"quoted\" & spaced"


def _overlay(**synthetic) -> dict:
    overlay = yaml.safe_load(yaml.safe_dump(SMOKE_OVERLAY))
    overlay["datasets"]["synthetic"].update(synthetic)
    return overlay


def _no_pwned_file(*folders) -> None:
    for folder in folders:
        found = [p for p in folder.rglob("PWNED*")]
        assert not found, found


def test_hostile_config_values_reach_the_commands_as_plain_arguments(tmp_path):
    overlay = _overlay(raw=HOSTILE_RAW)
    # Never loaded by the `none` backend, but passed on the augment command line.
    overlay["augment"] = {"model_en_fr": "Helsinki-NLP/opus-mt-en-fr$(touch PWNED4)", "model_fr_en": "x; touch PWNED5"}
    run = make_run_folder(tmp_path / "run", overlay)

    result = snakemake(run, TRAIN_SHARDS)

    _no_pwned_file(tmp_path, run.parent)
    raw = run / HOSTILE_RAW  # the folder has exactly the configured name
    assert (raw / "reid_raw.json").is_file() and (raw / "imgs").is_dir()
    assert (run / TRAIN_SHARDS).is_file()
    manifest = json.loads((run / TRAIN_SHARDS).read_text())
    assert manifest["shards"]
    log = output_of(result)
    assert "'resources/raw/syn$(touch PWNED)" in log  # printed quoted, as the shell received it


def test_synth_rule_refuses_a_folder_it_did_not_make(tmp_path):
    run = make_run_folder(tmp_path / "run", _overlay(raw="downloads/CUHK-PEDES"))
    download = run / "downloads" / "CUHK-PEDES"
    (download / "imgs").mkdir(parents=True)
    (download / "imgs" / "a.jpg").write_bytes(b"someone's photo")
    (download / "notes.txt").write_text("mine")

    result = snakemake(run, "results/synthetic/prepared/annotations.parquet", check=False)

    assert result.returncode != 0
    message = (run / "logs" / "synth" / "synthetic.log").read_text()
    assert "downloads/CUHK-PEDES: the folder is not empty and was not made by `tbps synth`" in message
    assert "datasets: synthetic: raw:" in message and "Traceback" not in message
    assert (download / "imgs" / "a.jpg").read_bytes() == b"someone's photo"
    assert sorted(p.name for p in download.iterdir()) == ["imgs", "notes.txt"]


def test_synth_rule_regenerates_its_own_folder_when_the_ids_change(tmp_path):
    run = make_run_folder(tmp_path / "run", _overlay(synth_ids=3))
    prepared = "results/synthetic/prepared/annotations.parquet"
    snakemake(run, prepared)
    marker = run / "resources/raw/synthetic/.tbps-synth.json"
    assert json.loads(marker.read_text())["ids"] == 3

    (run / "overlay.yaml").write_text(yaml.safe_dump(_overlay(synth_ids=5)))
    out = output_of(snakemake(run, prepared))

    assert "Params have changed" in out
    assert json.loads(marker.read_text())["ids"] == 5
