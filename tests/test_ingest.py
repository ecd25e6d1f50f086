"""Ingestion of the three raw annotation formats (docs/method.md#annotation-formats): parsing, fatal errors, counted skips."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tbps.cli import main
from tbps.datasets import REAL_DATASETS
from tbps.errors import UserInputError
from tbps.ingest import annotations as ann

FIXTURES = Path(__file__).parent / "fixtures" / "annotations"
ANNOTATION_FILE = {
    "cuhk-pedes": "reid_raw.json",
    "icfg-pedes": "ICFG_PEDES.json",
    "rstpreid": "data_captions.json",
}
PATH_FIELD = {"cuhk-pedes": "file_path", "icfg-pedes": "file_path", "rstpreid": "img_path"}


def image_size(index: int) -> tuple[int, int]:
    """Distinct size per record, so tests can tell the header was really read."""
    return 16 + index, 40 + 2 * index


def make_raw(root: Path, fmt: str, name: str | None = None) -> Path:
    """Copy a fixture folder and create the tiny images its JSON references."""
    raw = root / (name or fmt)
    raw.mkdir(parents=True)
    source = FIXTURES / fmt / ANNOTATION_FILE[fmt]
    shutil.copy(source, raw / source.name)
    for i, record in enumerate(json.loads(source.read_text())):
        path = raw / "imgs" / record[PATH_FIELD[fmt]]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", image_size(i), (i * 20 % 256, 80, 160)).save(path)
    return raw


def records_of(raw: Path, fmt: str) -> list:
    return json.loads((raw / ANNOTATION_FILE[fmt]).read_text())


def write_records(raw: Path, fmt: str, records) -> None:
    (raw / ANNOTATION_FILE[fmt]).write_text(json.dumps(records, indent=1))


def outputs(tmp_path: Path, tag: str = "out") -> dict[str, Path]:
    d = tmp_path / tag
    return {"out": d / "annotations.parquet", "rejects": d / "rejects.parquet", "summary": d / "summary.json"}


def run(dataset: str, raw: Path, paths: dict[str, Path], **kw) -> dict:
    return ann.prepare(dataset, raw, paths["out"], rejects=paths["rejects"], summary=paths["summary"], **kw)


# --- the three formats -------------------------------------------------------------------------


def test_cuhk_table_contract_and_quirks(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    paths = outputs(tmp_path)
    summary = run("cuhk-pedes", raw, paths)
    table = pq.read_table(paths["out"])
    assert table.schema.names == ann.ANNOTATION_SCHEMA.names
    assert table.schema.types == ann.ANNOTATION_SCHEMA.types
    rows = table.to_pylist()
    source = records_of(raw, "cuhk-pedes")
    assert len(rows) == sum(len(r["captions"]) for r in source) == 19
    assert [r["caption_id"] for r in rows] == list(range(19))
    assert {r["dataset"] for r in rows} == {"cuhk-pedes"}
    # Source order, captions verbatim, the 3-caption image kept whole.
    assert [(r["image_index"], r["caption_index"], r["caption"]) for r in rows] == [
        (i, j, c) for i, rec in enumerate(source) for j, c in enumerate(rec["captions"])
    ]
    assert [r["caption_index"] for r in rows if r["image_index"] == 1] == [0, 1, 2]
    # Train ids by first appearance: ids 2, 1, 2, 3 -> 0, 1, 0, 2; null outside train.
    by_image = {r["image_index"]: r for r in rows}
    assert [by_image[i]["train_id"] for i in range(4)] == [0, 1, 0, 2]
    assert [by_image[i]["person_id"] for i in range(4)] == [2, 1, 2, 3]
    assert all(r["train_id"] is None for r in rows if r["split"] != "train")
    for r in rows:
        assert r["image_path"] == "imgs/" + source[r["image_index"]]["file_path"]
        assert (raw / r["image_path"]).is_file()
        assert (r["width"], r["height"]) == image_size(r["image_index"])
    assert summary["input"]["splits"] == {
        "test": {"ids": 2, "images": 3, "captions": 6},
        "train": {"ids": 3, "images": 4, "captions": 9},
        "val": {"ids": 1, "images": 2, "captions": 4},
    }
    assert summary["input"]["captions_per_image"] == {"2": 8, "3": 1}
    assert summary["rejected"] == {"images": {"total": 0}, "captions": {"total": 0}}
    assert pq.read_table(paths["rejects"]).num_rows == 0
    assert json.loads(paths["summary"].read_text()) == summary


def test_icfg_alternate_file_name_and_ids_from_zero(tmp_path):
    raw = make_raw(tmp_path, "icfg-pedes")
    assert (raw / "ICFG_PEDES.json").is_file() and not (raw / "ICFG-PEDES.json").exists()
    paths = outputs(tmp_path)
    summary = run("icfg-pedes", raw, paths)
    rows = pq.read_table(paths["out"]).to_pylist()
    assert len(rows) == 7 and all(r["caption_index"] == 0 for r in rows)
    assert [r["train_id"] for r in rows] == [0, 0, 1, 2, None, None, None]
    assert [r["person_id"] for r in rows[4:]] == [3500, 3501, 3501]
    assert summary["annotation_file"] == "ICFG_PEDES.json"
    assert set(summary["accepted"]["splits"]) == {"train", "test"}


def test_rstpreid_img_path_and_captions_verbatim(tmp_path):
    raw = make_raw(tmp_path, "rstpreid")
    paths = outputs(tmp_path)
    run("rstpreid", raw, paths)
    rows = pq.read_table(paths["out"]).to_pylist()
    assert rows[0]["caption"] == "The man wears a grey jacket.His trousers are black."
    assert rows[0]["image_path"] == "imgs/0000_c14_0031.jpg"
    assert [r["split"] for r in rows[::2]] == ["train", "train", "train", "val", "test", "test"]
    assert [r["train_id"] for r in rows[::2]] == [0, 0, 1, None, None, None]


def test_published_statistics_mismatch_is_warned(tmp_path, caplog):
    raw = make_raw(tmp_path, "cuhk-pedes")
    with caplog.at_level("INFO", logger="tbps.ingest.annotations"):
        summary = run("cuhk-pedes", raw, outputs(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = "train: 3 ids / 4 images / 9 captions, published 11003 / 34054 / 68126"
    assert any("published statistics" in w and expected in w for w in warnings)
    assert summary["differences_from_published"][0] == expected
    assert len(summary["differences_from_published"]) == 3
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any("train" in m and "published: 11003 / 34054 / 68126" in m for m in info)


def test_synthetic_detects_format_without_published_comparison(tmp_path, caplog):
    raw = make_raw(tmp_path, "icfg-pedes", name="synth")
    paths = outputs(tmp_path)
    with caplog.at_level("INFO"):
        summary = run("synthetic", raw, paths)
    assert summary["format"] == "icfg-pedes" and summary["dataset"] == "synthetic"
    assert summary["published"] is None and summary["differences_from_published"] == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert set(pq.read_table(paths["out"]).column("dataset").to_pylist()) == {"synthetic"}


def test_a_named_synthetic_dataset_is_synthetic_and_keeps_its_key(tmp_path):
    """`synthetic-<name>` (e.g. the probes' synthetic-pretrain) is generated data like `synthetic`."""
    raw = make_raw(tmp_path, "icfg-pedes", name="synth")
    paths = outputs(tmp_path)
    summary = run("synthetic-pretrain", raw, paths)
    assert summary["format"] == "icfg-pedes" and summary["dataset"] == "synthetic-pretrain"
    assert set(pq.read_table(paths["out"]).column("dataset").to_pylist()) == {"synthetic-pretrain"}
    with pytest.raises(UserInputError, match="unknown dataset 'synthetic_x'"):
        run("synthetic_x", raw, outputs(tmp_path / "x"))


def test_synthetic_follows_the_detected_formats_rules(tmp_path):
    raw = make_raw(tmp_path, "icfg-pedes", name="synth")
    recs = records_of(raw, "icfg-pedes")
    recs[4]["split"] = "val"
    write_records(raw, "icfg-pedes", recs)
    with pytest.raises(UserInputError, match="no val split"):
        run("synthetic", raw, outputs(tmp_path))


@pytest.mark.parametrize("extra", ["data_captions.json", "ICFG-PEDES.json"])
def test_ambiguous_annotation_files_are_fatal(tmp_path, extra):
    raw = make_raw(tmp_path, "icfg-pedes")
    (raw / extra).write_text("[]")
    dataset = "synthetic" if extra == "data_captions.json" else "icfg-pedes"
    with pytest.raises(UserInputError, match="several annotation files") as e:
        run(dataset, raw, outputs(tmp_path))
    assert extra in str(e.value) and "Fix:" in str(e.value)


def test_deterministic_bytes_across_runs_and_folders(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    recs = records_of(raw, "cuhk-pedes")
    recs[0]["captions"][1] = " "  # also exercise the rejects table
    write_records(raw, "cuhk-pedes", recs)
    a, b, c = outputs(tmp_path, "a"), outputs(tmp_path, "b"), outputs(tmp_path, "c")
    run("cuhk-pedes", raw, a)
    run("cuhk-pedes", raw, b)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(raw, moved)
    run("cuhk-pedes", moved, c)
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes() == c[key].read_bytes(), key


# --- counted skips -----------------------------------------------------------------------------


def test_counted_skips_are_rejected_with_reasons_and_counts_add_up(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    recs = records_of(raw, "cuhk-pedes")
    (raw / "imgs" / recs[3]["file_path"]).unlink()  # missing_image
    (raw / "imgs" / recs[5]["file_path"]).write_bytes(b"not an image at all")  # unreadable_image
    recs[1]["captions"][1] = "   "  # empty_caption, image kept
    recs[7]["captions"] = ["", " \t"]  # 2 x empty_caption + no_captions
    recs[8]["captions"] = []  # no_captions with nothing to drop
    write_records(raw, "cuhk-pedes", recs)
    paths = outputs(tmp_path)
    summary = run("cuhk-pedes", raw, paths, max_reject_fraction=0.5)

    rejects = pq.read_table(paths["rejects"])
    assert rejects.schema.types == ann.REJECT_SCHEMA.types
    got = [(r["record_index"], r["caption_index"], r["reason"]) for r in rejects.to_pylist()]
    assert got == [
        (1, 1, "empty_caption"),
        (3, None, "missing_image"),
        (5, None, "unreadable_image"),
        (7, 0, "empty_caption"),
        (7, 1, "empty_caption"),
        (7, None, "no_captions"),
        (8, None, "no_captions"),
    ]
    assert set(rejects.column("source_file").to_pylist()) == {"reid_raw.json"}
    assert recs[3]["file_path"] in rejects.column("detail")[1].as_py()

    assert summary["input"] == summary["input"] | {"images": 9, "captions": 17}
    assert summary["rejected"]["images"] == {
        "total": 4,
        "missing_image": 1,
        "unreadable_image": 1,
        "no_captions": 2,
    }
    assert summary["rejected"]["captions"] == {
        "total": 7,
        "missing_image": 2,
        "unreadable_image": 2,
        "empty_caption": 3,
    }
    assert summary["accepted"] == summary["accepted"] | {"images": 5, "captions": 10}
    for kind in ("images", "captions"):
        assert summary["accepted"][kind] + summary["rejected"][kind]["total"] == summary["input"][kind]

    rows = pq.read_table(paths["out"]).to_pylist()
    assert len(rows) == 10
    assert {r["image_index"] for r in rows} == {0, 1, 2, 4, 6}
    assert [r["caption_index"] for r in rows if r["image_index"] == 1] == [0, 2]
    assert all(r["caption"].strip() for r in rows)
    # Train id 3 lost its only image: remaining train ids stay contiguous.
    assert sorted({r["train_id"] for r in rows if r["split"] == "train"}) == [0, 1]


def test_too_many_rejected_images_fail_without_output(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    recs = records_of(raw, "cuhk-pedes")
    (raw / "imgs" / recs[3]["file_path"]).unlink()
    paths = outputs(tmp_path)
    with pytest.raises(UserInputError) as e:
        run("cuhk-pedes", raw, paths)  # default fraction 0.01 < 1/9
    msg = str(e.value)
    assert "reid_raw.json" in msg and "1 of 9 images" in msg and "record 3" in msg
    assert "--max-reject-fraction" in msg and "tbps check-raw" in msg
    assert not any(p.exists() for p in paths.values())
    run("cuhk-pedes", raw, paths, max_reject_fraction=0.2)
    assert paths["out"].is_file()


def test_missing_images_folder_is_fatal(tmp_path):
    raw = make_raw(tmp_path, "rstpreid")
    shutil.rmtree(raw / "imgs")
    paths = outputs(tmp_path)
    with pytest.raises(UserInputError, match="images folder does not exist") as e:
        run("rstpreid", raw, paths)
    assert "Fix:" in str(e.value) and "data_captions.json" in str(e.value)
    assert not any(p.exists() for p in paths.values())


# --- fatal input problems ----------------------------------------------------------------------


def _set(i, key, value):
    def mutate(recs):
        recs[i][key] = value
        return recs

    return mutate


def _delete(i, key):
    def mutate(recs):
        del recs[i][key]
        return recs

    return mutate


def _replace_record(i, value):
    def mutate(recs):
        recs[i] = value
        return recs

    return mutate


def _renumber(offset):
    def mutate(recs):
        for r in recs:
            r["id"] += offset
        return recs

    return mutate


def _rename_field(old, new):
    def mutate(recs):
        for r in recs:
            r[new] = r.pop(old)
        return recs

    return mutate


# (format, mutation, record index or None, text in the problem, text in the fix)
FATAL_CASES = {
    "top_level_object": ("cuhk-pedes", lambda recs: {"images": recs}, None, "not a list", "JSON list"),
    "empty_list": ("rstpreid", lambda recs: [], None, "no image records", "re-download"),
    "record_not_object": (
        "cuhk-pedes",
        _replace_record(3, "CUHK01/0001001.png"),
        3,
        "not an object",
        "object",
    ),
    "missing_captions": (
        "cuhk-pedes",
        _delete(2, "captions"),
        2,
        "'captions' is missing",
        "add the 'captions'",
    ),
    "missing_split": ("icfg-pedes", _delete(5, "split"), 5, "'split' is missing", "add the 'split'"),
    "id_bool": ("cuhk-pedes", _set(1, "id", True), 1, "boolean", "JSON integer"),
    "id_string": ("cuhk-pedes", _set(1, "id", "1"), 1, "a string", "JSON integer"),
    "id_float": ("rstpreid", _set(2, "id", 1.0), 2, "a number", "JSON integer"),
    "captions_string": (
        "cuhk-pedes",
        _set(4, "captions", "An old man."),
        4,
        "not a list of strings",
        "captions",
    ),
    "caption_not_string": (
        "rstpreid",
        _set(4, "captions", ["A lady.", 5]),
        4,
        "'captions'[1]",
        "JSON string",
    ),
    "path_not_string": (
        "cuhk-pedes",
        _set(0, "file_path", 7),
        0,
        "'file_path' is an integer",
        "relative to imgs/",
    ),
    "split_not_string": ("cuhk-pedes", _set(0, "split", None), 0, "'split' is null", "'train'"),
    "unknown_split": ("cuhk-pedes", _set(4, "split", "valid"), 4, "unknown split 'valid'", "write 'val'"),
    "icfg_val_split": ("icfg-pedes", _set(4, "split", "val"), 4, "unknown split 'val'", "no val split"),
    "cuhk_id_zero": ("cuhk-pedes", _set(6, "id", 0), 6, "1-based", "original annotation file"),
    "icfg_negative_id": ("icfg-pedes", _set(5, "id", -1), 5, "non-negative", "original annotation file"),
    "train_ids_gap": ("cuhk-pedes", _set(3, "id", 5), 3, "jump from 2 to 5", "contiguous from 1"),
    "train_ids_not_from_zero": (
        "rstpreid",
        _renumber(1),
        0,
        "smallest train id is 1, not 0",
        "contiguous from 0",
    ),
    "dotdot_path": (
        "rstpreid",
        _set(0, "img_path", "../secret.jpg"),
        0,
        "'img_path' is '../secret.jpg', which has a '..' component",
        "relative to the imgs/",
    ),
    "absolute_path": (
        "icfg-pedes",
        _set(1, "file_path", "/etc/passwd"),
        1,
        "'file_path' is '/etc/passwd', an absolute path",
        "relative to the imgs/",
    ),
    "empty_path": (
        "cuhk-pedes",
        _set(2, "file_path", " "),
        2,
        "'file_path' is empty",
        "relative to the imgs/",
    ),
    "backslash_path": ("cuhk-pedes", _set(2, "file_path", "CUHK03\\2_2.png"), 2, "backslash", "relative to"),
    "duplicate_path": (
        "cuhk-pedes",
        _set(5, "file_path", "train_query/p4_s1.jpg"),
        5,
        "already used by record 4",
        "remove the duplicate",
    ),
    "wrong_format": (
        "rstpreid",
        _rename_field("img_path", "file_path"),
        0,
        "'img_path' is missing",
        "is this really a RSTPReid file",
    ),
}


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_fatal_record_problems(tmp_path, case):
    fmt, mutate, record, problem, fix = FATAL_CASES[case]
    raw = make_raw(tmp_path, fmt)
    write_records(raw, fmt, mutate(records_of(raw, fmt)))
    paths = outputs(tmp_path)
    with pytest.raises(UserInputError) as e:
        run(fmt, raw, paths)
    msg = str(e.value)
    assert ANNOTATION_FILE[fmt] in msg
    if record is not None:
        assert f"record {record}:" in msg
    assert problem in msg
    assert fix in msg.split("Fix:", 1)[1]
    out_dir = paths["out"].parent
    assert not out_dir.exists() or not list(out_dir.iterdir())  # no outputs, no temporary files


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'[\n {"split": "train", "id": 1,\n', "invalid JSON at line 3, column 1"),
        (b'[{"split": "train"}] trailing', "invalid JSON at line 1, column 22"),
        (b"\xff\xfe[]", "not UTF-8"),
    ],
)
def test_unparsable_file(tmp_path, content, expected):
    raw = make_raw(tmp_path, "cuhk-pedes")
    (raw / "reid_raw.json").write_bytes(content)
    paths = outputs(tmp_path)
    with pytest.raises(UserInputError) as e:
        run("cuhk-pedes", raw, paths)
    assert str(e.value).startswith(str(raw / "reid_raw.json"))
    assert expected in str(e.value) and "Fix:" in str(e.value)
    assert not any(p.exists() for p in paths.values())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_annotation_file(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    path = raw / "reid_raw.json"
    path.chmod(0)
    try:
        with pytest.raises(UserInputError, match="reid_raw.json: cannot read the file"):
            run("cuhk-pedes", raw, outputs(tmp_path))
    finally:
        path.chmod(0o644)


def test_duplicate_json_key_is_fatal(tmp_path):
    raw = make_raw(tmp_path, "rstpreid")
    text = (raw / "data_captions.json").read_text()
    text = text.replace('{"id": 1, ', '{"id": 1, "id": 2, ', 1)
    (raw / "data_captions.json").write_text(text)
    with pytest.raises(UserInputError, match="record 2: field 'id' appears more than once"):
        run("rstpreid", raw, outputs(tmp_path))


def test_all_problems_reported_together(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    recs = records_of(raw, "cuhk-pedes")
    base = recs[6]
    recs += [dict(base, file_path=f"test_query/x{i}.jpg", split="valid") for i in range(25)]
    recs[0]["id"] = "2"
    write_records(raw, "cuhk-pedes", recs)
    with pytest.raises(UserInputError) as e:
        run("cuhk-pedes", raw, outputs(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{raw / 'reid_raw.json'}: 26 problems")
    assert "record 0: 'id' is a string" in msg and "record 9: unknown split 'valid'" in msg
    assert msg.count("Fix:") == 20 and "and 6 more" in msg


def test_invalid_processed_tokens_are_ignored(tmp_path):
    raw = make_raw(tmp_path, "cuhk-pedes")
    assert records_of(raw, "cuhk-pedes")[2]["processed_tokens"] is None
    run("cuhk-pedes", raw, outputs(tmp_path))


def test_max_reject_fraction_outside_0_1_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="between 0 and 1"):
        run("cuhk-pedes", make_raw(tmp_path, "cuhk-pedes"), outputs(tmp_path), max_reject_fraction=1.5)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_prepare_success_and_user_error(tmp_path, capsys):
    raw = make_raw(tmp_path, "rstpreid")
    paths = outputs(tmp_path)
    argv = [
        "prepare",
        "--dataset",
        "rstpreid",
        "--raw",
        str(raw),
        "--out",
        str(paths["out"]),
        "--rejects",
        str(paths["rejects"]),
        "--summary",
        str(paths["summary"]),
    ]
    assert main(argv) == 0
    assert all(p.is_file() for p in paths.values())

    recs = records_of(raw, "rstpreid")
    recs[3]["split"] = "validation"
    write_records(raw, "rstpreid", recs)
    bad = outputs(tmp_path, "bad")
    argv = ["prepare", "--dataset", "rstpreid", "--raw", str(raw), "--out", str(bad["out"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tbps prepare: error:" in err and "data_captions.json, record 3" in err and "write 'val'" in err
    assert "Traceback" not in err and not bad["out"].exists()


def test_cli_rejects_out_of_range_fraction(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "prepare",
                "--dataset",
                "rstpreid",
                "--raw",
                str(tmp_path),
                "--out",
                str(tmp_path / "a.parquet"),
                "--max-reject-fraction",
                "2",
            ]
        )
    assert e.value.code == 2 and "not in [0, 1]" in capsys.readouterr().err


def test_cli_default_fraction_matches_library():
    from tbps.cli import prepare as cli_prepare

    assert cli_prepare.DEFAULT_MAX_REJECT_FRACTION == ann.DEFAULT_MAX_REJECT_FRACTION


@pytest.mark.parametrize("dataset", sorted(REAL_DATASETS))
def test_check_raw_missing_folder_says_where_to_get_it(tmp_path, capsys, dataset):
    raw = tmp_path / "resources" / "raw" / dataset
    assert main(["check-raw", "--dataset", dataset, "--raw", str(raw)]) == 2
    err = capsys.readouterr().err
    info = REAL_DATASETS[dataset]
    assert "does not exist" in err
    assert info.download in err  # where to get it
    assert (
        f"Put it at {raw} so that {raw} holds {info.annotation_files[0]} and imgs/" in err
    )  # where to put it
    assert f"tbps check-raw --dataset {dataset} --raw {raw}" in err  # how to check it


def test_check_raw_folder_without_annotation_file(tmp_path, capsys):
    raw = tmp_path / "icfg"
    (raw / "imgs").mkdir(parents=True)
    assert main(["check-raw", "--dataset", "icfg-pedes", "--raw", str(raw)]) == 2
    err = capsys.readouterr().err
    assert "ICFG-PEDES.json / ICFG_PEDES.json" in err and "SSAN" in err


def test_check_raw_synthetic_ok_and_missing_images(tmp_path, capsys):
    raw = make_raw(tmp_path, "rstpreid", name="synth")
    assert main(["check-raw", "--dataset", "synthetic", "--raw", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "RESULT: OK" in out and "6 image records, 12 captions" in out
    (raw / "imgs" / "0001_c3_0007.jpg").unlink()
    assert main(["check-raw", "--dataset", "synthetic", "--raw", str(raw)]) == 1
    out = capsys.readouterr().out
    assert "5 of 6 referenced images exist; missing: imgs/0001_c3_0007.jpg" in out
    assert "RESULT: 1 problem(s): 1 of 6 referenced images are missing" in out


def test_check_raw_real_dataset_compares_with_published(tmp_path, capsys):
    raw = make_raw(tmp_path, "cuhk-pedes")
    assert main(["check-raw", "--dataset", "cuhk-pedes", "--raw", str(raw)]) == 1
    out = capsys.readouterr().out
    assert "all 9 referenced images exist" in out
    assert "11003/34054/68126" in out and "counts differ from the published CUHK-PEDES release" in out


def test_check_raw_bad_json_exits_2(tmp_path, capsys):
    raw = make_raw(tmp_path, "cuhk-pedes")
    (raw / "reid_raw.json").write_text("[{")
    assert main(["check-raw", "--dataset", "cuhk-pedes", "--raw", str(raw)]) == 2
    assert "invalid JSON at line 1" in capsys.readouterr().err


def test_unreadable_annotation_path_names_the_file(tmp_path):
    from tbps.ingest.formats import read_json

    folder = tmp_path / "reid_raw.json"
    folder.mkdir()  # reading a folder fails even for root, unlike a chmod 0 file
    with pytest.raises(UserInputError, match=r"reid_raw.json: cannot read the file .* Fix: check"):
        read_json(folder)


def test_synthetic_folder_without_annotation_file(tmp_path):
    (tmp_path / "synth" / "imgs").mkdir(parents=True)
    with pytest.raises(UserInputError) as e:
        run("synthetic", tmp_path / "synth", outputs(tmp_path))
    msg = str(e.value)
    assert "no annotation file found" in msg and "data_captions.json" in msg and "tbps synth" in msg


def test_unknown_dataset_key_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="unknown dataset 'market'"):
        run("market", tmp_path, outputs(tmp_path))
