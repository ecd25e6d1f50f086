"""The bad-input matrix: hostile values, damaged shards, foreign checkpoints, odd images and faults.

Every case is made by the test itself and must end in a clear error (exit status 2, a message
naming the file and the fix, no traceback) or a counted skip, never in a crash or a silent
wrong result. Sections follow docs/robustness.md.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from tbps import checkpoint, fileio
from tbps.cli import main
from tbps.config import load_experiment, parse_dotted
from tbps.errors import UserInputError
from tbps.fileio import sha256_file, write_bytes_atomic
from tbps.image_decode import decode_image
from tbps.ingest import annotations as ann
from tbps.model import build_model
from tbps.shards.writer import ImageEncoding, write_shard, write_split

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "config" / "experiments"
TINY = EXPERIMENTS / "tiny_tbps_clip_simplified.yaml"
QUERY = "a woman in a red coat"


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run `tbps ARGS` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def error_line(err: str, stage: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"tbps {stage}: error: ")]
    assert len(lines) == 1, err
    return lines[0][len(f"tbps {stage}: error: "):]


# ----------------------------------------------------------------------------- shards (issue classes 3, 4)


def vouch(manifest: Path, source: dict) -> None:
    """Write a manifest that vouches for the shards now in its folder (as a crafted one would)."""
    entries = []
    for entry in source["shards"]:
        shard = manifest.parent / entry["name"]
        entries.append({**entry, "bytes": shard.stat().st_size, "sha256": sha256_file(shard)})
    manifest.write_text(json.dumps({**source, "shards": entries}))


def split_of_one_shard(tmp_path: Path, manifest: Path, index: int) -> tuple[Path, Path]:
    """A copy of one shard of a split with a manifest listing only it: (manifest, shard)."""
    source = json.loads(manifest.read_text())
    entry = source["shards"][index]
    folder = tmp_path / "split"
    folder.mkdir()
    shutil.copy2(manifest.parent / entry["name"], folder / entry["name"])
    shutil.copy2(manifest.parent / "plan.json", folder / "plan.json")
    out = folder / "manifest.json"
    out.write_text(json.dumps({**source, "shards": [entry], "num_shards": 1, "num_samples": entry["samples"]}))
    return out, folder / entry["name"]


def members(shard: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def write_members(shard: Path, items: list[tuple[str, bytes]]) -> None:
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def damage(kind: str, shard: Path) -> str:
    """Damage ``shard`` in place; returns the words the error must contain."""
    items = members(shard)
    if kind == "truncated mid-member":
        with tarfile.open(shard) as tar:
            biggest = max(tar.getmembers(), key=lambda m: m.size)
        shard.write_bytes(shard.read_bytes()[: biggest.offset_data + biggest.size // 2])
        return f"member {biggest.name!r} is cut off"
    if kind == "truncated between members":
        with tarfile.open(shard) as tar:
            last = tar.getmembers()[-1]
        shard.write_bytes(shard.read_bytes()[: last.offset])
        return "without the end-of-archive marker"
    if kind == "not a tar":
        shard.write_bytes(b"this is not a tar file\n" * 100)
        return "not a tar file"
    if kind == "empty file":
        shard.write_bytes(b"")
        return "the file is empty"
    if kind == "sample without json":
        write_members(shard, [(n, d) for n, d in items if n != items[1][0] or not n.endswith(".json")])
        return "has no json member"
    if kind == "garbage image members":
        write_members(shard, [(n, b"\x89PNG not really" if n.endswith((".jpg", ".png")) else d) for n, d in items])
        return "the image member cannot be decoded (not an image in a format Pillow can read)"
    if kind == "../ member name":
        write_members(shard, [("../" + items[0][0], items[0][1]), *items[1:]])
        return "is a path, not a plain file name"
    if kind == "json that is not an object":
        write_members(shard, [(n, b"[1, 2]" if n.endswith(".json") else d) for n, d in items])
        return "holds list, not an object"
    raise AssertionError(kind)


def final_checkpoint(path: Path, **changes) -> Path:
    """A final.pt as `tbps train` writes it (tiny model, untrained weights: the format is what matters)."""
    cfg = load_experiment(TINY)
    model = build_model(cfg.model, with_simclr_head=False).model
    payload = {"model": model.state_dict(), "config": cfg.to_dict(), "config_sha256": cfg.sha256(), "epochs": 1,
               "global_step": 3, "seed": cfg.train.seed, **changes}
    checkpoint.save(path, payload)
    return path


@pytest.fixture(scope="module")
def final_pt(tmp_path_factory) -> Path:
    return final_checkpoint(tmp_path_factory.mktemp("ckpt") / "final.pt")


def stage_errors(capsys, tmp_path: Path, manifest: Path, final: Path, workers: str = "0") -> dict[str, str]:
    """The error message of train, evaluate and search reading ``manifest``."""
    out = {}
    code, err = cli(capsys, "train", "--experiment", TINY, "--train", manifest, "--out", tmp_path / "run",
                    "--set", "data.batch_size=4", "--set", f"data.num_workers={workers}", "--set", "optim.epochs=1",
                    "--device", "cpu")
    assert code == 2, err
    out["train"] = error_line(err, "train")
    code, err = cli(capsys, "evaluate", "--checkpoint", final, "--shards", manifest, "--out", tmp_path / "m.parquet",
                    "--dataset", "synthetic", "--experiment", "x", "--workers", workers, "--device", "cpu")
    assert code == 2, err
    out["evaluate"] = error_line(err, "evaluate")
    code, err = cli(capsys, "search", "--checkpoint", final, "--gallery", manifest, "--workers", workers,
                    "--device", "cpu", QUERY)
    assert code == 2, err
    out["search"] = error_line(err, "search")
    assert not (tmp_path / "m.parquet").exists() and not (tmp_path / "run" / "final.pt").exists()
    return out


@pytest.mark.parametrize("kind", ["truncated mid-member", "truncated between members", "not a tar", "empty file", "sample without json",
                                  "garbage image members", "../ member name", "json that is not an object"])
def test_damaged_shard_gets_one_message_in_train_evaluate_and_search(kind, synthetic_shards, final_pt, tmp_path,
                                                                     capsys):
    """Damage the manifest vouches for (a crafted shard): the one reader refuses it with the same words."""
    manifest, shard = split_of_one_shard(tmp_path, synthetic_shards["train"], 4)
    expected = damage(kind, shard)
    vouch(manifest, json.loads(manifest.read_text()))
    messages = stage_errors(capsys, tmp_path, manifest, final_pt, workers="2" if "garbage" in kind else "0")
    for stage, message in messages.items():
        assert message.startswith(str(shard)) and expected in message, (stage, message)
        assert f"snakemake --cores 1 --force {shard}" in message, message
    # Training meets a garbage image in whichever sample it draws first: compare without the key.
    same = {re.sub(r"sample \S+:", "sample K:", m) for m in messages.values()}
    assert len(same) == 1, messages


@pytest.mark.parametrize("kind", ["replaced by the val split's shard", "one byte changed", "missing"])
def test_shard_that_differs_from_its_manifest_is_refused_everywhere(kind, synthetic_shards, final_pt, tmp_path,
                                                                    capsys):
    """The manifest is untouched: whatever stands in the shard's place is not the data its hash stands for."""
    manifest, shard = split_of_one_shard(tmp_path, synthetic_shards["train"], 4)
    if kind == "missing":
        shard.unlink()
        expected = f"{shard}: missing"
    elif kind == "one byte changed":
        blob = bytearray(shard.read_bytes())
        blob[len(blob) // 3] ^= 0xFF
        shard.write_bytes(bytes(blob))
        expected = f"{shard}: sha256 differs from the manifest"
    else:
        val_shard = synthetic_shards["val"].parent / "shard-000000.tar"
        shard.write_bytes(val_shard.read_bytes())
        expected = f"{shard}: {val_shard.stat().st_size} bytes, manifest says"
    messages = stage_errors(capsys, tmp_path, manifest, final_pt)
    for message in messages.values():
        assert message.startswith(expected) and "snakemake --cores 1 --force" in message, message
    assert len(set(messages.values())) == 1


def test_replaced_test_shard_same_size_gives_no_metrics(synthetic_shards, final_pt, tmp_path, capsys):
    """The issue's case, with the size kept equal so that only the sha256 can tell."""
    folder = tmp_path / "test"
    shutil.copytree(synthetic_shards["test"].parent, folder)
    shard = folder / "shard-000000.tar"
    other = synthetic_shards["val"].parent / "shard-000000.tar"
    data = other.read_bytes()
    size = shard.stat().st_size
    shard.write_bytes(data[:size] + b"\0" * (size - len(data)))  # same size as the manifest says
    code, err = cli(capsys, "evaluate", "--checkpoint", final_pt, "--shards", folder / "manifest.json", "--out",
                    tmp_path / "m.parquet", "--dataset", "synthetic", "--experiment", "x", "--workers", "0")
    assert code == 2 and "sha256 differs from the manifest" in err and "data_sha256" in err
    assert not (tmp_path / "m.parquet").exists()


def test_shard_hashes_are_computed_once_per_unchanged_file(synthetic_shards, tmp_path, monkeypatch):
    from tbps.shards import reader

    folder = tmp_path / "val"
    shutil.copytree(synthetic_shards["val"].parent, folder)
    shard = folder / "shard-000000.tar"
    an_hour_ago = time.time() - 3600
    os.utime(shard, (an_hour_ago, an_hour_ago))
    calls = []
    real = reader.sha256_file
    monkeypatch.setattr(reader, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(reader, "_HASHES", {})
    reader.verified_shard_paths(folder / "manifest.json")
    reader.verified_shard_paths(folder / "manifest.json")
    assert len(calls) == 1
    # A file checked right after it changed, then changed again within the same clock tick (same
    # size and mtime): the remembered hash must not hide the second change.
    os.utime(shard)
    tick = shard.stat().st_mtime_ns
    reader.verified_shard_paths(folder / "manifest.json")
    with open(shard, "r+b") as f:
        f.seek(2000)
        byte = f.read(1)
        f.seek(2000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(shard, ns=(tick, tick))
    with pytest.raises(UserInputError, match="sha256 differs from the manifest"):
        reader.verified_shard_paths(folder / "manifest.json")


# ----------------------------------------------------------------------------- checkpoints (class 5)


def _foreign(kind: str, path: Path, final_pt: Path) -> str:
    state = torch.load(final_pt, weights_only=True)
    if kind == "bare state dict":
        torch.save(state["model"], path)
        return "a bare state dict of"
    if kind == "dict without config":
        torch.save({k: v for k, v in state.items() if k != "config"}, path)
        return "also holds 'config'"
    if kind == "NaN weights":
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name] = torch.full_like(state["model"][name], float("nan"))
        torch.save(state, path)
        return "hold NaN or infinite values"
    if kind == "not a torch file":
        path.write_text("epochs: 5\n")
        return "not a PyTorch file"
    if kind == "empty file":
        path.write_bytes(b"")
        return "an empty file"
    if kind == "pickled code":
        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {path.parent / 'PWNED'}",))

        path.write_bytes(pickle.dumps(Payload()))
        return "cannot load the checkpoint safely"
    if kind == "untrained (0 epochs)":
        torch.save({**state, "epochs": 0, "global_step": 0}, path)
        return "was never trained"
    if kind == "a list":
        torch.save([1, 2], path)
        return "holds a list"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bare state dict", "dict without config", "NaN weights", "not a torch file",
                                  "empty file", "pickled code", "untrained (0 epochs)", "a list"])
def test_foreign_checkpoint_is_refused_by_evaluate_and_search(kind, synthetic_shards, final_pt, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    expected = _foreign(kind, bad, final_pt)
    for stage, args in (("evaluate", ["--shards", synthetic_shards["val"], "--out", tmp_path / "m.parquet",
                                      "--dataset", "synthetic", "--experiment", "x"]),
                        ("search", ["--gallery", synthetic_shards["val"], QUERY])):
        code, err = cli(capsys, stage, "--checkpoint", bad, "--workers", "0", *args)
        message = error_line(err, stage)
        assert code == 2 and message.startswith(str(bad)) and expected in message, message
    if kind == "bare state dict":
        assert "model.pretrained: PATH" in message and "--zero-shot" in message
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("kind", ["final.pt instead of last.pt", "bare state dict", "NaN weights"])
def test_resume_from_a_foreign_last_pt_is_refused(kind, synthetic_shards, final_pt, tmp_path, capsys):
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    manifest, _ = split_of_one_shard(tmp_path, synthetic_shards["train"], 4)
    if kind == "final.pt instead of last.pt":
        shutil.copy(final_pt, last)
        expected = "a resumable checkpoint (checkpoints/last.pt of `tbps train`) also holds 'optimizer'"
    elif kind == "bare state dict":
        expected = _foreign(kind, last, final_pt)
    else:
        state = torch.load(final_pt, weights_only=True)
        name = next(iter(state["model"]))
        state["model"][name] = torch.full_like(state["model"][name], float("inf"))
        cfg = load_experiment(TINY, parse_dotted(["data.batch_size=4", "optim.epochs=1"]))
        fake = {f: 0 for f in checkpoint.RESUME_FIELDS}
        torch.save({**fake, "model": state["model"], "config": cfg.to_dict(), "resume_sha256": cfg.resume_sha256(),
                    "train_data_sha256": sha256_file(manifest)}, last)
        expected = "hold NaN or infinite values"
    before = last.read_bytes()
    code, err = cli(capsys, "train", "--experiment", TINY, "--train", manifest, "--out", tmp_path / "run",
                    "--set", "data.batch_size=4", "--set", "optim.epochs=1", "--resume", "--device", "cpu")
    message = error_line(err, "train")
    assert code == 2 and message.startswith(str(last)) and expected in message, message
    assert last.read_bytes() == before  # someone's file is left as it was


def test_metrics_carry_the_training_config_hash(synthetic_shards, tmp_path, capsys):
    """A run trained from pretrained weights: final.pt's config names them, evaluation clears them."""
    cfg = load_experiment(TINY, parse_dotted(["model.pretrained=/weights/of/the/run.pt"]))
    final = final_checkpoint(tmp_path / "final.pt", config=cfg.to_dict(), config_sha256=cfg.sha256())
    code, err = cli(capsys, "evaluate", "--checkpoint", final, "--shards", synthetic_shards["val"], "--out",
                    tmp_path / "m.parquet", "--dataset", "synthetic", "--experiment", "x", "--workers", "0")
    assert code == 0, err
    assert set(pl.read_parquet(tmp_path / "m.parquet")["config_sha256"]) == {cfg.sha256()}
    cfg.model.pretrained = None
    assert cfg.sha256() != load_experiment(TINY, parse_dotted(["model.pretrained=/x"])).sha256()


# ----------------------------------------------------------------------------- settings (class 6)


@pytest.mark.parametrize("value, expected", [
    ("optim.lr=[1,", "is not valid YAML"),
    ("optim.lr={a", "is not valid YAML"),
    ("optim.lr=*alias", "is not valid YAML"),
    ("optim.lr=!!python/object/apply:os.system [ls]", "is not valid YAML"),
    ("optim.epochs=0", "optim.epochs: 0 is not allowed"),
    ("optim.epochs=-3", "optim.epochs: -3 is not allowed"),
    ("optim.lr=.nan", "expected a finite number"),
    ("optim.lr=1e12", "is not allowed"),
    ("data.batch_size=0", "is not allowed"),
    ("train.precision=fp8", "Fix: use one of 'auto', 'fp32', 'bf16', 'fp16'"),
    ("data.num_workers=-1", "is not allowed"),
    ("train.checkpoint_every_steps=0", "is not allowed"),
    ("train.log_every_steps=0", "is not allowed"),
    ("data.max_words=0", "is not allowed"),
    ("data.word_deletion_prob=1.5", "is not allowed"),
    ("loss.mvs_mode=both", "Fix: use one of 'average', 'add'"),
    ("optim..lr=1", "has an empty part"),
    ("optim.lr", "expected KEY=VALUE"),
])
def test_bad_setting_stops_train_before_anything_runs(value, expected, tmp_path, capsys):
    code, err = cli(capsys, "train", "--experiment", TINY, "--train", tmp_path / "none.json", "--out", tmp_path / "o",
                    "--set", value)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "o").exists()


def test_conflicting_overrides_and_duplicate_yaml_keys_are_errors(tmp_path):
    with pytest.raises(UserInputError, match="optim was already set to a value"):
        parse_dotted(["optim=1", "optim.lr=2"])
    with pytest.raises(UserInputError, match="already has settings from another --set"):
        parse_dotted(["optim.lr=2", "optim={}"])
    experiment = tmp_path / "dup.yaml"
    experiment.write_text("optim: {lr: 0.1}\noptim: {lr: 0.2}\n")
    with pytest.raises(UserInputError, match="key 'optim' appears twice"):
        load_experiment(experiment)
    experiment.write_bytes(b"optim:\n  lr: \xff\n")
    with pytest.raises(UserInputError, match="not UTF-8"):
        load_experiment(experiment)
    experiment.write_text("inherit: 3\n")
    with pytest.raises(UserInputError, match="'inherit' is 3"):
        load_experiment(experiment)


# ----------------------------------------------------------------------------- ingestion (class 7)


def raw_folder(root: Path, records: list[dict] | str) -> Path:
    """A CUHK-PEDES-format folder: the records (or raw JSON text) and a small image per record."""
    raw = root / "raw"
    (raw / "imgs").mkdir(parents=True)
    text = records if isinstance(records, str) else json.dumps(records)
    (raw / "reid_raw.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    for i in range(len(good_records())):
        Image.new("RGB", (16, 40), (i * 40, 90, 150)).save(raw / "imgs" / f"{i}.jpg")
    return raw


def good_records() -> list[dict]:
    return [{"split": s, "captions": [f"a person in a red coat number {i}", "a second caption"],
             "file_path": f"{i}.jpg", "id": i + 1} for i, s in enumerate(["train"] * 4 + ["val", "test"])]


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace('"id": 4', '"id": 9223372036854775808'), "record 3: 'id' is 9223372036854775808, beyond"),
    (lambda t: t.replace('"id": 4', '"id": 1' + "0" * 5000), "record 3: 'id' is 1000"),
    (lambda t: t.replace('"id": 4', '"id": NaN'), "record 3: 'id' is a number (NaN), not an integer"),
    (lambda t: t.replace('"id": 4', '"id": 1e999'), "record 3: 'id' is a number (Infinity), not an integer"),
    (lambda t: t.replace('"a second caption"]', 'Infinity]', 1), "record 0: 'captions'[1] is a number (Infinity)"),
    (lambda t: t.replace('"a second caption"]', '"bad \\ud800"]', 1), "record 0: 'captions'[1] contains a lone surrogate"),
    (lambda t: t.replace('"0.jpg"', '"\\udcff.jpg"'), "record 0: 'file_path' contains a lone surrogate"),
], ids=["id beyond int64", "id of 5000 digits", "NaN id", "1e999 id", "Infinity caption", "surrogate in caption",
        "surrogate in path"])
def test_json_python_accepts_but_tables_cannot_hold_is_a_per_record_error(edit, expected, tmp_path, capsys):
    raw = raw_folder(tmp_path, edit(json.dumps(good_records())))
    for stage, args in (("prepare", ["--out", tmp_path / "a.parquet"]), ("check-raw", [])):
        code, err = cli(capsys, stage, "--dataset", "cuhk-pedes", "--raw", raw, *args)
        assert code == 2 and expected in err, err
    assert not (tmp_path / "a.parquet").exists()


def test_caption_empty_after_cleaning_is_a_counted_skip_not_a_query(tmp_path, capsys):
    records = good_records()
    records[3]["captions"] = ["... !!", "a woman with a bag"]
    records[2]["captions"] = ['"()"', "   "]
    raw = raw_folder(tmp_path, records)
    summary = ann.prepare("cuhk-pedes", raw, tmp_path / "a.parquet", rejects=tmp_path / "r.parquet",
                          max_reject_fraction=1.0)
    table = pl.read_parquet(tmp_path / "a.parquet")
    assert "... !!" not in table["caption"].to_list() and 2 not in table["image_index"].to_list()
    assert summary["rejected"]["captions"] == {"total": 3, "empty_after_cleaning": 2, "empty_caption": 1}
    assert summary["rejected"]["images"] == {"total": 1, "no_captions": 1}
    reasons = pl.read_parquet(tmp_path / "r.parquet")["reason"].to_list()
    assert sorted(reasons) == ["empty_after_cleaning", "empty_after_cleaning", "empty_caption", "no_captions"]
    capsys.readouterr()
    main(["check-raw", "--dataset", "cuhk-pedes", "--raw", str(raw)])
    assert "1 empty captions and 2 with nothing left after cleaning" in capsys.readouterr().out


@pytest.mark.parametrize("query", ["", "   ", "...", "!!! ..."])
def test_search_for_an_empty_description_is_an_error(query, synthetic_shards, final_pt, capsys):
    code, err = cli(capsys, "search", "--checkpoint", final_pt, "--gallery", synthetic_shards["val"], query)
    assert code == 2 and "is empty once punctuation is removed" in err, err


# ----------------------------------------------------------------------------- optional dependency (class 8)


@pytest.mark.parametrize("module", ["transformers", "sentencepiece"])
def test_backtranslation_without_the_translate_extra_says_how_to_install_it(module, synthetic_shards, tmp_path,
                                                                            capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    code, err = cli(capsys, "augment", "--captions", synthetic_shards["annotations"], "--out", tmp_path / "a.parquet",
                    "--backend", "backtranslation", "--device", "cpu")
    assert code == 2 and f"needs {module}" in err and "pip install 'tbps[translate]'" in err, err


# ----------------------------------------------------------------------------- image decoding (class 9)


def _png_rgb16(width: int, height: int, value: int) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand: Pillow cannot write one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + struct.pack(">HHH", value, value // 2, 0) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def odd_images() -> dict[str, tuple[bytes, tuple[int, int], tuple[int, int, int]]]:
    """name -> (file bytes, expected upright (width, height), expected RGB of the top-left pixel)."""
    grey16 = Image.fromarray(np.full((20, 10), 32896, dtype=np.uint16))  # 50 % grey in 16 bits
    left_red = Image.new("RGB", (40, 20), (0, 0, 255))
    left_red.paste((255, 0, 0), (0, 0, 10, 20))  # a red strip on the left of a blue landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    return {
        "16-bit greyscale PNG": (_encoded(grey16, "PNG"), (10, 20), (128, 128, 128)),
        "48-bit RGB PNG": (_png_rgb16(5, 7, 65535), (5, 7), (255, 127, 0)),
        "EXIF-rotated JPEG": (_encoded(left_red, "JPEG", exif=exif, quality=95), (20, 40), (255, 0, 0)),
        "transparent RGBA PNG": (_encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), (8, 8), (255, 255, 255)),
        "half-transparent LA PNG": (_encoded(Image.new("LA", (8, 8), (0, 128)), "PNG"), (8, 8), (127, 127, 127)),
        "palette PNG with a transparent index": (_encoded(palette, "PNG"), (6, 6), (255, 255, 255)),
        "CMYK JPEG": (_encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100), (8, 8), (255, 0, 0)),
        "1-bit PNG": (_encoded(Image.new("1", (8, 8), 1), "PNG"), (8, 8), (255, 255, 255)),
    }


@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_images_decode_as_a_viewer_shows_them(name):
    data, size, top_left = odd_images()[name]
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == size
    assert np.abs(np.asarray(img.getpixel((0, 0)), dtype=int) - top_left).max() <= 3, img.getpixel((0, 0))


def test_ordinary_rgb_images_decode_exactly_as_before(synthetic_raw):
    for path in sorted((synthetic_raw / "imgs").rglob("*"))[:40]:
        if path.is_file():
            with Image.open(path) as im:
                before = np.asarray(im.convert("RGB"))
            assert np.array_equal(np.asarray(decode_image(path.read_bytes())), before), path


def test_writer_and_readers_use_the_one_decode_function(tmp_path):
    """Odd images through the writer (kept and re-encoded) and back through the reader: upright, not white."""
    raw = tmp_path / "raw"
    (raw / "imgs").mkdir(parents=True)
    images = odd_images()
    rows = []
    for i, (name, (data, _, _)) in enumerate(images.items()):
        (raw / "imgs" / f"{i}.img").write_bytes(data)
        rows.append({"caption_id": i, "dataset": "synthetic", "split": "test", "person_id": i, "train_id": None,
                     "image_index": i, "image_path": f"imgs/{i}.img", "caption_index": 0, "caption": name,
                     "width": 1, "height": 1})
    table = tmp_path / "annotations.parquet"
    pl.DataFrame(rows, schema_overrides={"train_id": pl.Int64, "caption_index": pl.Int32, "width": pl.Int32,
                                         "height": pl.Int32}).write_parquet(table)
    from tbps.shards.reader import open_shards

    for fmt, size in (("keep", None), ("png", (40, 20))):
        manifest = write_split(table, "test", raw, tmp_path / fmt, image_format=fmt, image_size=size,
                               progress=False)
        assert manifest["num_samples"] == len(images)
        for sample in open_shards(tmp_path / fmt / "manifest.json"):
            name = sample["json"]["captions"][0]
            data, upright, top_left = images[name]
            assert sample["image"].size == (upright if size is None else size[::-1]), name
            if size is None:
                assert np.array_equal(np.asarray(sample["image"]), np.asarray(decode_image(data))), name
    # The rotated photo was stored upright when re-encoded: its red strip is on top.
    rotated = list(images).index("EXIF-rotated JPEG")
    with tarfile.open(tmp_path / "png" / "shard-000000.tar") as tar:
        stored = Image.open(io.BytesIO(tar.extractfile(f"test-{rotated:08d}.png").read()))
        assert stored.getpixel((10, 1))[0] > 200 and stored.getpixel((10, 38))[2] > 200


# ----------------------------------------------------------------------------- symbolic links (class 10)


def test_links_out_of_the_raw_folder_are_counted_skips_and_linked_folders_work(tmp_path, capsys):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (16, 40), (255, 0, 0)).save(secret)
    raw = raw_folder(tmp_path / "a", good_records())
    (raw / "imgs" / "1.jpg").unlink()
    (raw / "imgs" / "1.jpg").symlink_to(secret)  # a link inside imgs/ that leads out of the dataset
    (raw / "imgs" / "2.jpg").unlink()
    (raw / "imgs" / "2.jpg").symlink_to("0.jpg")  # a link that stays inside: fine
    summary = ann.prepare("cuhk-pedes", raw, tmp_path / "a.parquet", rejects=tmp_path / "r.parquet",
                          max_reject_fraction=1.0)
    assert summary["rejected"]["images"] == {"total": 1, "outside_raw_root": 1}
    detail = pl.read_parquet(tmp_path / "r.parquet")["detail"][0]
    assert "imgs/1.jpg" in detail and str(secret) in detail
    assert sorted(pl.read_parquet(tmp_path / "a.parquet")["image_index"].unique()) == [0, 2, 3, 4, 5]
    capsys.readouterr()
    assert main(["check-raw", "--dataset", "cuhk-pedes", "--raw", str(raw)]) == 1
    assert "1 images link outside" in capsys.readouterr().out

    # The link appears after `prepare`: the shard writer refuses it too.
    table = tmp_path / "a.parquet"
    (raw / "imgs" / "0.jpg").rename(raw / "zero.jpg")
    (raw / "imgs" / "0.jpg").symlink_to(secret)  # and 2.jpg, a link to 0.jpg, now leads there too
    manifest = write_split(table, "train", raw, tmp_path / "shards", progress=False)
    assert manifest["rejected_by_reason"] == {"outside_raw_root": 2} and manifest["num_samples"] == 1

    # A dataset folder that is a link, and an imgs/ folder that is a link to another disk, work.
    elsewhere = raw_folder(tmp_path / "disk2", good_records())
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(elsewhere)
    assert ann.prepare("cuhk-pedes", linked_root, tmp_path / "b.parquet")["rejected"]["images"] == {"total": 0}
    split_layout = tmp_path / "split-layout"
    split_layout.mkdir()
    shutil.copy(elsewhere / "reid_raw.json", split_layout)
    (split_layout / "imgs").symlink_to(elsewhere / "imgs")
    assert ann.prepare("cuhk-pedes", split_layout, tmp_path / "c.parquet")["rejected"]["images"] == {"total": 0}
    assert write_split(tmp_path / "c.parquet", "train", split_layout, tmp_path / "s2", progress=False)[
        "num_rejected"] == 0


# ----------------------------------------------------------------------------- faults (classes 11, 12)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "final.pt"
    host = fileio._HOST
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        stale = tmp_path / f".final.pt.{host}~{_dead_pid()}~abc.pt.tmp"
        stale_dir = tmp_path / f".final.pt.{host}~{_dead_pid()}~synth"
        live_child = tmp_path / f".final.pt.{host}~{sleeper.pid}~def.pt.tmp"
        own = tmp_path / f".final.pt.{host}~{os.getpid()}~ghi.pt.tmp"
        other_host = tmp_path / f".final.pt.otherhost~{_dead_pid()}~jkl.pt.tmp"
        other_output = tmp_path / f".final.pt.x.{host}~{_dead_pid()}~mno.tmp"
        old_style = tmp_path / ".final.pt.qwerty.pt.tmp"
        for path in (stale, live_child, own, other_host, other_output, old_style):
            path.write_bytes(b"half a checkpoint")
        stale_dir.mkdir()
        (stale_dir / "imgs").mkdir()
        write_bytes_atomic(out, b"done")
        assert out.read_bytes() == b"done"
        assert not stale.exists() and not stale_dir.exists()
        for kept in (live_child, own, other_host, other_output, old_style):
            assert kept.exists(), kept
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert not [n for n in leftovers if n.startswith(".final.pt.") and n.endswith(".pt.tmp")
                    and f"~{os.getpid()}~" in n and n != own.name]  # our own temp was renamed into place
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_mid_shard_then_rerun_gives_the_uninterrupted_shard(synthetic_shards, tmp_path):
    """A real kill -9 of `tbps shards write` leaves only a hidden temp; the rerun removes it and writes the
    byte-identical shard."""
    from tbps.shards.plan import plan_shards

    plan = tmp_path / "plan.json"
    table = synthetic_shards["annotations"]
    plan_shards(table, "val", synthetic_shards["raw"], plan, max_samples=1000)
    raw = synthetic_shards["raw"]
    encoding = ImageEncoding("png", (512, 512))  # slow enough to be caught half-way
    write_shard(plan, 0, tmp_path / "reference" / "shard-000000.tar", raw, encoding=encoding)

    out = tmp_path / "killed" / "shard-000000.tar"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "tbps", "shards", "write", "--plan", str(plan), "--shard-index", "0",
           "--raw", str(raw), "--out", str(out), "--image-size", "512x512", "--image-format", "png"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            temps = list(out.parent.glob(".shard-000000.tar.*.tmp"))
            if temps and temps[0].stat().st_size > 100_000:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the shard writer finished (or never started) before it could be killed")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists() and len(list(out.parent.glob(".shard-000000.tar.*.tmp"))) == 1
    write_shard(plan, 0, out, raw, encoding=encoding)
    assert sorted(p.name for p in out.parent.iterdir()) == ["shard-000000.json", "shard-000000.tar"]
    assert out.read_bytes() == (tmp_path / "reference" / "shard-000000.tar").read_bytes()


def test_full_disk_while_checkpointing_says_so(tmp_path, monkeypatch):
    def iostream_error(payload, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", iostream_error)
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    payload = {"model": {"w": torch.zeros(1000, 1000)}}  # 4 MB
    with pytest.raises(UserInputError) as err:
        checkpoint.save(tmp_path / "run" / "final.pt", payload)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "run" / "final.pt")) and "is full" in message
    assert str(tmp_path / "run") in message and "1000 bytes free" in message and "about 3.8 MiB" in message
    assert "basic_ios::clear" in message and "Fix: free space" in message
    assert list((tmp_path / "run").iterdir()) == []  # no temporary left

    # The same torch error with room to spare is not a full disk: it is raised as it is.
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="iostream error"):
        checkpoint.save(tmp_path / "run" / "final.pt", payload)


def test_no_space_left_on_any_atomic_write_names_the_file(tmp_path, monkeypatch):
    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(UserInputError, match=r"out\.json: cannot write it, the disk holding .* is full"):
        write_bytes_atomic(tmp_path / "out.json", b"{}")


# ----------------------------------------------------------------------------- the suggested fix (class 13)


@pytest.mark.slow
def test_suggested_command_for_a_corrupted_shard_really_rewrites_it(tmp_path, monkeypatch):
    """Build a split with the workflow, corrupt a shard, run the command the error suggests."""
    import yaml

    workdir = tmp_path / "wf"
    workdir.mkdir()
    shutil.copy2(REPO / "Snakefile", workdir / "Snakefile")
    for folder in ("workflow", "config", "envs"):
        shutil.copytree(REPO / folder, workdir / folder)
    overlay = {"datasets": {"synthetic": {"raw": "resources/raw/synthetic", "format": "cuhk-pedes", "synth_ids": 4,
                                          "synth_seed": 0, "experiments": ["tiny_tbps_clip"],
                                          "augment_backend": "none"}},
               "shards": {"max_samples": 1000}}
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    options = ["--profile", "workflow/profiles/default", "--cores", "2", "--configfile", "overlay.yaml"]
    target = "results/synthetic/shards/val/manifest.json"

    def snakemake(*args):
        return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                              timeout=600)

    built = snakemake(target, *options)
    assert built.returncode == 0, built.stderr[-3000:]
    shard = workdir / "results/synthetic/shards/val/shard-000000.tar"
    original = shard.read_bytes()
    blob = bytearray(original)
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))

    # The manifest job does not reread shards that look up to date: the corruption surfaces where a
    # stage reads the split (training, evaluation, search), which all verify it the same way.
    from tbps.shards import reader

    monkeypatch.chdir(workdir)  # as a rule's job sees it: paths relative to the workflow's folder
    with pytest.raises(UserInputError) as err:
        reader.verified_shard_paths(target)
    suggested = re.search(r"`(snakemake --cores 1 --force (\S+))`", str(err.value))
    assert suggested, str(err.value)
    assert suggested.group(2) == "results/synthetic/shards/val/shard-000000.tar"
    rewrite = snakemake(*suggested.group(1).split()[1:], "--profile", "workflow/profiles/default", "--configfile",
                        "overlay.yaml")
    assert rewrite.returncode == 0 and "Nothing to be done" not in rewrite.stdout + rewrite.stderr, rewrite.stderr
    rerun = snakemake(target, *options)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert shard.read_bytes() == original
    assert (workdir / target).is_file()
