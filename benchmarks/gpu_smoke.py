"""Cost of each data dropout preset at full size, measured on a few batches and extrapolated.

For every chosen preset this script builds the preset's network and dataset format (real data
under ``--data-root`` when it is there, otherwise synthetic files of the real image size written
to a temporary folder), then measures:

1. training: seconds per step over ``--steps`` steps after two warm-up steps, with the preset's
   batch size, augmentation and mixed precision (bfloat16 autocast on CUDA);
2. influence: seconds per sample of the validation-gradient pass, of one Gauss-Newton curvature
   product (uncached, as at full size) and of JVP scoring, over the parameters the preset uses;
3. peak CUDA memory of each phase.

From these it estimates, for the full-size dataset, the time of one epoch, of both rounds, and of
the influence step (two validation halves, ``CG_STEPS`` curvature products each, two scoring
passes), and prints the influence step in epoch equivalents. Estimates assume that cost grows
linearly with the number of samples and ignore data loading beyond what the measured batches
include. Synthetic ImageNet folders have 10 classes, so the classifier is smaller than
ImageNet's (ResNet-18: 11.2M parameters instead of 11.7M).

Run on a GPU machine (about 3-6 minutes for all presets)::

    benchmarks/gpu_smoke.sh                      # every full-size preset
    benchmarks/gpu_smoke.sh --presets resnet110-cifar10,resnet18-imagenet --data-root /data

and on a CPU as a check of the script itself (2 steps of 8 samples per preset; about 9 minutes for
four presets on 2 busy CPU cores)::

    benchmarks/gpu_smoke.sh --tiny
"""

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.datasets import load_dataset  # noqa: E402
from core.device import default_device  # noqa: E402
from core.influence import InfluenceProblem, cross_entropy_losses  # noqa: E402
from core.models import build_model, count_parameters  # noqa: E402
from core.presets import PAPER_PRESETS, preset_settings  # noqa: E402
from core.training import TrainConfig, train  # noqa: E402

#: Full-size training and validation counts per dataset, for the extrapolation.
FULL_SIZES = {
    "cifar10": {"train": 45_000, "val": 5_000}, "cifar100": {"train": 45_000, "val": 5_000},
    "svhn": {"train": 598_388, "val": 6_000},
    # ImageNet-1k: 1,281,167 training images, 10% held out for validation by default.
    "imagefolder": {"train": 1_153_050, "val": 128_117},
}
#: Curvature products per validation half assumed for the CG solve (the influence defaults
#: report 150-200 products at damping 0.01 on the default CNN; an estimate for these networks).
CG_STEPS = 200
#: Presets measured by default: one per network and dataset kind (CIFAR-100 costs as CIFAR-10).
DEFAULT_PRESETS = ["resnet110-cifar10", "resnet152-svhn", "densenet40-cifar10", "densenet40-svhn",
                   "allcnn_c-cifar10", "resnet18-imagenet", "resnet34-imagenet"]

logger = logging.getLogger("gpu_smoke")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                        help=f"comma-separated presets (choices: {', '.join(PAPER_PRESETS)})")
    parser.add_argument("--steps", type=int, default=10, help="measured training steps per preset (default 10)")
    parser.add_argument("--influence-samples", type=int, default=256,
                        help="samples each influence phase is timed on (default 256)")
    parser.add_argument("--data-root", default=None,
                        help="folder with real data: cifar-10-batches-py, cifar-100-python, svhn/, imagenet/")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU check: the presets' -cpu variants, 2 steps of 8 samples, 16 influence samples")
    parser.add_argument("--output", default=None, help="also write the results as JSON to this file")
    return parser.parse_args()


def synthetic_data(dataset: str, folder: str, count: int, image_side: int) -> str:
    """Write ``count`` random training images (plus test and validation) in ``dataset``'s format; return data_dir."""
    rng = np.random.default_rng(0)
    if dataset in ("cifar10", "cifar100"):
        return _synthetic_cifar(dataset, folder, count, rng)
    if dataset == "svhn":
        import scipy.io

        for part, size in (("train", count), ("test", 100), ("extra", 60)):
            labels = np.arange(size) % 10 + 1
            images = rng.integers(0, 256, (32, 32, 3, size), dtype=np.uint8)
            scipy.io.savemat(os.path.join(folder, f"{part}_32x32.mat"), {"X": images, "y": labels.reshape(-1, 1)})
        return folder
    from PIL import Image

    # ImageNet-like 4:3 JPEGs (512x384 for the full presets) in 10 classes, smooth enough to
    # compress like photos: random 16x12 noise scaled up.
    for split, size in (("train", count), ("val", 20)):
        for i in range(size):
            path = os.path.join(folder, split, f"class{i % 10}", f"{i}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            small.resize((image_side * 4 // 3, image_side), Image.Resampling.BILINEAR).save(path, quality=90)
    return folder


def _synthetic_cifar(dataset: str, folder: str, count: int, rng) -> str:
    import pickle

    ten = dataset == "cifar10"
    classes = 10 if ten else 100
    target = os.path.join(folder, "cifar-10-batches-py" if ten else "cifar-100-python")
    os.makedirs(target, exist_ok=True)
    key = "labels" if ten else "fine_labels"
    if ten:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        names = ["train", "test"]
    per_file = math.ceil(count / (5 if ten else 1))
    for name in names:
        size = 100 if "test" in name else per_file
        with open(os.path.join(target, name), "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8),
                         key: (np.arange(size) % classes).tolist()}, handle, protocol=2)
    return folder


def real_data_dir(data_root, dataset: str):
    """Return the real data folder for ``dataset`` under ``data_root``, or None."""
    if not data_root:
        return None
    candidates = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "svhn",
                  "imagefolder": "imagenet"}
    path = os.path.join(data_root, candidates[dataset])
    if not os.path.exists(path):
        return None
    return data_root if dataset.startswith("cifar") else path


def peak_memory_mb(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(model, splits, settings: dict, steps: int, device) -> dict:
    """Return seconds per training step (after two warm-up steps) and the peak memory."""
    batch = settings["batch_size"]
    config = TrainConfig(epochs=1, batch_size=batch, optimizer=settings["optimizer"], lr=settings["lr"],
                         momentum=settings["momentum"], weight_decay=settings["weight_decay"],
                         augmentation=settings["round2_augmentation"])
    warm = np.arange(min(2 * batch, len(splits.train)))
    train(model, splits.train, config, indices=warm, device=device)

    measured = np.arange(min(steps * batch, len(splits.train)))
    reset_peak(device)
    sync(device)
    started = time.perf_counter()
    train(model, splits.train, config, indices=measured, device=device)
    sync(device)
    seconds = time.perf_counter() - started
    return {"seconds_per_step": seconds / math.ceil(len(measured) / batch), "steps": math.ceil(len(measured) / batch),
            "peak_mb": peak_memory_mb(device)}


def measure_influence(model, splits, settings: dict, samples: int, device) -> dict:
    """Return seconds per sample of the validation gradient, a curvature product and scoring."""
    model.eval()
    params = settings.get("params", "all")
    subset = torch.utils.data.Subset(splits.train, range(min(samples, len(splits.train))))
    problem = InfluenceProblem(model, cross_entropy_losses, subset, params=params, curvature="gauss_newton",
                               batch_size=min(256, settings["batch_size"] * 2), cache_limit=0)
    val = torch.utils.data.Subset(splits.val, range(min(samples, len(splits.val))))
    result = {"num_params": problem.num_params}

    reset_peak(device)
    gradient, result["val_gradient_s"] = timed(device, problem.loss_gradient_sum, val)
    result["val_gradient_s"] /= len(val)
    direction = gradient / gradient.norm().clamp_min(1e-12)
    problem.curvature_product(direction)  # warm-up
    _, result["curvature_product_s"] = timed(device, problem.curvature_product, direction)
    result["curvature_product_s"] /= len(subset)
    _, result["score_s"] = timed(device, _score_all, problem, direction, subset)
    result["score_s"] /= len(subset)
    result["peak_mb"] = peak_memory_mb(device)
    return result


def _score_all(problem, direction, data):
    for inputs, targets, _ in problem.batches(data):
        problem.directional_derivatives(direction, inputs, targets)


def timed(device, function, *args):
    sync(device)
    started = time.perf_counter()
    result = function(*args)
    sync(device)
    return result, time.perf_counter() - started


def estimate(settings: dict, training: dict, influence: dict) -> dict:
    """Extrapolate the measurements to the full-size dataset of ``settings``."""
    sizes = FULL_SIZES[settings["dataset"]]
    steps_per_epoch = math.ceil(sizes["train"] / settings["batch_size"])
    epoch = training["seconds_per_step"] * steps_per_epoch
    influence_s = (influence["val_gradient_s"] * sizes["val"]
                   + 2 * CG_STEPS * influence["curvature_product_s"] * sizes["train"]
                   + 2 * influence["score_s"] * sizes["train"])
    return {"epoch_s": epoch, "two_rounds_h": 2 * epoch * settings["epochs"] / 3600,
            "influence_h": influence_s / 3600, "influence_epochs": influence_s / epoch}


def run_preset(name: str, args, device, scratch: str) -> dict:
    settings = preset_settings(f"{name}-cpu" if args.tiny else name)
    steps = 2 if args.tiny else args.steps
    if args.tiny:
        settings["batch_size"] = 8
    # At least two samples per class, so that CIFAR-100's stratified subset keeps every class.
    samples = max((steps + 2) * settings["batch_size"], 200)
    options = dict(settings.get("dataset_options", {}))
    data_dir = real_data_dir(args.data_root, settings["dataset"])
    if data_dir is None:
        # Presets of one dataset and batch size share their synthetic files (ResNet-18 and -34).
        side = options.get("resize") or 32
        folder = os.path.join(scratch, f"{settings['dataset']}-{side}-{samples}")
        if os.path.isdir(folder):
            data_dir = folder
        else:
            os.makedirs(folder)
            data_dir = synthetic_data(settings["dataset"], folder, samples + 200, int(side * 1.5) if side > 32 else 32)
        options.update({"svhn": {"val_per_class_train": 4, "val_per_class_extra": 2},
                        "imagefolder": {"val_fraction": 0.05}}.get(settings["dataset"], {}))
    if settings["dataset"] == "imagefolder":
        options["verify"] = "header"

    started = time.perf_counter()
    splits = load_dataset(settings["dataset"], seed=0, data_dir=data_dir, max_train_samples=samples, **options)
    load_s = time.perf_counter() - started
    model = build_model(settings["model"], num_classes=splits.num_classes, in_channels=splits.in_channels,
                        image_size=tuple(splits.info["image_size"]), seed=0, **settings.get("model_options", {}))
    model.to(device)

    training = measure_training(model, splits, settings, steps, device)
    influence = measure_influence(model, splits, settings, 16 if args.tiny else args.influence_samples, device)
    return {"preset": name, "model": settings["model"], "parameters": count_parameters(model),
            "data": "real" if args.data_root and real_data_dir(args.data_root, settings["dataset"]) else "synthetic",
            "load_s": load_s, "training": training, "influence": influence,
            "estimate": estimate(settings, training, influence)}


def print_table(results: list) -> None:
    header = (f"{'preset':<22}{'params':>9}{'step s':>9}{'train MB':>10}{'epoch s':>10}{'2 rounds h':>11}"
              f"{'infl. h':>9}{'infl./epoch':>12}{'infl. MB':>10}")
    print(header)
    for row in results:
        est = row["estimate"]
        print(f"{row['preset']:<22}{row['parameters'] / 1e6:>8.2f}M{row['training']['seconds_per_step']:>9.3f}"
              f"{row['training']['peak_mb']:>10.0f}{est['epoch_s']:>10.1f}{est['two_rounds_h']:>11.2f}"
              f"{est['influence_h']:>9.2f}{est['influence_epochs']:>12.1f}{row['influence']['peak_mb']:>10.0f}")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device("cpu") if args.tiny else default_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(PAPER_PRESETS))
    if unknown:
        raise SystemExit(f"unknown preset(s) {unknown}; choose from {sorted(PAPER_PRESETS)}")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{'tiny CPU check' if args.tiny else f'{args.steps} steps'}; estimates assume {CG_STEPS} CG products "
          f"per validation half", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_smoke-") as scratch:
        for name in names:
            started = time.perf_counter()
            try:
                results.append(run_preset(name, args, device, scratch))
            except (RuntimeError, ValueError, OSError) as error:
                print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
                continue
            print(f"{name}: measured in {time.perf_counter() - started:.0f} s", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print_table(results)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0 if len(results) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
