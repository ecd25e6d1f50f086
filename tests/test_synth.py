"""The synthetic dataset generator writes exactly the published layouts, reproducibly."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbps.cli import main
from tbps.datasets import info
from tbps.errors import UserInputError
from tbps.fileio import sha256_file
from tbps.ingest.formats import find_annotation_file, parse_records, read_json
from tbps.synth import generate as synth
from tbps.synth.generate import generate_dataset, plan_dataset, read_marker
from tbps.synth.people import person_attributes
from tbps.synth.vocabulary import COLOURS, HAIR_COLOURS

SIZE = (40, 80)
SMALL = {"ids": 20, "val_ids": 4, "test_ids": 4, "size": SIZE}
FIELDS = {
    "cuhk-pedes": ["split", "captions", "file_path", "processed_tokens", "id"],
    "icfg-pedes": ["split", "captions", "file_path", "processed_tokens", "id"],
    "rstpreid": ["id", "img_path", "captions", "split"],
}
PATH_PATTERNS = {
    "cuhk-pedes": r"(CUHK01/\d{7}\.png|CUHK03/\d+_\d+\.jpg|Market/\d{4}_c\d+s\d+_\d{6}_\d{2}\.jpg"
                  r"|(train|test)_query/p\d+_s\d+\.jpg)",
    "icfg-pedes": r"(train|test)/(\d{4})/\2_\d{3}\.jpg",
    "rstpreid": r"\d{4}_c\d+_\d{4}\.jpg",
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[Path, dict, list[dict]]]:
    """One small dataset per format: (folder, returned counts, parsed records)."""
    made = {}
    for fmt in FIELDS:
        out = tmp_path_factory.mktemp("synth") / fmt
        kwargs = dict(SMALL, val_ids=None) if fmt == "icfg-pedes" else SMALL
        counts = generate_dataset(fmt, out, seed=3, **kwargs)
        records = json.loads((out / info(fmt).annotation_files[0]).read_text(encoding="utf-8"))
        made[fmt] = (out, counts, records)
    return made


def _captions_by_id(records: list[dict]) -> dict[int, list[str]]:
    by_id = defaultdict(list)
    for r in records:
        by_id[r["id"]].extend(r["captions"])
    return by_id


@pytest.mark.parametrize("fmt", list(FIELDS))
def test_annotation_file_fields_and_types(datasets, fmt):
    out, _, records = datasets[fmt]
    # The release's files, plus the hidden marker that says the generator made the folder.
    assert sorted(p.name for p in out.iterdir()) == sorted(["imgs", info(fmt).annotation_files[0], synth.MARKER_NAME])
    assert isinstance(records, list) and records
    # Streamed record by record, the file is exactly the one-line dump of the whole list.
    text = (out / info(fmt).annotation_files[0]).read_text(encoding="utf-8")
    assert text == json.dumps(records, ensure_ascii=False) + "\n"
    for r in records:
        assert list(r) == FIELDS[fmt]  # release field order, nothing extra
        assert isinstance(r["id"], int) and isinstance(r["split"], str)
        assert isinstance(r[info(fmt).path_field], str)
        assert isinstance(r["captions"], list) and all(isinstance(c, str) and c for c in r["captions"])
        if "processed_tokens" in r:
            assert len(r["processed_tokens"]) == len(r["captions"])
            for caption, tokens in zip(r["captions"], r["processed_tokens"], strict=True):
                assert tokens and all(t == t.lower() and t.isalnum() for t in tokens)
                assert tokens[0] in caption.lower()
    assert {r["split"] for r in records} == set(info(fmt).splits)
    # The project's own reader accepts the file as a release of this format.
    found = find_annotation_file("synthetic", out)
    detected, path = found[0], found[-1]
    assert detected.path_field == info(fmt).path_field and path.name == info(fmt).annotation_files[0]
    assert len(parse_records(detected, path, read_json(path))) == len(records)


@pytest.mark.parametrize("fmt", list(FIELDS))
def test_id_conventions(datasets, fmt):
    _, counts, records = datasets[fmt]
    ids = {split: sorted({r["id"] for r in records if r["split"] == split}) for split in info(fmt).splits}
    first = info(fmt).first_train_id
    assert ids["train"] == list(range(first, first + SMALL["ids"]))
    nxt = first + SMALL["ids"]
    for split in info(fmt).splits[1:]:  # val/test continue the numbering after train
        n = SMALL["val_ids"] if split == "val" else SMALL["test_ids"]
        assert ids[split] == list(range(nxt, nxt + n)), split
        nxt += n
    if fmt == "icfg-pedes":
        assert "val" not in counts and "val" not in {r["split"] for r in records}
    for split, c in counts.items():
        mine = [r for r in records if r["split"] == split]
        assert c == {"ids": len(ids[split]), "images": len(mine), "captions": sum(len(r["captions"]) for r in mine)}


@pytest.mark.parametrize("fmt", list(FIELDS))
def test_every_image_exists_decodes_and_nothing_else(datasets, fmt):
    out, _, records = datasets[fmt]
    paths = [r[info(fmt).path_field] for r in records]
    assert len(set(paths)) == len(paths)
    on_disk = {p.relative_to(out / "imgs").as_posix() for p in (out / "imgs").rglob("*") if p.is_file()}
    assert on_disk == set(paths)
    for r, path in zip(records, paths, strict=True):
        assert re.fullmatch(PATH_PATTERNS[fmt], path), path
        with Image.open(out / "imgs" / path) as im:
            assert im.size == SIZE and im.mode == "RGB"
            assert im.format == ("PNG" if path.endswith(".png") else "JPEG")
        if fmt == "icfg-pedes":
            assert path.startswith(f"{r['split']}/{r['id']:04d}/")
        if fmt == "rstpreid":
            assert path.startswith(f"{r['id']:04d}_")


def test_caption_counts_and_dataset_quirks(datasets):
    _, _, cuhk = datasets["cuhk-pedes"]
    per_image = Counter(len(r["captions"]) for r in cuhk)
    assert per_image[2] > 0.9 * len(cuhk) and set(per_image) <= {2, 3, 4}
    for split in ("train", "val", "test"):  # the >2 captions quirk shows up in every split
        assert any(len(r["captions"]) > 2 for r in cuhk if r["split"] == split)
    images_per_id = Counter(r["id"] for r in cuhk if r["split"] == "train")
    assert 1 in images_per_id.values()  # some CUHK ids have a single image
    assert {p.split("/")[0] for p in (r["file_path"] for r in cuhk)} <= set(synth._CUHK_FOLDERS)
    assert all(len(r["captions"]) == 1 for r in datasets["icfg-pedes"][2])
    rstp = datasets["rstpreid"][2]
    assert all(len(r["captions"]) == 2 for r in rstp)
    assert Counter(r["id"] for r in rstp).most_common()[-1][1] == 5
    glued = [c for r in rstp for c in r["captions"] if re.search(r"[a-z]\.[A-Z]", c)]
    assert len(glued) > 0.1 * 2 * len(rstp)  # "jacket.His"
    assert not any(re.search(r"[a-z]\.[A-Z]", c) for r in cuhk for c in r["captions"])


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    def digests(out: Path) -> dict[str, str]:
        return {p.relative_to(out).as_posix(): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}

    kwargs = {"ids": 6, "val_ids": 2, "test_ids": 2, "size": SIZE}
    generate_dataset("cuhk-pedes", tmp_path / "a", seed=7, **kwargs)
    generate_dataset("cuhk-pedes", tmp_path / "b", seed=7, **kwargs)
    generate_dataset("cuhk-pedes", tmp_path / "c", seed=8, **kwargs)
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert len(a) > 10 and a == b
    assert a["reid_raw.json"] != c["reid_raw.json"]
    common = set(a) & set(c)
    assert sum(a[k] != c[k] for k in common) >= 0.9 * len(common)


def test_two_photos_of_one_person_differ(datasets):
    out, _, records = datasets["rstpreid"]
    first = [r["img_path"] for r in records if r["id"] == 0]
    pixels = [np.asarray(Image.open(out / "imgs" / p), dtype=np.int16) for p in first]
    for i in range(len(pixels)):
        for j in range(i + 1, len(pixels)):
            assert np.abs(pixels[i] - pixels[j]).mean() > 5


def _colour_words(keys) -> list[str]:
    return sorted({w for k in keys for w in COLOURS[k].words}, key=len, reverse=True)


@pytest.mark.parametrize("fmt", list(FIELDS))
def test_captions_describe_the_identity(datasets, fmt):
    """Captions name the person's own colours (learnable) and never colours the person lacks."""
    _, _, records = datasets[fmt]
    first = info(fmt).first_train_id
    hits = 0
    by_id = _captions_by_id(records)
    for person_id, captions in by_id.items():
        person = person_attributes(3, person_id - first)
        upper_words = COLOURS[person.upper_colour].words
        hits += any(re.search(rf"\b{w}\b", c.lower()) for c in captions for w in upper_words)
        own = _colour_words(person.colour_keys()) + list(HAIR_COLOURS[person.hair_colour].words)
        for caption in captions:
            text = caption.lower()
            for w in sorted(own, key=len, reverse=True):
                text = re.sub(rf"\b{w}\b", " ", text)
            foreign = [w for w in _colour_words(COLOURS) if re.search(rf"\b{w}\b", text)]
            assert not foreign, (person_id, caption, foreign)
    assert hits >= 0.9 * len(by_id)


def test_captions_vary():
    """Patterns, synonyms and attribute subsets vary: captions of one image are rarely equal."""
    from tbps.synth.captions import CAPTION_STYLES, write_caption

    person = person_attributes(0, 0)
    rng = np.random.default_rng(0)
    captions = [write_caption(person, rng, CAPTION_STYLES["cuhk-pedes"]) for _ in range(200)]
    assert len(set(captions)) > 190
    openings = Counter(" ".join(c.split()[:2]).lower() for c in captions)
    assert len(openings) >= 6
    assert any(c.count(".") >= 2 for c in captions) and any(c.count(".") <= 1 for c in captions)
    assert any("gray" in c for c in captions) or any("grey" in c for c in captions)


def test_identities_share_attribute_combinations():
    looks = Counter()
    for i in range(400):
        p = person_attributes(0, i)
        looks[(p.gender, p.upper, p.upper_colour, p.lower, p.lower_colour)] += 1
    shared = sum(n for n in looks.values() if n > 1)
    assert shared >= 40  # look-alike hard negatives exist
    assert len(looks) > 150  # ... but most people look different


def test_plan_is_cheap_and_scales():
    plan = plan_dataset("icfg-pedes", ids=10_000, seed=0)
    assert len(plan) >= 50_000
    assert len({p.path for p in plan}) == len(plan)


def test_crash_leaves_no_finished_looking_folder(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth.render_photo

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_photo", flaky)
    with pytest.raises(RuntimeError):
        generate_dataset("rstpreid", tmp_path / "out", ids=4, size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_user_errors_and_leave_folders_alone(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(UserInputError, match="not empty"):
        generate_dataset("rstpreid", tmp_path / "full", ids=2, size=SIZE)
    assert (tmp_path / "full" / "keep.txt").exists()
    with pytest.raises(UserInputError, match="no val split"):
        generate_dataset("icfg-pedes", tmp_path / "x", ids=2, val_ids=2, size=SIZE)
    with pytest.raises(UserInputError, match="--ids"):
        generate_dataset("rstpreid", tmp_path / "x", ids=0, size=SIZE)
    with pytest.raises(UserInputError, match="images-per-id"):
        generate_dataset("rstpreid", tmp_path / "x", ids=2, images_per_id=(3, 2), size=SIZE)
    with pytest.raises(UserInputError, match="too small"):
        generate_dataset("rstpreid", tmp_path / "x", ids=2, size=(8, 8))
    assert not (tmp_path / "x").exists()


def test_finished_folder_records_its_parameters(tmp_path):
    generate_dataset("rstpreid", tmp_path / "out", ids=3, seed=5, val_ids=2, test_ids=2, size=SIZE)
    assert read_marker(tmp_path / "out") == {
        "generator": "tbps synth", "generator_version": synth.GENERATOR_VERSION, "format": "rstpreid", "ids": 3,
        "seed": 5, "images_per_id": None, "val_ids": 2, "test_ids": 2, "size": list(SIZE),
    }


def test_own_folder_is_regenerated_in_place_when_parameters_change(tmp_path):
    out = tmp_path / "out"
    kwargs = {"ids": 3, "val_ids": 2, "test_ids": 2, "size": SIZE}
    generate_dataset("cuhk-pedes", out, seed=1, **kwargs)
    first = (out / "reid_raw.json").read_bytes()
    generate_dataset("cuhk-pedes", out, seed=2, **kwargs)
    assert (out / "reid_raw.json").read_bytes() != first and read_marker(out)["seed"] == 2
    generate_dataset("cuhk-pedes", out, seed=1, **kwargs)
    assert (out / "reid_raw.json").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copy left


@pytest.mark.parametrize("marker", [None, "not json", '{"generator": "someone else"}'],
                         ids=["no marker", "broken marker", "foreign marker"])
def test_folder_it_did_not_make_is_refused_untouched(tmp_path, marker):
    download = tmp_path / "CUHK-PEDES"
    (download / "imgs").mkdir(parents=True)
    (download / "reid_raw.json").write_text("[]")
    (download / "imgs" / "a.jpg").write_bytes(b"mine")
    if marker is not None:
        (download / synth.MARKER_NAME).write_text(marker)
    before = {p: p.read_bytes() for p in download.rglob("*") if p.is_file()}
    with pytest.raises(UserInputError) as err:
        generate_dataset("cuhk-pedes", download, ids=2, size=SIZE)
    message = str(err.value)
    assert str(download) in message and "not made by `tbps synth`" in message  # which folder, why
    assert "datasets: synthetic: raw:" in message and "delete" in message  # how to fix
    assert {p: p.read_bytes() for p in download.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUHK-PEDES"]


def test_cli_prints_counts_and_replaces_only_its_own_folder_without_force(tmp_path, capsys):
    out = tmp_path / "rstp"
    args = ["synth", "--format", "rstpreid", "--out", str(out), "--ids", "3", "--val-ids", "2",
            "--test-ids", "2", "--images-per-id", "2", "--size", "32x64", "--seed", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"train\s+3\s+6\s+12", printed) and re.search(r"test\s+2\s+4\s+8", printed)
    records = json.loads((out / "data_captions.json").read_text())
    assert len(records) == 14
    with Image.open(out / "imgs" / records[0]["img_path"]) as im:
        assert im.size == (32, 64)
    # Its own folder (marker inside) is regenerated in place with the new parameters.
    assert main([*args[:-1], "2"]) == 0
    assert json.loads((out / "data_captions.json").read_text()) != records
    assert read_marker(out)["seed"] == 2
    foreign = tmp_path / "download"
    foreign.mkdir()
    (foreign / "data_captions.json").write_text("[]")
    assert main([*args[:4], str(foreign), *args[5:]]) == 2
    assert "not made by `tbps synth`" in capsys.readouterr().err
    assert main([*args[:4], str(foreign), *args[5:], "--force"]) == 0
    assert read_marker(foreign)["format"] == "rstpreid"
    assert main(["synth", "--format", "icfg-pedes", "--out", str(tmp_path / "i"), "--val-ids", "3"]) == 2
    assert "no val split" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "rows"), [("upper_colour", (0.22, 0.42)), ("lower_colour", (0.65, 0.85))])
def test_attribute_colours_are_drawn(field, rows):
    """Same photos, only one garment colour changed: the garment region changes colour accordingly."""
    from dataclasses import replace

    from tbps.synth.render import render_photo

    person = replace(person_attributes(0, 1), upper="jacket", lower="trousers", scarf_colour=None, bag=None,
                     bag_colour=None)
    y0, y1 = int(rows[0] * 128), int(rows[1] * 128)

    def mean_red_minus_blue(colour: str) -> float:
        diffs = []
        for k in range(12):
            img = render_photo(replace(person, **{field: colour}), np.random.default_rng([5, k]), (64, 128)).image
            region = np.asarray(img, dtype=np.float32)[y0:y1, 24:40]
            diffs.append(region[..., 0].mean() - region[..., 2].mean())
        return float(np.mean(diffs))

    assert mean_red_minus_blue("red") - mean_red_minus_blue("blue") > 60
