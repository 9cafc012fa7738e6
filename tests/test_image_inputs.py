"""Awkward image inputs: damaged files, every PIL mode, odd file names, bad labels and class layouts."""

import logging
import os
import struct
import unicodedata
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets import load_dataset
from core.datasets.arrays import ArraySplit
from core.datasets.base import iterate_batches
from core.datasets.checks import DatasetError
from core.datasets.files import FileSplit
from core.datasets.fingerprint import fingerprint_files
from curator.config import RunConfig
from curator.pipeline import DatasetChangedError, RunContext, create_run
from curator.store import Store
from curator.workspace import Workspace
from tests.dataset_writers import write_csv_dataset, write_image_tree


def png_header_only(path, width: int, height: int) -> None:
    """Write a valid PNG header claiming ``width`` x ``height`` pixels, with almost no image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def uniform(mode: str, value, size: int = 8) -> Image.Image:
    return Image.new(mode, (size, size), value)


@pytest.fixture
def damaged_tree(tmp_path):
    """Two classes of good PNGs plus one file of each damaged kind in class ``ant``."""
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}})
    ant = tmp_path / "train" / "ant"
    jpeg = ant / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (ant / "empty.png").write_bytes(b"")
    (ant / "notes.png").write_text("these are my notes, not a picture")
    png_header_only(ant / "bomb.png", 100_000, 100_000)
    png_header_only(ant / "large.png", 3_000, 3_000)
    return tmp_path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_damaged_files_skipped_with_reasons(damaged_tree, caplog):
    caplog.set_level(logging.WARNING)
    splits = load_dataset("imagefolder", seed=0, data_dir=str(damaged_tree), max_pixels=1_000_000)
    reasons = {entry["path"]: entry["reason"] for entry in splits.info["skipped"]}
    loaded = splits.train.sample_ids + splits.val.sample_ids + splits.test.sample_ids

    assert len(loaded) == 12
    assert "zero-byte" in reasons["train/ant/empty.png"]
    assert "not an image" in reasons["train/ant/notes.png"]
    assert "truncated" in reasons["train/ant/truncated.jpg"]
    assert "decompression bomb" in reasons["train/ant/bomb.png"]
    assert "9,000,000 pixels exceeds the limit of 1,000,000" in reasons["train/ant/large.png"]
    assert "raise max_pixels" in reasons["train/ant/large.png"]
    assert "train/ant/truncated.jpg" in caplog.text
    assert "skipped 5" in caplog.text


def test_header_check_skips_damage_in_sample(damaged_tree):
    for name in ("empty.png", "notes.png", "bomb.png", "large.png"):
        os.remove(damaged_tree / "train" / "ant" / name)
    write_image_tree(str(damaged_tree), {"val": {"ant": 2, "bee": 2}, "test": {"ant": 1, "bee": 1}})
    splits = load_dataset("imagefolder", seed=0, data_dir=str(damaged_tree), verify="header")

    # Headers alone pass the file; the statistics sample (every training image here) decodes it.
    assert isinstance(splits.train, FileSplit)
    assert "train/ant/truncated.jpg" not in splits.train.sample_ids
    assert [entry["path"] for entry in splits.info["skipped"]] == ["train/ant/truncated.jpg"]
    assert len(splits.train) == 12


def test_file_damaged_after_load_names_file(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 5, "bee": 5}})
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), memory_limit=0, val_fraction=0.2)
    victim = splits.train.sample_ids[0]
    (tmp_path / victim).write_bytes(b"")

    with pytest.raises(DatasetError, match=f"{victim}.*zero-byte.*start a new run"):
        splits.train[0]


def test_every_mode_converts_to_rgb(tmp_path):
    folder = tmp_path / "train" / "mixed"
    folder.mkdir(parents=True)
    palette = uniform("P", 1)
    palette.putpalette([0, 0, 0, 7, 77, 177] + [0] * 762)
    images = {
        "gray.png": (uniform("L", 100), (100, 100, 100)),
        "rgb.png": (uniform("RGB", (10, 20, 30)), (10, 20, 30)),
        # Alpha 128 of 255 over black: round(200 * 128 / 255) = 100, and so on.
        "rgba.png": (uniform("RGBA", (200, 100, 50, 128)), (100, 50, 25)),
        "palette.png": (palette, (7, 77, 177)),
        "cmyk.tif": (uniform("CMYK", (0, 255, 255, 0)), (255, 0, 0)),
        # 16-bit: 25700 / 257 = 100.
        "sixteen.tif": (Image.fromarray(np.full((8, 8), 25700, np.uint16)), (100, 100, 100)),
        # 32-bit integer read as 16-bit: 51400 / 257 = 200.
        "int32.tif": (Image.fromarray(np.full((8, 8), 51400, np.int32)), (200, 200, 200)),
        # Float in [0, 1]: 0.25 * 255 = 63.75, rounded to 64.
        "float.tif": (Image.fromarray(np.full((8, 8), 0.25, np.float32)), (64, 64, 64)),
        "bilevel.png": (uniform("1", 1), (255, 255, 255)),
        "gray_alpha.png": (uniform("LA", (200, 255)), (200, 200, 200)),
    }
    for name, (image, _) in images.items():
        image.save(folder / name)
    write_image_tree(str(tmp_path), {"train": {"other": 10}}, size=8)
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.1, test_fraction=0.1)
    everything = {s: split for split in (splits.train, splits.val, splits.test) for s in split.sample_ids}

    assert splits.in_channels == 3
    assert splits.info["skipped"] == []
    for name, (_, expected) in images.items():
        split = everything[f"train/mixed/{name}"]
        pixel = split.display_image(split.sample_ids.index(f"train/mixed/{name}"))[0, 0]
        assert tuple(int(v) for v in pixel) == expected, name


def test_grayscale_modes_give_one_channel(tmp_path):
    for name, image in (("a/gray.png", uniform("L", 30)), ("a/sixteen.png", Image.fromarray(np.full((8, 8), 257 * 90, np.uint16))),
                        ("b/float.tif", Image.fromarray(np.full((8, 8), 2.0, np.float32))), ("b/gray.png", uniform("L", 5))):
        (tmp_path / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "train" / name)
    write_image_tree(str(tmp_path), {"train": {"a": 4, "b": 4}}, size=8, channels=1)
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.2,
                          float_range=[0, 4])
    everything = {s: split for split in (splits.train, splits.val, splits.test) for s in split.sample_ids}

    def value(sample_id):
        split = everything[sample_id]
        return int(split.display_image(split.sample_ids.index(sample_id))[0, 0])

    assert splits.in_channels == 1
    assert value("train/a/sixteen.png") == 90
    # float_range 0..4 maps 2.0 to 127.5, rounded to 128.
    assert value("train/b/float.tif") == 128
    assert value("train/a/gray.png") == 30


def test_odd_file_names_load_as_distinct_samples(tmp_path):
    nfc = unicodedata.normalize("NFC", "café.png")
    nfd = unicodedata.normalize("NFD", "café.png")
    names = ["100% sure.png", "#hash.png", "with space.png", "emoji \U0001F600.png", nfc, nfd]
    for number, name in enumerate(names):
        folder = tmp_path / "train" / ("odd" if number % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        uniform("RGB", (number * 40, 0, 0)).save(folder / name)
    write_image_tree(str(tmp_path), {"train": {"odd": 4, "even": 4}}, size=8)
    if len(os.listdir(tmp_path / "train" / "odd")) + len(os.listdir(tmp_path / "train" / "even")) != 14:
        pytest.skip("this file system merges Unicode normal forms")
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.1, test_fraction=0.1)
    ids = splits.train.sample_ids + splits.val.sample_ids + splits.test.sample_ids
    expected = {f"train/{'odd' if n % 2 else 'even'}/{name}" for n, name in enumerate(names)}

    assert expected <= set(ids)
    assert len(set(ids)) == len(ids) == 14
    assert f"train/even/{nfc}" != f"train/odd/{nfd}"
    assert splits.info["skipped"] == []


def test_empty_class_folder_left_out_with_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    write_image_tree(str(tmp_path), {"train": {"ant": 5, "bee": 5}})
    (tmp_path / "train" / "cow").mkdir()
    (tmp_path / "train" / "cow" / "README.txt").write_text("no images yet")
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.2)

    assert splits.class_names == ["ant", "bee"]
    assert splits.info["empty_classes"] == ["cow"]
    assert "['cow'] have no readable training images and are left out" in caplog.text


def test_single_class_is_an_error(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"only": 10}})

    with pytest.raises(DatasetError, match=r"1 class\(es\) \['only'\].*at least 2 classes"):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path))


def test_csv_label_out_of_range_names_line(tmp_path):
    rows = [(f"{i}.png", str(i % 3), None) for i in range(9)] + [("bad.png", "7", None)]
    write_csv_dataset(str(tmp_path), rows)

    with pytest.raises(DatasetError, match=r"label 7 at line 11 of .*labels\.csv is outside the class range 0\.\.2"):
        load_dataset("csv", seed=0, data_dir=str(tmp_path), num_classes=3)


def test_csv_negative_label_names_line(tmp_path):
    write_csv_dataset(str(tmp_path), [("a.png", "1", None), ("b.png", "-1", None), ("c.png", "0", None)])

    with pytest.raises(DatasetError, match=r"label -1 at line 3 of"):
        load_dataset("csv", seed=0, data_dir=str(tmp_path))


def test_csv_duplicate_path_names_lines(tmp_path):
    csv_path = write_csv_dataset(str(tmp_path), [("a.png", "x", None), ("b.png", "y", None)])
    with open(csv_path, "a", encoding="utf-8") as handle:
        handle.write("a.png,y\n")

    with pytest.raises(DatasetError, match=r"'a\.png' on lines \[2, 4\]"):
        load_dataset("csv", seed=0, data_dir=str(tmp_path))


def test_csv_missing_files_skipped(tmp_path):
    csv_path = write_csv_dataset(str(tmp_path), [(f"{i}.png", "xy"[i % 2], None) for i in range(20)])
    with open(csv_path, "a", encoding="utf-8") as handle:
        handle.write("gone.png,x\n")
    splits = load_dataset("csv", seed=0, data_dir=str(tmp_path))

    assert splits.info["skipped"] == [{"path": "gone.png", "reason": "file not found"}]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20


def test_npz_label_out_of_range_names_position(tmp_path):
    labels = np.arange(30) % 3
    labels[17] = 5
    np.savez(tmp_path / "d.npz", x_train=np.zeros((30, 4, 4), np.uint8), y_train=labels,
             x_test=np.zeros((6, 4, 4), np.uint8), y_test=np.arange(6) % 3, class_names=np.array(["a", "b", "c"]))

    with pytest.raises(DatasetError, match=r"label 5 at y_train\[17\] in .*d\.npz is outside the class range 0\.\.2"):
        load_dataset("npz", seed=0, data_dir=str(tmp_path / "d.npz"))


def test_npz_fractional_label_is_an_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.array([0, 1] * 4 + [1.5, 0]))

    with pytest.raises(DatasetError, match=r"label 1\.5 at y\[8\].*not a whole number"):
        load_dataset("npz", seed=0, data_dir=str(tmp_path / "d.npz"))


def test_validation_class_missing_from_training(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 4, "bee": 4}, "val": {"ant": 2, "bee": 2, "cow": 2},
                                     "test": {"ant": 1, "bee": 1}})

    with pytest.raises(DatasetError, match=r"validation split has class\(es\) \['cow'\] that the training split lacks"):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path))


def test_empty_validation_folder_is_an_error(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 4, "bee": 4}, "test": {"ant": 1, "bee": 1}})
    (tmp_path / "val" / "ant").mkdir(parents=True)
    (tmp_path / "val" / "bee").mkdir(parents=True)

    with pytest.raises(DatasetError, match="validation split of dataset 'imagefolder' is empty"):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path))


def test_zero_validation_fraction_is_an_error(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 4, "bee": 4}})

    with pytest.raises(DatasetError, match="validation split .* is empty.*val_fraction"):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.0)


def test_file_backed_split_matches_memory(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}}, size=12)
    in_memory = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path))
    on_disk = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), memory_limit=0)
    inputs, targets, _ = next(iterate_batches(on_disk.train, 4))

    assert isinstance(in_memory.train, ArraySplit)
    assert isinstance(on_disk.train, FileSplit)
    assert on_disk.train.sample_ids == in_memory.train.sample_ids
    assert on_disk.train.display_image(2).dtype == np.uint8
    assert np.array_equal(on_disk.train.display_image(2), in_memory.train.display_image(2))
    assert inputs.shape == (4, 3, 12, 12)
    # Statistics of a dataset on disk come from a sample; here the sample is the whole training split.
    assert torch.allclose(inputs, in_memory.train.images[torch.arange(4)], atol=1e-4)
    assert torch.equal(targets, torch.as_tensor(in_memory.train.labels[:4]))


def test_changed_data_fails_fingerprint_check(tmp_path):
    write_image_tree(str(tmp_path / "data"), {"train": {"ant": 5, "bee": 5}}, size=8)
    workspace = Workspace(tmp_path / "workspace")
    store = Store(workspace)
    config = RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "data"), model="logreg",
                       dataset_options={"val_fraction": 0.2})
    run_id = create_run(workspace, store, config)
    original = RunContext(workspace, store, run_id).splits.fingerprint

    uniform("RGB", (1, 2, 3)).save(tmp_path / "data" / "train" / "ant" / "0.png")

    assert load_dataset("imagefolder", seed=0, data_dir=str(tmp_path / "data"), val_fraction=0.2).fingerprint != original
    with pytest.raises(DatasetChangedError, match="changed on disk"):
        RunContext(workspace, store, run_id).splits


def test_stat_fingerprint_notices_rewrite(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"1234")
    before, method = fingerprint_files(str(tmp_path), ["a.bin"], content_limit=0)
    os.utime(tmp_path / "a.bin", ns=(1, 1))

    assert method == "stat"
    assert fingerprint_files(str(tmp_path), ["a.bin"], content_limit=0)[0] != before


def test_symlink_loop_listed_once(tmp_path, caplog):
    write_image_tree(str(tmp_path), {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    os.symlink(tmp_path / "train", tmp_path / "train" / "dog" / "loop")
    caplog.set_level(logging.WARNING, logger="core.datasets")
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.25)
    ids = splits.train.sample_ids + splits.val.sample_ids + splits.test.sample_ids
    warnings = [record.getMessage() for record in caplog.records if "train/dog/loop" in record.getMessage()]

    assert len(ids) == 12
    assert len(set(ids)) == 12
    assert not [sample for sample in ids if "loop" in sample]
    assert sorted(splits.test.sample_ids) == [f"test/{name}/{i}.png" for name in ("cat", "dog") for i in range(2)]
    assert splits.info["skipped_folders"] == [{"path": "train/dog/loop", "target": str((tmp_path / "train").resolve())}]
    assert len(warnings) == 1


def test_linked_folders_followed_once(tmp_path):
    write_image_tree(str(tmp_path / "data"), {"train": {"cat": 3}})
    write_image_tree(str(tmp_path / "elsewhere"), {"dogs": {"dog": 3}, "cats": {"cat": 2}})
    train = tmp_path / "data" / "train"
    os.symlink(tmp_path / "elsewhere" / "dogs" / "dog", train / "dog")
    os.symlink(tmp_path / "elsewhere" / "cats" / "cat", train / "cat" / "more")
    os.symlink(tmp_path / "elsewhere" / "cats" / "cat", train / "cat" / "more_again")
    os.symlink(tmp_path / "elsewhere" / "dogs" / "dog" / "0.png", train / "cat" / "linked.png")
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path / "data"), val_fraction=0.2,
                          test_fraction=0.2)
    labels = {}
    for split in (splits.train, splits.val, splits.test):
        labels.update({sample: splits.class_names[label] for sample, label in zip(split.sample_ids, split.labels)})

    assert labels == {"train/cat/0.png": "cat", "train/cat/1.png": "cat", "train/cat/2.png": "cat",
                      "train/cat/linked.png": "cat", "train/cat/more/0.png": "cat", "train/cat/more/1.png": "cat",
                      "train/dog/0.png": "dog", "train/dog/1.png": "dog", "train/dog/2.png": "dog"}
    assert [entry["path"] for entry in splits.info["skipped_folders"]] == ["train/cat/more_again"]


@pytest.mark.parametrize("link, target", [("test/dog/copied", "train/dog"), ("test/dog", "train/dog")])
def test_link_to_training_folder_skipped_in_test(tmp_path, link, target):
    write_image_tree(str(tmp_path), {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    if link == "test/dog":
        for name in os.listdir(tmp_path / "test" / "dog"):
            os.remove(tmp_path / "test" / "dog" / name)
        os.rmdir(tmp_path / "test" / "dog")
    os.symlink(tmp_path / target, tmp_path / link)
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.25)
    expected_test = [f"test/cat/{i}.png" for i in range(2)] + ([f"test/dog/{i}.png" for i in range(2)]
                                                               if link != "test/dog" else [])

    assert sorted(splits.test.sample_ids) == expected_test
    assert [entry["path"] for entry in splits.info["skipped_folders"]] == [link]


@pytest.mark.parametrize("options, expected", [
    ({"val_fraction": 1.5}, r"val_fraction must be above 0 and below 1, got 1\.5"),
    ({"test_fraction": -0.1}, r"test_fraction must be above 0 and below 1, got -0\.1"),
    ({"val_fraction": "abc"}, r"val_fraction must be a number above 0 and below 1, got 'abc'"),
    ({"val_fraction": 0.5, "test_fraction": 0.6}, r"test_fraction 0\.6 and val_fraction 0\.5 add up to 1\.1"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, r"add up to 1, which leaves training 25% of the samples"),
])
def test_image_folder_rejects_bad_fractions(tmp_path, options, expected):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}})

    with pytest.raises(DatasetError, match=expected):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), **options)


def test_declared_splits_skip_fraction_sum(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}, "val": {"ant": 1, "bee": 1},
                                     "test": {"ant": 1, "bee": 1}})
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=0.6, test_fraction=0.6)

    assert len(splits.train) == 12
    with pytest.raises(DatasetError, match=r"val_fraction must be above 0 and below 1, got 1\.5"):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), val_fraction=1.5)


@pytest.mark.parametrize("option, value", [
    ("image_size", "abc"), ("image_size", [16, "x"]), ("image_size", 0), ("resize", "abc"), ("memory_limit", "abc"),
])
def test_image_options_name_bad_value(tmp_path, option, value):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}})
    expected = rf"dataset 'imagefolder': {option} must be .* got {value!r}".replace("[", r"\[")

    with pytest.raises(ValueError, match=expected):
        load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), **{option: value})


def test_csv_rejects_fractions_out_of_range(tmp_path):
    write_csv_dataset(str(tmp_path), [(f"{i}.png", "xy"[i % 2], None) for i in range(12)])

    with pytest.raises(DatasetError, match=r"dataset 'csv': test_fraction must be above 0 and below 1, got 1"):
        load_dataset("csv", seed=0, data_dir=str(tmp_path), test_fraction=1)


def test_rescore_of_changed_data_keeps_scores(tmp_path):
    from curator.pipeline import rescore_run, run_stages

    write_image_tree(str(tmp_path / "data"), {"train": {"ant": 8, "bee": 8}}, size=8)
    workspace = Workspace(tmp_path / "workspace")
    store = Store(workspace)
    config = RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "data"), model="logreg", epochs=1,
                       params="last_layer", dataset_options={"val_fraction": 0.25, "test_fraction": 0.25})
    run_id = create_run(workspace, store, config)
    run_stages(workspace, store, run_id, ("round1", "score", "rule"))
    chunks = sorted(path.name for path in workspace.scores_dir(run_id).glob("*.parquet"))

    (tmp_path / "data" / "train" / "ant" / "0.png").unlink()
    with pytest.raises(DatasetChangedError, match="changed on disk"):
        rescore_run(workspace, store, run_id)

    assert (workspace.run_dir(run_id) / "scores.done").exists()
    assert sorted(path.name for path in workspace.scores_dir(run_id).glob("*.parquet")) == chunks
    assert chunks
