"""The denoising task: DnCNN, fixed noisy patches, PSNR, influence signs, and the pipeline end to end.

The end-to-end tests write small grayscale PNG crops of scikit-image's bundled images into
train/, val/ and test/ folders, run ``curator run --task denoise`` on a 3-layer DnCNN for two
epochs, and open the two denoising pages on the result with ``AppTest``.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.io
import torch
from streamlit.testing.v1 import AppTest

from core.datasets.denoising import PatchSplit, embedded_image, make_image_set, make_patches
from core.denoising import flip_rotate_pairs, mse_losses, noisy_psnr, psnr, train_denoiser
from core.influence import compute_influence
from core.models.dncnn import DnCNN
from core.training import TrainConfig
from curator import runs
from curator.cli import main
from curator.store import Store
from curator.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
# The first script run of a page imports torch, scikit-image and plotly; two busy cores take a while.
PAGE_TIMEOUT = 180

FOLDER_IMAGES = {"train": ("brick", "text", "coffee"), "val": ("moon", "coins"), "test": ("camera", "astronaut")}
TINY_DENOISE = ["--task", "denoise", "--quiet", "--epochs", "2", "--batch-size", "8",
                "--data-option", "num_patches=24", "--data-option", "patch_size=16", "--data-option", "crop_size=32",
                "--model-option", "depth=3", "--model-option", "width=8", "--solver-option", "max_iter=30",
                "--drop-rule", "top_k", "--drop-value", "3", "--class-cap", "1"]


def write_image_folders(root: Path, size: int = 40, count: dict = None) -> dict:
    """Write ``size`` x ``size`` uint8 crops of bundled images as PNGs; return the clean arrays by split and name."""
    written = {}
    for split, names in FOLDER_IMAGES.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names[:(count or {}).get(split, len(names))]:
            image = np.round(embedded_image(name)[60:60 + size, 80:80 + size] * 255).astype(np.uint8)
            skimage.io.imsave(folder / f"{name}.png", image, check_contrast=False)
            written.setdefault(split, {})[name] = image.astype(np.float64) / 255
    return written


def test_psnr_matches_hand_computation():
    clean = np.array([[0.0, 0.5], [1.0, 0.25]])
    estimate = np.array([[0.1, 0.4], [1.2, 0.45]])

    # Clipped to [0, 1] the errors are 0.1, -0.1, 0 and 0.2: MSE 0.015, PSNR 10 log10(1 / 0.015).
    assert psnr(clean, estimate) == pytest.approx(18.2390874095, abs=1e-9)
    # Unclipped, the 1.2 adds an error of 0.2: MSE 0.025.
    assert psnr(clean, estimate, clip=False) == pytest.approx(16.0205999133, abs=1e-9)


def test_dncnn_starts_as_identity_any_size():
    model = DnCNN(depth=4, width=8).eval()
    image = torch.rand(2, 1, 23, 37)

    with torch.no_grad():
        output = model(image)

    assert output.shape == image.shape
    assert torch.equal(output, image)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 4
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2


def test_patches_fixed_and_traceable_to_source():
    images = {"camera": embedded_image("camera")[:100, :120], "moon": embedded_image("moon")[:90, :90]}
    first = make_patches(images, patch_size=16, crop_size=64, num_patches=41, sigma=25.0, seed=3)
    again = make_patches(images, patch_size=16, crop_size=64, num_patches=41, sigma=25.0, seed=3)

    assert len(first) == 41
    assert torch.equal(first.noisy, again.noisy)
    assert len(set(first.sample_ids)) == 41
    for index in (0, 20, 40):
        name, y, x = first.source_of(index)
        assert first.sample_ids[index] == f"{name}@{y},{x}"
        assert np.array_equal(first.clean[index, 0].numpy(), images[name][y:y + 16, x:x + 16])
    noise = (first.noisy - first.clean).numpy() * 255
    assert noise.std() == pytest.approx(25.0, rel=0.05)
    assert list(np.bincount(first.labels)) == [21, 20]


def test_flip_rotate_pairs_share_transform():
    clean = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(16, 1, 1, 1)
    offset = torch.arange(32, dtype=torch.float32).reshape(32, 1, 1, 1)
    noisy = clean + offset

    out_noisy, out_clean = flip_rotate_pairs(noisy, clean, torch.Generator().manual_seed(0))

    assert torch.equal(out_noisy - out_clean, offset.expand_as(clean))
    assert not torch.equal(out_clean, clean)


def test_influence_signs_favorable_and_garbage():
    torch.manual_seed(0)
    train_images = {name: embedded_image(name)[100:164, 100:164] for name in ("brick", "coffee", "text", "camera")}
    val = make_image_set({"moon": embedded_image("moon")[200:248, 200:248]}, sigma=25.0, seed=0, stream=14)
    base = make_patches(train_images, patch_size=16, crop_size=64, num_patches=48, sigma=25.0, seed=0)
    noisy, clean = val.noisy[0], val.clean[0]
    # Patch 48 is cut from the validation image with its true clean target. Patch 49 is cut from
    # it too, but its target is random black and white pixels.
    garbage = torch.from_numpy((np.random.default_rng(0).uniform(size=(1, 16, 16)) > 0.5).astype(np.float32))
    train = PatchSplit(torch.cat([base.noisy, noisy[None, :, 8:24, 8:24], noisy[None, :, 24:40, 24:40]]),
                       torch.cat([base.clean, clean[None, :, 8:24, 8:24], garbage[None]]),
                       np.r_[base.labels, 4, 4], np.r_[base.ys, 8, 24], np.r_[base.xs, 8, 24],
                       base.source_names + ["moon"])
    model = DnCNN(depth=3, width=8)
    train_denoiser(model, train, TrainConfig(epochs=20, batch_size=16, lr=1e-2, milestones=[13], weight_decay=0))

    scores = compute_influence(model, mse_losses, train, val.loader(), solver="cg", damping=0.1, tol=1e-3).scores

    assert scores[48] < 0
    assert scores[49] > 0
    assert int(torch.argmax(scores)) == 49


def test_noisy_psnr_is_unclipped():
    images = make_image_set({"flat": np.full((64, 64), 0.5, dtype=np.float32)}, sigma=25.0, seed=0, stream=1)
    noise = (images.noisy[0] - images.clean[0]).numpy().astype(np.float64)

    expected = 10 * math.log10(1.0 / np.mean(noise ** 2))
    assert noisy_psnr(images)[0]["psnr"] == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("images")
    clean = write_image_folders(data)
    root = tmp_path_factory.mktemp("workspace")
    assert main(["run", "--workspace", str(root), "--data-dir", str(data), *TINY_DENOISE]) == 0
    workspace = Workspace(root)
    store = Store(workspace)
    return workspace, store, runs.latest_run_id(store), clean


def test_cli_run_stores_psnr_per_image(denoise_run, capsys):
    workspace, store, run_id, clean = denoise_run
    capsys.readouterr()
    assert main(["results", "--workspace", str(workspace.root), "--run", run_id, "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    rows = pd.DataFrame(results["psnr"])
    test_rows = rows[rows["split"] == "test"]
    saved = {label: np.load(workspace.run_dir(run_id) / "denoised" / name)
             for label, name in ((0, "noisy-test.npz"), (1, "round1-test.npz"))}

    assert results["status"] == "done"
    assert results["config"]["task"] == "denoise"
    assert sorted(test_rows["round"].unique()) == [0, 1, 2]
    assert (test_rows.groupby("round")["image"].apply(sorted) == [["astronaut", "camera"]] * 3).all()
    for row in test_rows[test_rows["round"] < 2].itertuples():
        error = np.mean((saved[row.round][row.image].astype(np.float64) - clean["test"][row.image]) ** 2)
        assert row.psnr == pytest.approx(10 * math.log10(1 / error), abs=1e-3)
    noisy_mean = test_rows[test_rows["round"] == 0]["psnr"].mean()
    assert 20 * math.log10(255 / 25) - 1 < noisy_mean < 20 * math.log10(255 / 25) + 1


def test_cli_run_scores_patches_with_provenance(denoise_run):
    workspace, store, run_id, _ = denoise_run
    scores = pd.read_parquet(workspace.scores_dir(run_id))
    approval = store.query("SELECT n_drop, n_total FROM approvals WHERE run_id = ?", [run_id]).iloc[0]
    round2_epochs = store.query("SELECT count(*) AS n FROM history WHERE run_id = ? AND round = 2", [run_id])

    assert len(scores) == 24
    assert set(scores["source_image"]) == {"brick", "text", "coffee"}
    assert (scores["sample_id"] == scores["source_image"] + "@" + scores["y"].astype(str) + ","
            + scores["x"].astype(str)).all()
    assert ((scores["y"] >= 0) & (scores["y"] <= 40 - 16) & (scores["x"] >= 0) & (scores["x"] <= 40 - 16)).all()
    assert np.allclose(scores["influence"], scores["influence_a"] + scores["influence_b"])
    assert int(approval["n_total"]) == 24
    assert int(approval["n_drop"]) == min(3, int((scores["influence"] > 0).sum()))
    assert int(round2_epochs["n"].iloc[0]) == 2


def test_review_page_shows_top_patches(denoise_run, monkeypatch):
    workspace, store, run_id, _ = denoise_run
    monkeypatch.setenv("CURATOR_WORKSPACE", str(workspace.root))
    scores = pd.read_parquet(workspace.scores_dir(run_id)).sort_values(["influence", "index"],
                                                                       ascending=[False, True])

    app = AppTest.from_file(str(ROOT / "pages" / "denoise_review.py"), default_timeout=PAGE_TIMEOUT).run()
    captions = [item.caption for image in app.get("image") for item in image.proto.imgs]

    assert not app.exception, [element.value for element in app.exception]
    assert app.metric[0].value == "24"
    assert len(app.get("plotly_chart")) == 1
    assert len(app.get("image")) == 2 * 12
    patch_captions = [caption for caption in captions if "influence" in caption]
    assert [caption.split(" ·")[0] for caption in patch_captions] == list(scores["sample_id"][:12])


def test_results_page_table_matches_store(denoise_run, monkeypatch):
    workspace, store, run_id, _ = denoise_run
    monkeypatch.setenv("CURATOR_WORKSPACE", str(workspace.root))
    stored = store.query("SELECT round, image, psnr FROM psnr WHERE run_id = ? AND split = 'test'", [run_id])

    app = AppTest.from_file(str(ROOT / "pages" / "denoise_results.py"), default_timeout=PAGE_TIMEOUT).run()
    table = app.dataframe[0].value.set_index("image")
    captions = [item.caption for image in app.get("image") for item in image.proto.imgs]

    assert not app.exception, [element.value for element in app.exception]
    assert list(table.columns) == ["noisy", "round 1", "round 2"]
    for row in stored.itertuples():
        assert table.loc[row.image, {0: "noisy", 1: "round 1", 2: "round 2"}[row.round]] == pytest.approx(row.psnr)
    assert table.loc["average", "round 1"] == pytest.approx(stored[stored["round"] == 1]["psnr"].mean())
    first = app.selectbox(key="denoise_results_image").value
    for label, round_number in (("noisy", 0), ("round 1", 1), ("round 2", 2)):
        value = stored[(stored["round"] == round_number) & (stored["image"] == first)]["psnr"].iloc[0]
        assert f"{label}: {value:.2f} dB" in captions


@pytest.mark.parametrize("page", ["denoise_review.py", "denoise_results.py"])
def test_denoise_pages_guard_empty_workspace(tmp_path, monkeypatch, page):
    monkeypatch.setenv("CURATOR_WORKSPACE", str(tmp_path / "empty"))

    app = AppTest.from_file(str(ROOT / "run_app.py"), default_timeout=PAGE_TIMEOUT).run()
    app.switch_page(f"pages/{page}").run()

    assert not app.exception, [element.value for element in app.exception]
    assert "There are no runs yet" in app.info[0].value
    assert not app.get("plotly_chart")


def test_verify_and_experiment_reject_denoise(denoise_run, capsys):
    workspace, _, run_id, _ = denoise_run

    verify_code = main(["verify", "--workspace", str(workspace.root), "--run", run_id, "--k", "2"])
    verify_error = capsys.readouterr().err
    experiment_code = main(["experiment", "--workspace", str(workspace.root), "--seeds", "2", *TINY_DENOISE])
    experiment_error = capsys.readouterr().err

    assert verify_code == 2
    assert f"run {run_id} is a denoise run" in verify_error
    assert experiment_code == 2
    assert "this run's task is 'denoise'" in experiment_error


def test_denoise_run_rejects_missing_folder(tmp_path, capsys):
    code = main(["run", "--workspace", str(tmp_path / "ws"), "--data-dir", str(tmp_path / "missing"), *TINY_DENOISE])

    assert code == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "missing" / "train") in error
    assert "does not exist" in error


def test_denoise_run_rejects_one_validation_image(tmp_path, capsys):
    write_image_folders(tmp_path / "images", count={"val": 1})

    code = main(["run", "--workspace", str(tmp_path / "ws"), "--data-dir", str(tmp_path / "images"), *TINY_DENOISE])

    assert code == 2
    assert "at least 2" in capsys.readouterr().err
    assert runs.list_runs(Store(Workspace(tmp_path / "ws"))).empty


def test_single_epoch_round1_warned(tmp_path):
    write_image_folders(tmp_path / "images")
    assert main(["run", "--workspace", str(tmp_path / "workspace"), "--data-dir", str(tmp_path / "images"),
                 *TINY_DENOISE, "--epochs", "1", "--no-round2"]) == 0
    store = Store(Workspace(tmp_path / "workspace"))
    run = runs.get_run(store, runs.latest_run_id(store))
    warnings = run["diagnostics"]["influence"]["convergence_warnings"]

    assert run["config"]["epochs"] == 1
    assert any("round 1 ran a single epoch" in message for message in warnings)
