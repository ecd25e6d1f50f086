"""Tests for tbps.plots: valid, deterministic, small PNGs from tiny hand-made inputs; chance levels."""

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from tbps.cli import main
from tbps.errors import UserInputError
from tbps.plots import (
    MAX_FIGURE_BYTES,
    chance_from_annotations,
    chance_levels,
    loss_terms,
    moving_average,
    plot_examples,
    plot_metrics,
    plot_training,
)
from tbps.provenance import FIELDS
from tbps.train import val_curve_schema


def assert_png(path: Path, min_size=(200, 200)) -> None:
    assert path.is_file()
    assert path.stat().st_size < MAX_FIGURE_BYTES
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def write_train_log(train_dir: Path, steps: int = 40, epochs: int = 2) -> Path:
    rng = np.random.default_rng(0)
    step = np.arange(1, steps + 1)
    per_epoch = steps // epochs
    df = pl.DataFrame({
        "epoch": (step - 1) // per_epoch + 1, "step": (step - 1) % per_epoch + 1, "global_step": step,
        "lr": 1e-5 * np.minimum(1.0, step / 10), "alpha": np.full(steps, 0.5), "logit_scale": np.linspace(50, 60, steps),
        "samples_per_s": 100 + rng.normal(0, 5, steps), "loss_total": 3 * np.exp(-step / 20) + 1,
        "loss_n_itc": 2 * np.exp(-step / 20) + 0.5, "loss_c_itc": np.full(steps, 0.01), "loss_ss_i": np.full(steps, 2.0),
    })
    train_dir.mkdir(parents=True, exist_ok=True)
    df.write_parquet(train_dir / "train_log.parquet")
    return train_dir / "train_log.parquet"


def write_val_curve(train_dir: Path) -> Path:
    rows = [{"epoch": e, "split": "val", "direction": d, "R1": 10.0 * e, "R5": 30.0, "R10": 40.0, "mAP": 8.0 * e,
             "mINP": 2.0} for e in (1, 2) for d in ("t2i", "i2t")]
    pl.DataFrame(rows).write_parquet(train_dir / "val_curve.parquet")
    return train_dir / "val_curve.parquet"


def metrics_rows(dataset: str, experiments: dict[str, float]) -> pl.DataFrame:
    rows = []
    for experiment, r1 in experiments.items():
        rows.append({"dataset": dataset, "train_dataset": dataset, "experiment": experiment, "split": "test",
                     "direction": "t2i", "selection": "last", "epoch": 5, "R1": r1, "R5": r1 + 10, "R10": r1 + 15,
                     "mAP": r1 - 5, "mINP": r1 - 20})
    return pl.DataFrame(rows)


# --------------------------------------------------------------------------- training curves


def test_training_figure_with_and_without_val_curve_is_deterministic(tmp_path):
    train_dir = tmp_path / "results" / "synthetic" / "tiny" / "train"
    log_path = write_train_log(train_dir)

    no_rows = train_dir / "no_validation.parquet"
    pl.DataFrame([], schema=val_curve_schema()).write_parquet(no_rows)  # a run without a val split
    plot_training(log_path, tmp_path / "no_val.png", title="tiny")
    plot_training(log_path, tmp_path / "empty_val.png", val_curve=no_rows, title="tiny")
    curve = write_val_curve(train_dir)
    plot_training(log_path, tmp_path / "a.png", val_curve=curve, title="tiny")
    plot_training(log_path, tmp_path / "b.png", val_curve=curve, title="tiny")

    for name in ("no_val.png", "empty_val.png", "a.png", "b.png"):
        assert_png(tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "empty_val.png").read_bytes() == (tmp_path / "no_val.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "no_val.png").read_bytes()


def test_training_log_without_required_columns_is_a_user_error(tmp_path):
    log_path = write_train_log(tmp_path / "train")
    pl.read_parquet(log_path).drop("lr").write_parquet(log_path)
    with pytest.raises(UserInputError, match=r"train_log.parquet: missing column\(s\) lr"):
        plot_training(log_path, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_loss_terms_known_first_and_moving_average():
    assert loss_terms(["loss_total", "loss_zzz", "loss_c_itc", "lr", "loss_n_itc"]) == \
        ["loss_n_itc", "loss_c_itc", "loss_zzz"]
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0]), 1), [1.0, 3.0])


# --------------------------------------------------------------------------- metrics and chance


def test_chance_levels_match_exhaustive_enumeration():
    gallery, n = 6, 2
    hits = {1: [], 5: []}
    aps, inps = [], []
    for positions in itertools.combinations(range(1, gallery + 1), n):  # every ranking, equally likely
        for k in hits:
            hits[k].append(min(positions) <= k)
        aps.append(np.mean([(j + 1) / r for j, r in enumerate(positions)]))
        inps.append(n / max(positions))
    got = chance_levels(np.array([n]), gallery, ks=(1, 5))
    assert got["R1"] == pytest.approx(100 * np.mean(hits[1]))
    assert got["R5"] == pytest.approx(100 * np.mean(hits[5]))
    assert got["mAP"] == pytest.approx(100 * np.mean(aps))
    assert got["mINP"] == pytest.approx(100 * np.mean(inps))
    # A real gallery (ICFG-PEDES: 19,848 test images) stays finite: the binomials are taken in log space.
    assert 0 < chance_levels(np.array([2, 7]), 19_848)["mINP"] < 0.1
    # One positive among G: R@1 = 1/G, mAP = H_G / G; K beyond the gallery always hits.
    single = chance_levels(np.array([1, 1]), 4, ks=(1, 10))
    assert single["R1"] == pytest.approx(25.0)
    assert single["R10"] == pytest.approx(100.0)
    assert single["mAP"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert single["mINP"] == pytest.approx(single["mAP"])  # one positive: INP = AP = 1 / its rank
    with pytest.raises(ValueError):
        chance_levels(np.array([0]), 4)


def test_chance_from_annotations_uses_test_captions_as_queries(tmp_path):
    # Test split: person 1 has 2 images (3 captions), person 2 has 1 image (1 caption); gallery = 3 images.
    table = pl.DataFrame({
        "split": ["test", "test", "test", "test", "train"],
        "person_id": [1, 1, 1, 2, 9],
        "image_path": ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "z.jpg"],
    })
    path = tmp_path / "annotations.parquet"
    table.write_parquet(path)
    got = chance_from_annotations(path)
    want = chance_levels(np.array([2, 2, 2, 1]), 3)
    assert got == pytest.approx(want)
    assert got["R1"] == pytest.approx(100 * (3 * 2 / 3 + 1 / 3) / 4)


def test_metrics_figure_with_paper_marks_and_chance(tmp_path):
    real = metrics_rows("cuhk-pedes", {"tbps_clip": 70.0, "tbps_clip_simplified": 69.0, "clip_baseline": 60.0})
    plot_metrics(real, tmp_path / "real.png", dataset="cuhk-pedes")
    synth = metrics_rows("synthetic", {"tiny_tbps_clip": 30.0})
    plot_metrics(synth, tmp_path / "synth.png", dataset="synthetic", chance={"R1": 2.0, "R5": 9.0, "R10": 17.0,
                                                                             "mAP": 4.0, "mINP": 1.5})
    assert_png(tmp_path / "real.png")
    assert_png(tmp_path / "synth.png")
    with pytest.raises(UserInputError, match="no text->image test rows"):
        plot_metrics(real, tmp_path / "none.png", dataset="rstpreid")


def write_eval(tmp_path: Path, experiment: str, r1: float) -> Path:
    """A metrics file as `tbps evaluate` writes it (t2i row only)."""
    row = {"dataset": "synthetic", "experiment": experiment, "split": "test", "direction": "t2i", "epoch": 1,
           "selection": "last", "R1": r1, "R5": 50.0, "R10": 60.0, "mAP": 30.0, "mINP": 10.0, "num_queries": 8,
           "num_gallery": 4, "seed": 0, "config_sha256": "c", "data_sha256": "d", "synonym_source": "none", "eval_precision": "fp32",
           **{name: 1 if kind is int else "x" for name, kind in FIELDS.items()},
           "checkpoint": "final.pt", "created_at": "2024-01-01T00:00:00+00:00"}
    path = tmp_path / f"{experiment}.parquet"
    pl.DataFrame([row]).write_parquet(path)
    return path


def test_cli_metrics_figure_from_evaluation_files(tmp_path):
    inputs = [write_eval(tmp_path, "tiny_a", 40.0), write_eval(tmp_path, "tiny_b", 45.0)]
    annotations = tmp_path / "annotations.parquet"
    pl.DataFrame({"split": ["test"] * 4, "person_id": [1, 1, 2, 3],
                  "image_path": ["a", "b", "c", "d"]}).write_parquet(annotations)
    out, headline = tmp_path / "metrics.png", tmp_path / "headline.rst"
    argv = ["plots", "metrics", "--inputs", *map(str, inputs), "--dataset", "synthetic",
            "--annotations", str(annotations), "--out", str(out), "--headline", str(headline)]
    assert main(argv) == 0
    assert_png(out)
    # The headline holds the figure's numbers: each run's row, then chance.
    text = headline.read_text()
    assert "**tiny\\_a**" in text and "**tiny\\_b**" in text and "chance \\(random ranking\\)" in text
    assert "     - 40.00" in text and "     - 45.00" in text


# --------------------------------------------------------------------------- retrieval examples


def write_examples(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    (raw / "imgs").mkdir(parents=True)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (120, 120, 120)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (16, 40), colour).save(raw / "imgs" / f"p{i}.png")
    rows = []
    for kind, query, qid in (("sample", 0, 0), ("sample", 3, 1), ("worst", 7, 2)):
        for rank in range(1, 6):
            gid = (query + rank) % len(colours)
            rows.append({"kind": kind, "query": query, "caption": f"A person number {qid} wearing colour {qid}.",
                         "query_person_id": qid, "first_positive_rank": 2, "rank": rank,
                         "image_path": f"imgs/p{gid}.png", "person_id": gid, "correct": gid == qid,
                         "score": 0.9 - 0.1 * rank})
    path = tmp_path / "test_examples.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path, raw


def test_examples_page_is_a_deterministic_png(tmp_path):
    examples, raw = write_examples(tmp_path)
    plot_examples(examples, raw, tmp_path / "a.png", title="tiny")
    assert main(["plots", "examples", "--examples", str(examples), "--raw", str(raw), "--out",
                 str(tmp_path / "b.png"), "--title", "tiny"]) == 0
    assert_png(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as im:
        # Full colour at twice the former 90 dpi (706 px wide): no palette, no alpha channel.
        assert im.mode == "RGB" and im.size[0] >= 2 * 706
        pixels = np.asarray(im).reshape(-1, 3)
    # Both frame colours are drawn: some results are correct (green), others not (red).
    assert np.any(np.all(np.abs(pixels.astype(int) - (0x1A, 0x98, 0x50)) < 12, axis=1))
    assert np.any(np.all(np.abs(pixels.astype(int) - (0xD7, 0x30, 0x27)) < 12, axis=1))


def test_examples_page_keeps_the_photos_colours(tmp_path):
    examples, raw = write_examples(tmp_path)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 16, 3), dtype=np.uint8)  # 640 colours, one per pixel
    Image.fromarray(photo).save(raw / "imgs" / "p1.png")
    plot_examples(examples, raw, tmp_path / "page.png")
    with Image.open(tmp_path / "page.png") as im:
        colours = np.unique(np.asarray(im).reshape(-1, 3), axis=0)
    assert len(colours) > 600  # a 256-colour palette could not hold them


def test_examples_with_a_missing_image_name_the_image_and_the_fix(tmp_path):
    examples, raw = write_examples(tmp_path)
    (raw / "imgs" / "p2.png").unlink()
    with pytest.raises(UserInputError, match=r"image imgs/p2.png is not in .*Fix: pass --raw") as err:
        plot_examples(examples, raw, tmp_path / "x.png")
    assert str(err.value).startswith(f"{examples}, record ")
    assert not (tmp_path / "x.png").exists()


def test_examples_file_without_required_columns_is_a_user_error(tmp_path):
    examples, raw = write_examples(tmp_path)
    pl.read_parquet(examples).drop("correct").write_parquet(examples)
    with pytest.raises(UserInputError, match=r"missing column\(s\) correct"):
        plot_examples(examples, raw, tmp_path / "x.png")
