"""Shared test set-up: offline everything, small thread counts, one small synthetic dataset."""

import os

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    """A small synthetic CUHK-PEDES-format raw folder, generated once per test session."""
    from tbps.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("raw") / "synthetic"
    generate_dataset("cuhk-pedes", out, ids=40, seed=0, val_ids=8, test_ids=8)
    return out


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_raw, tmp_path_factory):
    """Prepared table, synonym paraphrases and shards (train/val/test) of ``synthetic_raw``.

    Returns a dict with the raw folder and each split's manifest path.
    """
    from tbps.augment.backends import make_backend
    from tbps.augment.stage import augment_captions
    from tbps.ingest.annotations import prepare
    from tbps.shards.writer import write_split

    root = tmp_path_factory.mktemp("prepared")
    table = root / "annotations.parquet"
    prepare("synthetic", synthetic_raw, table)
    augmented = root / "captions_aug.parquet"
    augment_captions(table, augmented, make_backend("synonyms", seed=0))
    out = {"raw": synthetic_raw, "annotations": table}
    for split in ("train", "val", "test"):
        write_split(table, split, synthetic_raw, root / "shards" / split,
                    augmented=augmented if split == "train" else None, max_samples=48, progress=False)
        out[split] = root / "shards" / split / "manifest.json"
    return out


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished run of the whole workflow (raw data -> results/synthetic/metrics.parquet) on a tiny
    synthetic overlay, built once per session (~40 s). The folder holds the checkout's workflow
    files, overlay.yaml, results/, resources/, logs/ and .snakemake/.

    Read it, or copy it first (``helpers.workflow_runs.copy_run``): other tests share it.
    """
    from helpers.workflow_runs import METRICS, make_run_folder, snakemake

    folder = make_run_folder(tmp_path_factory.mktemp("finished") / "run")
    snakemake(folder, METRICS)
    assert (folder / METRICS).is_file()
    return folder
