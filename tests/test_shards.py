"""WebDataset shards: plan / write / manifest and the safe reader (tiny inputs built here)."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from tbps.cli import main
from tbps.errors import UserInputError
from tbps.fileio import sha256_file, write_json_atomic
from tbps.shards import writer as shards_writer
from tbps.shards.manifest import build_manifest
from tbps.shards.plan import estimate_sample_bytes, plan_shards
from tbps.shards.reader import open_shards, shard_paths, verify_manifest
from tbps.shards.writer import ImageRejected, encode_image, write_shard, write_split

# ----------------------------------------------------------------------------- fixtures


def _image(seed: int, size=(24, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def make_dataset(root: Path, n_train: int = 10, n_test: int = 4) -> dict[str, Path]:
    """Raw folder + annotations.parquet (contract types) + captions_aug.parquet (train only).

    Images 0..n-1; every 3rd is a PNG; image 1 is a PNG stored under a .jpg name; image 0
    has 3 captions, the others 2.
    """
    raw = root / "raw"
    (raw / "imgs").mkdir(parents=True)
    rows = {k: [] for k in ("caption_id", "dataset", "split", "person_id", "train_id", "image_index",
                            "image_path", "caption_index", "caption", "width", "height")}
    cid = 0
    for image_index in range(n_train + n_test):
        split = "train" if image_index < n_train else "test"
        fmt = "PNG" if image_index % 3 == 0 or image_index == 1 else "JPEG"
        name = f"imgs/{image_index:04d}.{'png' if fmt == 'PNG' and image_index != 1 else 'jpg'}"
        _image(image_index).save(raw / name, format=fmt)
        for caption_index in range(3 if image_index == 0 else 2):
            rows["caption_id"].append(cid)
            rows["dataset"].append("synthetic")
            rows["split"].append(split)
            rows["person_id"].append(image_index // 2)
            rows["train_id"].append(image_index // 2 if split == "train" else None)
            rows["image_index"].append(image_index)
            rows["image_path"].append(name)
            rows["caption_index"].append(caption_index)
            rows["caption"].append(f"person {image_index} caption {caption_index}")
            rows["width"].append(24)
            rows["height"].append(48)
            cid += 1
    schema = pa.schema([("caption_id", pa.int64()), ("dataset", pa.string()), ("split", pa.string()),
                        ("person_id", pa.int64()), ("train_id", pa.int64()), ("image_index", pa.int64()),
                        ("image_path", pa.string()), ("caption_index", pa.int32()), ("caption", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32())])
    table = pa.table(rows, schema=schema)
    annotations = root / "annotations.parquet"
    pq.write_table(table, annotations)
    # Augmented captions for train captions, except caption_id 1 (left out: must come back null).
    train = [(c, t) for c, t, s in zip(rows["caption_id"], rows["caption"], rows["split"], strict=True) if s == "train"]
    aug_rows = [(c, t, f"AUG {t}") for c, t in train if c != 1]
    augmented = root / "captions_aug.parquet"
    pq.write_table(pa.table({"caption_id": pa.array([r[0] for r in aug_rows], pa.int64()),
                             "caption": [r[1] for r in aug_rows], "caption_aug": [r[2] for r in aug_rows],
                             "backend": ["test"] * len(aug_rows)}), augmented)
    return {"raw": raw, "annotations": annotations, "augmented": augmented}


@pytest.fixture()
def data(tmp_path):
    return make_dataset(tmp_path / "in")


def _members(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tf:
        return tf.getmembers()


def _samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


# ----------------------------------------------------------------------------- plan


def test_plan_cuts_by_max_samples_one_sample_per_image(data, tmp_path):
    plan = plan_shards(data["annotations"], "train", data["raw"], tmp_path / "a" / "plan.json", max_samples=4, seed=0)
    sizes = [len(s["image_indices"]) for s in plan["shards"]]
    assert sizes == [4, 4, 2]
    assert [s["name"] for s in plan["shards"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    flat = [i for s in plan["shards"] for i in s["image_indices"]]
    assert sorted(flat) == list(range(10)) and plan["num_samples"] == 10  # image 0 has 3 captions: still 1
    assert plan["annotations_sha256"] == sha256_file(data["annotations"]) and plan["augmented_sha256"] is None
    assert json.loads((tmp_path / "a" / "plan.json").read_text()) == plan
    again = plan_shards(data["annotations"], "train", data["raw"], tmp_path / "b" / "plan.json", max_samples=4, seed=0)
    other = plan_shards(data["annotations"], "train", data["raw"], tmp_path / "c" / "plan.json", max_samples=4, seed=1)
    assert again == plan
    for name in ("plan.json", "plan_samples.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert [i for s in other["shards"] for i in s["image_indices"]] != flat
    assert flat != sorted(flat)  # shuffled


def _json_sizes(plan_samples: Path) -> dict[int, int]:
    table = pq.read_table(plan_samples)
    return dict(zip(table["image_index"].to_pylist(), [len(j) for j in table["json"].to_pylist()], strict=True))


def test_plan_cuts_by_max_bytes(data, tmp_path):
    uncapped = plan_shards(data["annotations"], "train", data["raw"], tmp_path / "u" / "plan.json", max_samples=100)
    json_sizes = _json_sizes(tmp_path / "u" / "plan_samples.parquet")
    image_files = sorted(str(p.relative_to(data["raw"])) for p in (data["raw"] / "imgs").iterdir())
    sizes = {i: estimate_sample_bytes((data["raw"] / image_files[i]).stat().st_size, json_sizes[i])
             for i in uncapped["shards"][0]["image_indices"]}
    cap = 3 * max(sizes.values())
    plan = plan_shards(data["annotations"], "train", data["raw"], tmp_path / "p" / "plan.json", max_samples=100,
                       max_bytes=cap, seed=0)
    assert len(plan["shards"]) > 1
    for i, shard in enumerate(plan["shards"]):
        total = sum(sizes[j] for j in shard["image_indices"])
        assert total == shard["estimated_bytes"] and total <= cap
        if i + 1 < len(plan["shards"]):  # greedy: the next shard's first image would not have fit
            assert total + sizes[plan["shards"][i + 1]["image_indices"][0]] > cap
    # An image larger than the cap gets a shard of its own instead of failing.
    tiny = plan_shards(data["annotations"], "train", data["raw"], tmp_path / "t" / "plan.json", max_bytes=1, seed=0)
    assert [len(s["image_indices"]) for s in tiny["shards"]] == [1] * 10


def test_bad_inputs_name_file_record_and_fix(data, tmp_path):
    out = tmp_path / "plan.json"
    with pytest.raises(UserInputError, match="annotations.parquet.*splits present"):
        plan_shards(data["annotations"], "val", data["raw"], out)
    table = pq.read_table(data["annotations"])
    paths = table["image_path"].to_pylist()
    paths[5] = None
    broken = tmp_path / "nulls.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("image_path"), "image_path",
                                    pa.array(paths, pa.string())), broken)
    with pytest.raises(UserInputError, match=r"nulls.parquet, record 5: null image_path. Fix: regenerate"):
        plan_shards(broken, "train", data["raw"], out)
    pq.write_table(table.drop(["caption"]), broken)
    with pytest.raises(UserInputError, match=r"missing column\(s\) caption"):
        plan_shards(broken, "train", data["raw"], out)
    (data["raw"] / "imgs/0004.jpg").unlink()
    with pytest.raises(UserInputError, match=r"record 9: image 'imgs/0004.jpg' not found"):
        plan_shards(data["annotations"], "train", data["raw"], out)
    assert not out.exists() and not (tmp_path / "plan_samples.parquet").exists()


def test_stale_augmented_captions_are_refused(data, tmp_path):
    aug = pq.read_table(data["augmented"])
    captions = aug["caption"].to_pylist()
    captions[0] = "an older caption"
    pq.write_table(aug.set_column(1, "caption", pa.array(captions)), data["augmented"])
    out = tmp_path / "a" / "plan.json"
    with pytest.raises(UserInputError, match="captions_aug.parquet, record 0: caption_id 0: source caption differs"):
        plan_shards(data["annotations"], "train", data["raw"], out, augmented=data["augmented"])
    assert not out.parent.exists() or not any(out.parent.iterdir())


# ----------------------------------------------------------------------------- write


def test_write_is_byte_identical_and_tar_is_standard(data, tmp_path):
    kw = dict(augmented=data["augmented"], max_samples=4, seed=3, progress=False)
    m1 = write_split(data["annotations"], "train", data["raw"], tmp_path / "a", **kw)
    m2 = write_split(data["annotations"], "train", data["raw"], tmp_path / "b", **kw)
    names = [s["name"] for s in m1["shards"]] + ["manifest.json", "plan.json", "plan_samples.parquet"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert m1 == m2 and m1["num_samples"] == 10 and m1["num_shards"] == 3 and m1["num_rejected"] == 0

    members = [m for s in m1["shards"] for m in _members(tmp_path / "a" / s["name"])]
    assert {m.name.split(".", 1)[1] for m in members} == {"jpg", "png", "json"}
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o444 for m in members)
    samples = {}
    for s in m1["shards"]:
        samples.update(_samples(tmp_path / "a" / s["name"]))
    assert sorted(samples) == [f"train-{i:08d}" for i in range(10)]
    # The extension follows the detected format: image 1 is a PNG stored as .jpg.
    assert "png" in samples["train-00000001"] and "jpg" in samples["train-00000002"]
    # keep mode stores the original bytes unchanged.
    assert samples["train-00000002"]["jpg"] == (data["raw"] / "imgs/0002.jpg").read_bytes()
    meta = json.loads(samples["train-00000000"]["json"])
    assert meta == {
        "dataset": "synthetic", "split": "train", "person_id": 0, "train_id": 0, "image_index": 0,
        "image_path": "imgs/0000.png",
        "captions": [f"person 0 caption {k}" for k in range(3)],
        "captions_aug": ["AUG person 0 caption 0", None, "AUG person 0 caption 2"],  # caption_id 1 has none
        "caption_ids": [0, 1, 2],
    }
    # The plan's estimate is the tar's size: its samples, then the end marker and the record padding.
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    for entry in plan["shards"]:
        tar_bytes = (tmp_path / "a" / entry["name"]).stat().st_size
        assert tar_bytes == tarfile.RECORDSIZE * -(-(entry["estimated_bytes"] + 2 * tarfile.BLOCKSIZE)
                                                   // tarfile.RECORDSIZE)


def test_standard_webdataset_reader_reads_image_and_json(data, tmp_path):
    m = write_split(data["annotations"], "train", data["raw"], tmp_path / "a", augmented=data["augmented"],
                    max_samples=4, progress=False)
    urls = [str(tmp_path / "a" / s["name"]) for s in m["shards"]]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil", only=["jpg", "png", "json"])
    samples = {s["__key__"]: s for s in dataset}
    assert sorted(samples) == [f"train-{i:08d}" for i in range(10)]
    for key, sample in samples.items():
        image = sample.get("jpg", sample.get("png"))
        assert isinstance(image, Image.Image) and image.size == (24, 48)
        assert sample["json"]["image_index"] == int(key[-8:]) and len(sample["json"]["captions"]) >= 2


def test_test_split_without_augmentation_has_null_aug_and_no_train_id(data, tmp_path):
    m = write_split(data["annotations"], "test", data["raw"], tmp_path / "t", max_samples=10, progress=False)
    (sample,) = [v for k, v in _samples(tmp_path / "t" / m["shards"][0]["name"]).items() if k.endswith("10")]
    meta = json.loads(sample["json"])
    assert meta["train_id"] is None and meta["captions_aug"] == [None, None] and meta["split"] == "test"


def test_reencode_gives_requested_size(data, tmp_path):
    m = write_split(data["annotations"], "train", data["raw"], tmp_path / "r", image_size=(32, 16),
                    max_samples=100, progress=False)
    samples = _samples(tmp_path / "r" / m["shards"][0]["name"])
    assert m["params"]["image_format"] == "jpg" and m["params"]["image_size"] == [32, 16]
    for sample in samples.values():
        assert set(sample) == {"jpg", "json"}
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            assert img.format == "JPEG" and img.size == (16, 32) and not img.info.get("exif")


def test_encode_image_stores_other_formats_as_png_and_rejects_undecodable_bytes():
    buf = io.BytesIO()
    _image(0).save(buf, format="BMP")
    ext, data, converted = encode_image(buf.getvalue())
    assert (ext, converted) == ("png", True) and Image.open(io.BytesIO(data)).format == "PNG"
    ext, data, converted = encode_image(buf.getvalue(), image_format="png", image_size=(10, 20))
    assert (ext, converted) == ("png", False) and Image.open(io.BytesIO(data)).size == (20, 10)
    with pytest.raises(ImageRejected) as e:
        encode_image(b"not an image")
    assert e.value.reason == "undecodable_image"


def test_undecodable_image_is_rejected_and_counted(data, tmp_path):
    broken = data["raw"] / "imgs/0002.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # header intact, pixels cut off
    m = write_split(data["annotations"], "train", data["raw"], tmp_path / "x", max_samples=4, progress=False)
    assert m["num_samples"] == 9 and m["num_rejected"] == 1 and m["num_planned"] == 10
    assert m["rejected_by_reason"] == {"undecodable_image": 1}
    sidecars = [json.loads((tmp_path / "x" / s["name"]).with_suffix(".json").read_text()) for s in m["shards"]]
    rejected = [r for sc in sidecars for r in sc["rejected"]]
    assert rejected[0]["image_index"] == 2 and rejected[0]["image_path"] == "imgs/0002.jpg"
    assert all(sc["samples"] + len(sc["rejected"]) == sc["planned"] for sc in sidecars)
    keys = {k for s in m["shards"] for k in _samples(tmp_path / "x" / s["name"])}
    assert "train-00000002" not in keys and len(keys) == 9


def test_crash_mid_shard_leaves_no_shard_and_no_manifest(data, tmp_path, monkeypatch):
    real, calls = shards_writer.encode_image, {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_writer, "encode_image", crash_on_third)
    out = tmp_path / "c"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_split(data["annotations"], "train", data["raw"], out, max_samples=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "plan_samples.parquet"]  # no tar, temp, sidecar
    with pytest.raises(UserInputError, match="shard-000000.tar: planned shard is missing.*snakemake --cores 1 --force"):
        build_manifest(out / "plan.json", out / "manifest.json")
    assert not (out / "manifest.json").exists()


def test_manifest_detects_deleted_and_corrupted_shards(data, tmp_path):
    out = tmp_path / "m"
    m = write_split(data["annotations"], "train", data["raw"], out, max_samples=4, progress=False)
    assert verify_manifest(out / "manifest.json") == []
    (out / "manifest.json").unlink()
    shard1 = out / m["shards"][1]["name"]
    blob = bytearray(shard1.read_bytes())
    blob[600] ^= 0xFF
    shard1.write_bytes(bytes(blob))
    with pytest.raises(UserInputError, match=r"shard-000001.tar: sha256 differs.*--shard-index 1"):
        build_manifest(out / "plan.json", out / "manifest.json")
    assert not (out / "manifest.json").exists()
    (out / m["shards"][2]["name"]).unlink()
    write_json_atomic(out / "manifest.json", m)  # the old manifest, to test the reader's check
    problems = verify_manifest(out / "manifest.json")
    assert len(problems) == 2 and "sha256" in problems[0] and "missing" in problems[1]
    assert verify_manifest(out / "manifest.json", check_hashes=False) == [problems[1]]  # same size


def test_write_refuses_wrong_name_and_a_sample_table_of_another_plan(data, tmp_path):
    out = tmp_path / "s"
    write_split(data["annotations"], "train", data["raw"], out, max_samples=4, progress=False)
    with pytest.raises(UserInputError, match="named 'shard-000001.tar'"):
        write_shard(out / "plan.json", 1, out / "shard-000009.tar", data["raw"])
    samples = out / "plan_samples.parquet"
    # The same images in the same shards, other captions: refused by the shard's digest.
    other_captions = pq.read_table(data["annotations"])
    other_captions = other_captions.set_column(other_captions.schema.get_field_index("caption"), "caption",
                                               pa.array([c + "!" for c in other_captions["caption"].to_pylist()]))
    pq.write_table(other_captions, tmp_path / "other.parquet")
    plan_shards(tmp_path / "other.parquet", "train", data["raw"], tmp_path / "o" / "plan.json", max_samples=4)
    samples.write_bytes((tmp_path / "o" / "plan_samples.parquet").read_bytes())
    with pytest.raises(UserInputError, match=r"plan_samples.parquet: the rows of shard 0 differ.*"
                                             r"Fix: rerun `tbps shards plan`"):
        write_shard(out / "plan.json", 0, out / "shard-000000.tar", data["raw"])
    plan_shards(data["annotations"], "train", data["raw"], tmp_path / "f" / "plan.json", max_samples=5)
    samples.write_bytes((tmp_path / "f" / "plan_samples.parquet").read_bytes())
    with pytest.raises(UserInputError, match="has 2 row groups, the plan 3 shards"):
        write_shard(out / "plan.json", 0, out / "shard-000000.tar", data["raw"])
    samples.write_bytes(b"not parquet")
    with pytest.raises(UserInputError, match="not a readable sample table"):
        write_shard(out / "plan.json", 0, out / "shard-000000.tar", data["raw"])
    samples.unlink()
    with pytest.raises(UserInputError, match="the plan's sample table is missing"):
        write_shard(out / "plan.json", 0, out / "shard-000000.tar", data["raw"])


def test_write_split_progress_false_prints_no_bar(data, tmp_path, capsys):
    write_split(data["annotations"], "train", data["raw"], tmp_path / "quiet", max_samples=4, progress=False)
    assert "shards train" not in capsys.readouterr().err
    write_split(data["annotations"], "train", data["raw"], tmp_path / "shown", max_samples=4, progress=True)
    assert "shards train" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reader


META = {"captions": ["x"], "person_id": 1, "image_path": "imgs/x.jpg"}


def _plant_pickle_shard(path: Path, marker: Path, image: bytes) -> None:
    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as sink:
        sink.write({"__key__": "train-00000099", "jpg": image, "pyd": pickle.dumps(Payload()),
                    "json": json.dumps(META).encode(), "txt": b"x"})


def test_reader_never_unpickles(data, tmp_path):
    marker = tmp_path / "PWNED"
    shard = tmp_path / "evil.tar"
    jpeg = (data["raw"] / "imgs/0002.jpg").read_bytes()
    _plant_pickle_shard(shard, marker, jpeg)

    (sample,) = list(open_shards([str(shard)]))
    assert not marker.exists()
    assert sample["image"].mode == "RGB" and sample["image"].size == (24, 48)
    assert sample["json"] == META and "txt" not in sample and "pyd" not in sample

    # Control: the payload is real, webdataset's default decoders do run it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(wds.WebDataset(str(shard), shardshuffle=False).decode("pil"))
    assert marker.exists()


def test_reader_yields_samples_in_manifest_order(data, tmp_path):
    out = tmp_path / "o"
    m = write_split(data["annotations"], "train", data["raw"], out, max_samples=3, progress=False)
    manifest = out / "manifest.json"
    plan = json.loads((out / "plan.json").read_text())
    in_order = [s["__key__"] for s in open_shards(manifest)]
    assert in_order == [f"train-{i:08d}" for sh in plan["shards"] for i in sh["image_indices"]]
    assert shard_paths(manifest) == [str(out / s["name"]) for s in m["shards"]]


def test_reader_with_dataloader_workers(data, tmp_path):
    import torch.utils.data

    out = tmp_path / "w"
    write_split(data["annotations"], "train", data["raw"], out, max_samples=4, progress=False)
    pipeline = open_shards(out / "manifest.json", num_workers=2).compose(wds.map(lambda s: s["__key__"]))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=2)
    keys = list(loader)
    assert sorted(keys) == [f"train-{i:08d}" for i in range(10)]  # each sample exactly once

    with pytest.warns(UserWarning, match="3 shards for 8 DataLoader workers"):
        open_shards(out / "manifest.json", num_workers=8)


def test_reader_rejects_pipe_urls():
    with pytest.raises(ValueError, match="only local shard files"):
        open_shards(["pipe:touch /tmp/x"])


# ----------------------------------------------------------------------------- CLI


def test_cli_plan_write_manifest_and_a_missing_shard_exits_2(data, tmp_path, capsys):
    out = tmp_path / "cli"
    raw = ["--raw", str(data["raw"])]
    assert main(["shards", "plan", "--captions", str(data["annotations"]), "--augmented", str(data["augmented"]),
                 *raw, "--split", "train", "--out", str(out / "plan.json"), "--max-samples", "6", "--seed", "1"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["shards"]) == 2
    for i, s in enumerate(plan["shards"]):
        assert main(["shards", "write", "--plan", str(out / "plan.json"), "--shard-index", str(i), *raw,
                     "--out", str(out / s["name"]), "--image-size", "20x10"]) == 0
    assert main(["shards", "manifest", "--plan", str(out / "plan.json"), "--out", str(out / "manifest.json")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 10 and manifest["params"]["image_size"] == [20, 10]

    (out / "manifest.json").unlink()
    (out / plan["shards"][0]["name"]).unlink()
    assert main(["shards", "manifest", "--plan", str(out / "plan.json"), "--out", str(out / "manifest.json")]) == 2
    err = capsys.readouterr().err
    assert "shard-000000.tar: planned shard is missing" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()
    assert main(["shards", "write", "--plan", str(out / "plan.json"), "--shard-index", "0", *raw,
                 "--out", str(out / "x.tar"), "--image-size", "20"]) == 2
    assert "HxW" in capsys.readouterr().err
