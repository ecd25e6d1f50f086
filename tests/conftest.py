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
    from tbps.data.synth import generate_dataset

    out = tmp_path_factory.mktemp("raw") / "synthetic"
    generate_dataset("cuhk-pedes", out, ids=40, seed=0, val_ids=8, test_ids=8)
    return out
