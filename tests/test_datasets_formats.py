"""Each on-disk dataset format: what the loader reads, the data dropout splits, and a short pipeline run."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from core.datasets import LOADERS, load_dataset
from core.datasets.checks import DatasetError, DatasetNotFoundError
from core.models import build_model
from core.ten_crop import ten_crop_predict
from core.training import train
from curator import runs
from curator.cli import main
from curator.config import RunConfig
from curator.pipeline import load_splits
from curator.store import Store
from curator.workspace import Workspace
from tests.dataset_writers import (labelled_images, write_cifar10, write_cifar100, write_csv_dataset,
                                   write_image_tree, write_svhn)

# One epoch, influence over the last layer and a few CG steps keep each run to seconds.
TINY_RUN = ["--epochs", "1", "--params", "last_layer", "--solver-option", "max_iter=5", "--quiet"]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    written = write_cifar10(str(root))
    return str(root), written


def test_cifar10_reads_pixels_labels_and_names(cifar_dir):
    root, written = cifar_dir
    splits = load_dataset("cifar10", seed=0, data_dir=root)
    position = int(splits.train.sample_ids[7].split("-")[-1])

    assert splits.class_names[3] == "cat"
    assert splits.num_classes == 10
    assert splits.in_channels == 3
    assert len(splits.test) == len(written["test_labels"])
    assert np.array_equal(splits.train.display_image(7), written["train_images"][position])
    assert splits.train.labels[7] == written["train_labels"][position]
    assert splits.test.sample_ids[0] == "cifar10-test-00000"


def test_cifar10_holds_out_tenth_per_class(cifar_dir):
    root, written = cifar_dir
    splits = load_dataset("cifar10", seed=3, data_dir=root)
    val_counts = np.bincount(splits.val.labels, minlength=10)

    # 100 training images, 10 per class: 10% stratified is exactly one per class.
    assert len(splits.val) == 10
    assert (val_counts == 1).all()
    assert len(splits.train) == 90
    assert not set(splits.val.sample_ids) & set(splits.train.sample_ids)


def test_cifar10_normalises_with_training_statistics(cifar_dir):
    root, written = cifar_dir
    splits = load_dataset("cifar10", seed=0, data_dir=root)
    train = splits.train.images[torch.arange(len(splits.train))]
    positions = [int(i.split("-")[-1]) for i in splits.train.sample_ids]
    raw = written["train_images"][positions].astype(np.float64) / 255

    assert train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (train.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    assert splits.info["mean"] == pytest.approx(raw.mean(axis=(0, 1, 2)).tolist(), abs=1e-6)


def test_cifar10_validation_split_depends_on_seed(cifar_dir):
    root, _ = cifar_dir
    first = load_dataset("cifar10", seed=0, data_dir=root)
    again = load_dataset("cifar10", seed=0, data_dir=root)
    other = load_dataset("cifar10", seed=1, data_dir=root)

    assert first.val.sample_ids == again.val.sample_ids
    assert first.fingerprint == again.fingerprint
    assert first.val.sample_ids != other.val.sample_ids


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(str(tmp_path))
    splits = load_dataset("cifar100", seed=0, data_dir=str(tmp_path))

    assert splits.num_classes == 100
    assert splits.class_names[42] == "fine42"
    assert sorted(np.unique(splits.test.labels)) == list(range(100))
    assert len(splits.val) == 30


def test_svhn_quota_per_class_from_train_and_extra(tmp_path):
    write_svhn(str(tmp_path), {"train": 8, "test": 3, "extra": 6})
    splits = load_dataset("svhn", seed=0, data_dir=str(tmp_path), val_per_class_train=4, val_per_class_extra=2)
    from_train = [i for i in splits.val.sample_ids if i.startswith("svhn-train")]
    from_extra = [i for i in splits.val.sample_ids if i.startswith("svhn-extra")]

    assert len(from_train) == 40
    assert len(from_extra) == 20
    assert (np.bincount(splits.val.labels, minlength=10) == 6).all()
    assert len(splits.train) == 80 + 60 - 60
    assert len(splits.test) == 30


def test_svhn_label_ten_is_digit_zero(tmp_path):
    digits = write_svhn(str(tmp_path), {"train": 5, "test": 2})
    splits = load_dataset("svhn", seed=0, data_dir=str(tmp_path), val_per_class_train=2, val_per_class_extra=1)
    positions = [int(i.split("-")[-1]) for i in splits.test.sample_ids]

    assert splits.info["use_extra"] is False
    assert np.array_equal(splits.test.labels, digits["test"][positions])
    assert 0 in splits.test.labels
    # Without extra, validation takes (2 + 1) per class from train.
    assert (np.bincount(splits.val.labels, minlength=10) == 3).all()


def test_image_tree_val_folder_is_test(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 10, "bee": 10}, "val": {"ant": 3, "bee": 2}})
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path))

    assert splits.class_names == ["ant", "bee"]
    assert sorted(splits.test.sample_ids)[:2] == ["val/ant/0.png", "val/ant/1.png"]
    assert len(splits.test) == 5
    assert len(splits.val) == 2
    assert all(i.startswith("train/") for i in splits.val.sample_ids)
    assert splits.info["image_size"] == [16, 16]


def test_image_tree_with_test_folder(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}, "val": {"ant": 2, "bee": 2},
                                     "test": {"ant": 1, "bee": 1}})
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path))

    assert all(i.startswith("val/") for i in splits.val.sample_ids)
    assert all(i.startswith("test/") for i in splits.test.sample_ids)
    assert len(splits.train) == 12


def test_image_tree_resize_then_centre_crop(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}}, size=20)
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), image_size=8, resize=10)

    assert splits.train.images[0].shape == (3, 8, 8)
    assert splits.train.display_image(0).shape == (8, 8, 3)


def test_csv_with_split_column(tmp_path):
    splits_by_row = ["test"] * 4 + ["val"] * 4 + ["train"] * 12
    rows = [(f"img/{i}.png", "cat" if i % 2 else "dog", split) for i, split in enumerate(splits_by_row)]
    write_csv_dataset(str(tmp_path), rows, header="path,label,split")
    splits = load_dataset("csv", seed=0, data_dir=str(tmp_path))

    assert splits.class_names == ["cat", "dog"]
    assert sorted(splits.test.sample_ids) == sorted(f"img/{i}.png" for i in range(4))
    assert len(splits.val) == 4
    assert len(splits.train) == 12


def test_csv_integer_labels_keep_indices(tmp_path):
    rows = [(f"{i}.png", str(i % 3 * 2), None) for i in range(30)]
    write_csv_dataset(str(tmp_path), rows)
    splits = load_dataset("csv", seed=0, data_dir=str(tmp_path / "labels.csv"))
    position = splits.train.sample_ids.index("4.png")

    # Labels 0, 2, 4 keep their index; classes 1 and 3 exist without samples.
    assert splits.num_classes == 5
    assert splits.train.labels[position] == 2
    assert splits.info["empty_classes"] == ["1", "3"]


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts_and_value_scale(tmp_path, layout):
    images, labels = labelled_images(60, 3, size=12, channels=1 if layout == "nhw" else 3)
    stored = {"nhwc": images, "nchw": images.transpose(0, 3, 1, 2), "nhw": images[..., 0]}[layout]
    path = tmp_path / "data.npz"
    np.savez(path, x_train=stored[:40].astype(np.float32) / 255, y_train=labels[:40],
             x_test=stored[40:].astype(np.float32) / 255, y_test=labels[40:])
    splits = load_dataset("npz", seed=0, data_dir=str(path))
    position = int(splits.train.sample_ids[0].split("-")[-1])
    expected = images[position][..., 0] if layout == "nhw" else images[position]

    assert splits.info["value_scale"] == 1.0
    assert np.abs(splits.train.display_image(0).astype(int) - expected).max() <= 1
    assert len(splits.test) == 20
    assert len(splits.val) == 4


def test_npz_single_array_pair(tmp_path):
    images, labels = labelled_images(100, 4, size=10)
    np.savez(tmp_path / "all.npz", x=images, y=labels, class_names=np.array(["a", "b", "c", "d"]))
    splits = load_dataset("npz", seed=0, data_dir=str(tmp_path))

    assert splits.class_names == ["a", "b", "c", "d"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 100
    assert len(splits.test) == 15


def test_max_train_samples_keeps_validation(cifar_dir):
    root, _ = cifar_dir
    full = load_dataset("cifar10", seed=0, data_dir=root)
    small = load_dataset("cifar10", seed=0, data_dir=root, max_train_samples=25)

    assert len(small.train) == 25
    assert (np.bincount(small.train.labels, minlength=10) >= 2).all()
    assert set(small.train.sample_ids) <= set(full.train.sample_ids)
    assert small.val.sample_ids == full.val.sample_ids


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("svhn", "train_32x32.mat"),
    ("imagefolder", "train/<class>"), ("npz", ".npz"), ("csv", "path,label"),
])
def test_missing_data_says_where_to_put_it(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError, match=expected.replace(".", r"\.")):
        load_dataset(name, seed=0, data_dir=str(tmp_path / "absent") if name != "csv" else None)


def test_unknown_option_lists_valid_ones(cifar_dir):
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("cifar10", seed=0, data_dir=cifar_dir[0], image_size=64)


def test_registry_has_every_format():
    assert {"digits", "cifar10", "cifar100", "svhn", "imagefolder", "csv", "npz"} <= set(LOADERS)


@pytest.fixture(scope="module")
def format_dirs(tmp_path_factory, cifar_dir):
    root = tmp_path_factory.mktemp("formats")
    write_svhn(str(root / "svhn"), {"train": 6, "test": 2})
    write_image_tree(str(root / "tree"), {"train": {"ant": 12, "bee": 12}, "val": {"ant": 3, "bee": 3}}, size=32)
    write_csv_dataset(str(root / "csv"), [(f"{i}.png", "xy"[i % 2], None) for i in range(40)])
    images, labels = labelled_images(60, 3, size=12)
    np.savez(root / "d.npz", x=images, y=labels)
    return {"cifar10": cifar_dir[0], "svhn": str(root / "svhn"), "imagefolder": str(root / "tree"),
            "csv": str(root / "csv"), "npz": str(root / "d.npz")}


#: Per format: loader options that give every class two validation samples (the pipeline splits
#: validation into two halves per class) and keep the data tiny.
FORMAT_OPTIONS = {
    "cifar10": ["--data-option", "val_fraction=0.2", "--max-train-samples", "30"],
    "svhn": ["--data-option", "val_per_class_train=2", "--data-option", "val_per_class_extra=1",
             "--max-train-samples", "20"],
    "imagefolder": ["--data-option", "image_size=16", "--data-option", "val_fraction=0.2"],
    "csv": [],
    "npz": [],
}


def _run(workspace, *arguments) -> dict:
    assert main(["run", "--workspace", str(workspace), *arguments, *TINY_RUN]) == 0
    store = Store(Workspace(workspace))
    return runs.get_run(store, runs.latest_run_id(store))


@pytest.mark.parametrize("name", sorted(FORMAT_OPTIONS))
def test_pipeline_scores_each_format(tmp_path, format_dirs, name):
    run = _run(tmp_path, "--dataset", name, "--data-dir", format_dirs[name], "--model", "logreg", "--no-round2",
               *FORMAT_OPTIONS[name])
    store = Store(Workspace(tmp_path))

    assert run["status"] == "scored"
    assert len(run["fingerprint"]) == 64
    assert run["diagnostics"]["dataset"]["train"] > 0
    assert store.query("SELECT count(*) FROM metrics WHERE split = 'test'").iloc[0, 0] == 1


@pytest.mark.slow
def test_pipeline_resnet20_on_cifar10_both_rounds(tmp_path, format_dirs):
    run = _run(tmp_path, "--dataset", "cifar10", "--data-dir", format_dirs["cifar10"], "--model", "resnet20",
               *FORMAT_OPTIONS["cifar10"])

    assert run["status"] == "done"
    assert run["config"]["model"] == "resnet20"


@pytest.mark.parametrize("preset, name, overrides", [
    # ResNet-110's recipe with ResNet-20, the same family at a sixth of the layers.
    ("resnet110-cifar10-cpu", "cifar10", {"model": "resnet20", "dataset_options": {"val_fraction": 0.2}}),
    # ZCA on 32x32 RGB takes an eigendecomposition of a 3072x3072 matrix; its own test uses 6x6 images.
    ("allcnn_c-cifar10-cpu", "cifar10", {"dataset_options": {"val_fraction": 0.2, "whiten": "none"}}),
    ("densenet40-svhn-cpu", "svhn", {"dataset_options": {"val_per_class_train": 2, "val_per_class_extra": 1}}),
    ("resnet18-imagenet-cpu", "imagefolder", {"dataset_options": {"image_size": 32, "resize": 36}}),
])
def test_preset_model_trains_on_format(format_dirs, preset, name, overrides):
    # One step of 10 samples; the plateau schedule (ImageNet) also evaluates validation.
    settings = RunConfig.from_preset(preset, data_dir=format_dirs[name], epochs=1, batch_size=10,
                                     max_train_samples=10, **overrides)
    splits = load_splits(settings)
    model = build_model(settings.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                        image_size=tuple(splits.info["image_size"]), seed=0, **settings.round_model_options(2))
    before = [p.detach().clone() for p in model.parameters()]

    history = train(model, splits.train, settings.train_config(2), val_data=splits.val)

    assert len(history) == 1
    assert np.isfinite(history[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_zca_whitening_decorrelates_pixels(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 1, 1, 1))
    # Strongly correlated pixels: a shared brightness plus a little independent noise.
    images = np.clip(128 + 40 * base + 5 * rng.normal(size=(400, 6, 6, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "w.npz", x=images, y=np.arange(400) % 2)
    plain = load_dataset("npz", seed=0, data_dir=str(tmp_path / "w.npz"))
    whitened = load_dataset("npz", seed=0, data_dir=str(tmp_path / "w.npz"), whiten="zca")

    def correlation(split):
        flat = split.images[torch.arange(len(split))].flatten(1).double()
        return torch.corrcoef(flat.T)[0, 1:].abs().mean().item()

    assert correlation(plain.train) > 0.8
    assert correlation(whitened.train) < 0.1
    assert whitened.info["whiten"] == "zca"


def test_preset_settings_stored_and_overridden(tmp_path, cifar_dir):
    config = RunConfig.from_preset("resnet110-cifar10-cpu", data_dir=cifar_dir[0], model="resnet20", epochs=1)

    assert config.preset == "resnet110-cifar10-cpu"
    assert config.optimizer == "sgd"
    assert config.weight_decay == 1e-4
    assert config.batch_size == 128
    assert config.round2_augmentation == "flip_translate4"
    assert config.model == "resnet20"
    assert config.epochs == 1
    assert RunConfig.from_dict(config.to_dict()) == config


def test_ten_crop_averages_ten_views(tmp_path):
    write_image_tree(str(tmp_path), {"train": {"ant": 6, "bee": 6}}, size=12)
    splits = load_dataset("imagefolder", seed=0, data_dir=str(tmp_path), image_size=8, memory_limit=0,
                          val_fraction=0.2)
    large = splits.test.resized((12, 12), resize=12)
    model = build_model("logreg", num_classes=2, in_channels=3, image_size=(8, 8), seed=0)
    images = large.images[torch.arange(len(large))]
    # The ten views written out: four corners and the centre, then the same of the mirrored image.
    views = []
    for image in (images, images.flip(-1)):
        views += [image[..., :8, :8], image[..., :8, 4:], image[..., 4:, :8], image[..., 4:, 4:], image[..., 2:10, 2:10]]
    with torch.no_grad():
        expected = torch.stack([torch.softmax(model(v), dim=1) for v in views]).mean(dim=0)

    losses, predictions = ten_crop_predict(model, large, crop=8)

    assert np.array_equal(predictions, expected.argmax(1).numpy())
    assert np.allclose(losses, -np.log(expected[torch.arange(len(large)), torch.as_tensor(large.labels)].numpy()),
                       atol=1e-5)


def _ten_views(images: torch.Tensor, crop: int) -> list:
    """The four corners and the centre of ``images``, then the same of their mirror images."""
    size = images.shape[-1]
    low, high, middle = slice(0, crop), slice(size - crop, size), slice((size - crop) // 2, (size - crop) // 2 + crop)
    views = []
    for image in (images, images.flip(-1)):
        views += [image[..., rows, columns] for rows, columns in
                  ((low, low), (low, high), (high, low), (high, high), (middle, middle))]
    return views


def test_pipeline_records_ten_crop_test_error(tmp_path, format_dirs):
    run = _run(tmp_path, "--dataset", "imagefolder", "--data-dir", format_dirs["imagefolder"], "--model", "logreg",
               "--no-round2", "--test-crops", "10", "--data-option", "image_size=16", "--data-option", "resize=20",
               "--data-option", "val_fraction=0.2")
    store = Store(Workspace(tmp_path))
    rows = store.query("SELECT split, error, loss FROM metrics WHERE round = 1").set_index("split")
    splits = load_splits(RunConfig.from_dict(run["config"]))
    model = build_model("logreg", num_classes=2, in_channels=3, image_size=(16, 16), seed=0)
    model.load_state_dict(torch.load(Workspace(tmp_path).run_dir(run["run_id"]) / "round1.pt", weights_only=True))
    model.eval()
    large = splits.test_files.resized((20, 20), 20)
    images = large.images[torch.arange(len(large))]
    with torch.no_grad():
        probabilities = torch.stack([torch.softmax(model(view), dim=1) for view in _ten_views(images, 16)]).mean(0)
        centre = model(splits.test.images[torch.arange(len(splits.test))]).argmax(1).numpy()
    labels = torch.as_tensor(splits.test.labels)

    assert sorted(rows.index) == ["test", "test_centre_crop", "validation"]
    assert rows.loc["test", "error"] == pytest.approx(float((probabilities.argmax(1) != labels).float().mean()))
    assert rows.loc["test", "loss"] == pytest.approx(float(-probabilities[torch.arange(len(labels)), labels].log().mean()),
                                                     rel=1e-5)
    assert rows.loc["test_centre_crop", "error"] == pytest.approx(float(np.mean(centre != splits.test.labels)))


def test_ten_crop_on_arrays_rejected_before_storing(tmp_path, capsys):
    assert main(["run", "--workspace", str(tmp_path), "--test-crops", "10", *TINY_RUN]) != 0

    assert "set test crops to 1 (--test-crops 1)" in capsys.readouterr().err
    assert runs.latest_run_id(Store(Workspace(tmp_path))) is None


class _Harmless:
    """Pickles as a call to ``os.getcwd``, standing in for a tampered batch file that runs code."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(str(tmp_path), per_batch=10, test_count=10)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as handle:
        pickle.dump({"data": _Harmless(), "labels": [0]}, handle, protocol=2)

    with pytest.raises(DatasetError, match=r"data_batch_2 is not a readable CIFAR batch file.*posix\.getcwd"):
        load_dataset("cifar10", seed=0, data_dir=str(tmp_path))


@pytest.mark.parametrize("content, expected", [
    (b"x,y\n1,2\n", "not a zip archive"),
    (b"\x93NUMPY\x01\x00" + b"\x00" * 64, "a single .npy array"),
    (b"PK\x03\x04truncated", "could not be read as a NumPy .npz archive"),
])
def test_npz_not_an_archive_named(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    code = main(["run", "--workspace", str(tmp_path / "ws"), "--dataset", "npz", "--data-dir", str(path),
                 *TINY_RUN])

    err = capsys.readouterr().err
    assert code == 2
    assert f"{path} " in err
    assert expected in err
    assert "allow_pickle" not in err
    assert "Traceback" not in err
    assert path.read_bytes() == content


def test_run_reads_a_damaged_folder_once(tmp_path, caplog):
    write_image_tree(str(tmp_path / "tree"), {"train": {"ant": 12, "bee": 12}}, size=32)
    (tmp_path / "tree" / "train" / "bee" / "notes.png").write_text("not a picture")
    caplog.set_level(logging.WARNING, logger="core.datasets")

    _run(tmp_path / "workspace", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "tree"), "--model",
         "logreg", "--no-round2", *FORMAT_OPTIONS["imagefolder"])

    # `curator run` creates the run and trains it in one process: one load, one warning per skip.
    skips = [record.getMessage() for record in caplog.records if "skipped train/bee/notes.png" in record.getMessage()]
    assert len(skips) == 1, skips


@pytest.mark.parametrize("labels", [np.array(["a", "b", "c", "d"]), np.array([b"a", b"b", b"c", b"d"])])
def test_npz_text_labels_point_to_class_names(tmp_path, labels):
    images, numbers = labelled_images(40, 4, size=8)
    np.savez(tmp_path / "d.npz", x=images, y=labels[numbers])

    with pytest.raises(DatasetError, match=r"y in .*d\.npz has dtype .*class_names array") as raised:
        load_dataset("npz", seed=0, data_dir=str(tmp_path / "d.npz"))

    assert f"has dtype {labels.dtype} " in str(raised.value)


@pytest.mark.parametrize("labels, expected", [
    (np.where(np.arange(40) == 5, np.nan, np.arange(40) % 4), r"label nan at y\[5\] in .*not a whole number"),
    (np.arange(40) % 4 - 4, r"label -4 at y\[0\] in .* is negative \(40 negative label\(s\)\)"),
    (np.arange(40) % 4 - 1, r"label -1 at y\[0\] in .* is negative \(10 negative label\(s\)\)"),
])
def test_npz_bad_label_values_named(tmp_path, labels, expected):
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 4, 4), np.uint8), y=labels)

    with pytest.raises(DatasetError, match=expected):
        load_dataset("npz", seed=0, data_dir=str(tmp_path / "d.npz"))


def test_npz_object_labels_named(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 4, 4), np.uint8), y=np.array([{}, 1, 2, 3], dtype=object))

    with pytest.raises(DatasetError, match=r"y in .*d\.npz cannot be loaded .*save it as a numeric array"):
        load_dataset("npz", seed=0, data_dir=str(tmp_path / "d.npz"))


@pytest.mark.parametrize("options, expected", [
    ({"val_fraction": 1.5}, r"dataset 'npz': val_fraction must be above 0 and below 1, got 1\.5"),
    ({"test_fraction": 0.6, "val_fraction": 0.5}, r"dataset 'npz': test_fraction 0\.6 and val_fraction 0\.5 add up"),
])
def test_npz_rejects_bad_fractions(tmp_path, options, expected):
    images, labels = labelled_images(40, 4, size=8)
    np.savez(tmp_path / "d.npz", x=images, y=labels)

    with pytest.raises(DatasetError, match=expected):
        load_dataset("npz", seed=0, data_dir=str(tmp_path / "d.npz"), **options)


def test_cifar_rejects_fraction_above_one(cifar_dir):
    with pytest.raises(DatasetError, match=r"dataset 'cifar10': val_fraction must be above 0 and below 1, got 2"):
        load_dataset("cifar10", seed=0, data_dir=cifar_dir[0], val_fraction=2)


@pytest.mark.parametrize("option, expected", [
    ("image_size=abc", "image_size must be a positive whole number or [height, width], got 'abc'"),
    ("val_fraction=1.5", "val_fraction must be above 0 and below 1, got 1.5"),
])
def test_cli_names_bad_image_option(tmp_path, capsys, option, expected):
    write_image_tree(str(tmp_path / "tree"), {"train": {"ant": 6, "bee": 6}})
    code = main(["run", "--workspace", str(tmp_path / "ws"), "--dataset", "imagefolder", "--data-dir",
                 str(tmp_path / "tree"), "--data-option", option, *TINY_RUN])

    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "invalid literal" not in err
    assert "Traceback" not in err
