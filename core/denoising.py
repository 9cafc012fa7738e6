"""Denoising as a data dropout task: settings, presets, the MSE training loop and PSNR evaluation.

The loss of a sample is the mean squared error over its pixels between the clean estimate and
the clean target, for training patches and whole validation images alike. Influence uses the
same per-sample loss (``mse_losses``), so a validation image counts once however large it is.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

from core.datasets.base import iterate_batches
from core.datasets.denoising import DenoisingFolders, ImageSet, PatchSplit, load_denoising_splits
from core.models.dncnn import PAPER_DEPTH, PAPER_WIDTH
from core.progress import ProgressFn, report
from core.training import (TrainConfig, _make_optimizer, check_finite_loss, resume_checkpoint,
                           save_checkpoint)

logger = logging.getLogger(__name__)

#: Pixel values are floats in [0, 1], so PSNR uses a data range of 1.
DATA_RANGE = 1.0

AUGMENTATIONS = ("none", "flip_rotate")


@dataclass
class DenoiseOptions:
    """Data settings of the denoising task: a run's ``dataset_options``.

    ``sigma`` is the noise standard deviation on the 0-255 scale. ``num_patches`` training
    patches of ``patch_size`` pixels are cut from one ``crop_size`` crop per training image.
    ``train_dir``, ``val_dir`` and ``test_dir`` override the ``train/``, ``val/`` and ``test/``
    subfolders of the run's data folder. ``eval_batch_size`` caps how many same-size whole
    images share a batch when denoising or computing the validation gradient.
    """

    sigma: float = 25.0
    patch_size: int = 40
    crop_size: int = 180
    num_patches: int = 256
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    test_dir: Optional[str] = None
    eval_batch_size: int = 4

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sigma {self.sigma} must be > 0 (noise level on the 0-255 scale, e.g. 25); with no "
                             f"noise there is nothing to remove")
        for name in ("patch_size", "crop_size", "num_patches", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop_size < self.patch_size:
            raise ValueError(f"crop_size {self.crop_size} must be >= patch_size {self.patch_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "DenoiseOptions":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data or {}) - known)
        if unknown:
            raise ValueError(f"unknown denoising dataset options {unknown}; valid options are {sorted(known)}")
        return cls(**(data or {}))

    def folders(self, dataset: str, data_dir: Optional[str]) -> DenoisingFolders:
        """Return where the images come from: ``dataset`` "skimage" (embedded) or "folder".

        Any folder given switches "skimage" to "folder", so ``--data-dir`` alone is enough.
        """
        if dataset == "skimage" and (data_dir or self.train_dir or self.val_dir or self.test_dir):
            dataset = "folder"
        return DenoisingFolders(dataset, data_dir, self.train_dir, self.val_dir, self.test_dir)


def load_splits_for(options: DenoiseOptions, dataset: str, data_dir: Optional[str], seed: int):
    """Load the denoising splits that ``options`` describe."""
    return load_denoising_splits(options.folders(dataset, data_dir), seed=seed, sigma=options.sigma,
                                 patch_size=options.patch_size, crop_size=options.crop_size,
                                 num_patches=options.num_patches)


_PAPER_RECIPE = {
    "task": "denoise", "dataset": "skimage", "model": "dncnn", "optimizer": "adam", "lr": 1e-3,
    "weight_decay": 1e-4, "round1_augmentation": "none", "round2_augmentation": "flip_rotate",
}

#: Run settings (``curator.config.RunConfig`` field names) of the denoising presets.
#: "dncnn-denoise" is the DnCNN recipe of data dropout (Wang, Huan and Li, 2018). It trains with
#: Adam at lr 1e-3 for 30 epochs, then 1e-4 to epoch 50, in batches of 128. The data are
#: 128 x 1,600 40x40 patches from 180x180 crops with noise of sigma 25. Round 1 has no
#: augmentation and round 2 flips and rotates. It is sized for a GPU and a 400-image training
#: folder such as BSD400.
#: "dncnn-denoise-cpu" keeps the recipe but shrinks the network (5 layers of 16 channels), the
#: data (256 patches) and the schedule (8 epochs, lr step at 6). Damping 0.1 cuts CG to about 25
#: steps, and its scores correlated at Pearson 0.988 with damping 0.01's on the bundled images.
#: The whole run took about 6 minutes on 2 busy CPU cores. Its PSNR shows that the pipeline
#: runs, not what the recipe achieves.
PRESETS = {
    "dncnn-denoise": {
        **_PAPER_RECIPE, "epochs": 50, "batch_size": 128, "milestones": [30],
        "dataset_options": {"sigma": 25.0, "patch_size": 40, "crop_size": 180, "num_patches": 128 * 1600},
        "model_options": {"depth": PAPER_DEPTH, "width": PAPER_WIDTH},
    },
    "dncnn-denoise-cpu": {
        **_PAPER_RECIPE, "epochs": 8, "batch_size": 32, "milestones": [6],
        "dataset_options": {"sigma": 25.0, "patch_size": 40, "crop_size": 180, "num_patches": 256},
        "model_options": {"depth": 5, "width": 16},
        "damping": 0.1, "solver_options": {"tol": 1e-3, "max_iter": 60},
    },
}


#: Bytes that the cached Gauss-Newton linearisation keeps per activation value of one patch
#: (pixels x width x depth). Measured as the peak-RSS growth of the first full-data product for
#: 64 and 256 40x40 patches through a 5-layer, 16-channel DnCNN in float32 on a CPU: 5.7 MB a patch.
CACHE_BYTES_PER_ACTIVATION = 72
#: Memory the cached linearisation may take before products recompute each batch instead.
CACHE_BUDGET_BYTES = 4 * 1024 ** 3


def curvature_cache_limit(patch_size: int, depth: int, width: int, budget_bytes: int = CACHE_BUDGET_BYTES) -> int:
    """Return the most training patches whose Gauss-Newton linearisation fits ``budget_bytes``.

    ``InfluenceProblem`` caches every batch's linearisation when the training set has at most its
    ``cache_limit`` samples. Its default suits 8x8 digits, but a 40x40 patch through the paper's
    17-layer, 64-channel DnCNN keeps an estimated 120 MB, so the limit here scales with the network.
    """
    per_patch = patch_size * patch_size * width * depth * CACHE_BYTES_PER_ACTIVATION
    return int(budget_bytes // per_patch)


def mse_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all pixels, shape ``(N,)``: the loss influence uses."""
    return (outputs - targets).pow(2).flatten(1).mean(1)


def psnr(clean: np.ndarray, estimate: np.ndarray, clip: bool = True) -> float:
    """PSNR in dB of ``estimate`` against ``clean``, both in [0, 1] (``data_range`` 1).

    ``clip`` limits the estimate to [0, 1] first, as a denoised image is saved. The noisy input
    is scored unclipped, so its PSNR is that of the added Gaussian noise.
    """
    estimate = np.clip(estimate, 0.0, 1.0) if clip else estimate
    return float(peak_signal_noise_ratio(np.asarray(clean, dtype=np.float64),
                                         np.asarray(estimate, dtype=np.float64), data_range=DATA_RANGE))


def dihedral(images: torch.Tensor, transform: int) -> torch.Tensor:
    """Apply one of the 8 flips and 90-degree rotations (``transform`` 0-7; 0 is the identity)."""
    rotated = torch.rot90(images, transform % 4, dims=(-2, -1))
    return torch.flip(rotated, dims=(-1,)) if transform >= 4 else rotated


def flip_rotate_pairs(noisy: torch.Tensor, clean: torch.Tensor, generator: torch.Generator) -> tuple:
    """Apply one random flip-and-rotation per sample, the same to its noisy input and clean target."""
    choices = torch.randint(0, 8, (len(noisy),), generator=generator)
    noisy_out, clean_out = noisy.clone(), clean.clone()
    for transform in range(1, 8):
        mask = choices == transform
        if mask.any():
            noisy_out[mask] = dihedral(noisy[mask], transform)
            clean_out[mask] = dihedral(clean[mask], transform)
    return noisy_out, clean_out


def build_pair_augmentation(name: str):
    """Return ``augment(noisy, clean, generator) -> (noisy, clean)`` for ``name``, or None for "none"."""
    if name in (None, "", "none"):
        return None
    if name == "flip_rotate":
        return flip_rotate_pairs
    raise ValueError(f"unknown denoising augmentation {name!r}; use one of {AUGMENTATIONS}")


def train_denoiser(model: nn.Module, data: PatchSplit, config: TrainConfig, indices: Optional[np.ndarray] = None,
                   device: Optional[torch.device] = None, progress: Optional[ProgressFn] = None,
                   checkpoint_path: Optional[str] = None, stage: str = "train") -> list:
    """Train ``model`` in place on ``(noisy, clean)`` patches with the mean squared error.

    Returns one dict per epoch: ``epoch``, ``loss`` (mean training MSE), ``psnr`` (dB of that
    MSE), ``lr`` and ``seconds``. Checkpointing, resuming and the per-epoch shuffle seed work as
    in ``core.training.train``. Raises ``TrainingDivergedError`` on a NaN or infinite loss.
    """
    if getattr(config, "schedule", "multistep") != "multistep":
        raise ValueError(f"the denoising task supports the 'multistep' learning-rate schedule only, got "
                         f"{config.schedule!r}; set milestones instead")
    device = device or next(model.parameters()).device
    model.to(device)
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones),
                                                     gamma=config.gamma)
    augment = build_pair_augmentation(config.augmentation)
    history = resume_checkpoint(checkpoint_path, model, optimizer, scheduler, device, stage)

    n = len(data) if indices is None else len(indices)
    if n == 0:
        raise ValueError("the training set is empty; keep at least one patch")
    steps_per_epoch = math.ceil(n / config.batch_size)

    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loss_sum, seen = 0.0, 0
        for step, (noisy, clean, _) in enumerate(iterate_batches(
                data, config.batch_size, shuffle=True, generator=generator, indices=indices)):
            if augment is not None:
                noisy, clean = augment(noisy, clean, generator)
            loss = mse_losses(model(noisy.to(device)), clean.to(device)).mean()
            check_finite_loss(loss, stage, epoch, step + 1, scheduler, input_kind="images")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(clean)
            seen += len(clean)
            report(progress, stage, epoch * steps_per_epoch + step + 1, config.epochs * steps_per_epoch,
                   f"epoch {epoch + 1}/{config.epochs}")

        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        mean_loss = loss_sum / seen
        psnr = 10 * math.log10(DATA_RANGE ** 2 / mean_loss) if mean_loss > 0 else math.inf
        history.append({"epoch": epoch + 1, "loss": mean_loss, "psnr": psnr,
                        "lr": lr, "seconds": time.perf_counter() - started})
        if checkpoint_path:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, history)
    return history


@torch.no_grad()
def denoise_images(model: nn.Module, images: ImageSet, device=None, batch_size: int = 4) -> list:
    """Return the clean estimate of every image of ``images`` as a float32 ``(H, W)`` array, unclipped.

    Same-size images share a batch of at most ``batch_size``. The model runs in eval mode; its
    mode is restored afterwards.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    estimates: list = [None] * len(images)
    try:
        for positions in images.size_batches(batch_size):
            noisy = torch.stack([images.noisy[i] for i in positions]).to(device)
            for position, estimate in zip(positions, model(noisy).float().cpu()):
                estimates[position] = estimate[0].numpy()
    finally:
        model.train(was_training)
    return estimates


def evaluate_denoiser(model: nn.Module, images: ImageSet, device=None, batch_size: int = 4) -> dict:
    """Denoise ``images`` and score them.

    Returns ``rows`` (``image``, ``psnr`` in dB with the estimate clipped to [0, 1], ``loss`` =
    the unclipped MSE that influence uses), ``mean_psnr``, ``loss`` (mean over images) and
    ``estimates`` (float32 arrays, clipped to [0, 1]).
    """
    estimates = denoise_images(model, images, device, batch_size)
    rows = []
    for name, clean, estimate in zip(images.names, images.clean, estimates):
        clean = clean[0].numpy()
        rows.append({"image": name, "psnr": psnr(clean, estimate),
                     "loss": float(np.mean((estimate - clean) ** 2, dtype=np.float64))})
    return {"rows": rows, "mean_psnr": float(np.mean([row["psnr"] for row in rows])),
            "loss": float(np.mean([row["loss"] for row in rows])),
            "estimates": [np.clip(estimate, 0, 1).astype(np.float32) for estimate in estimates]}


def noisy_psnr(images: ImageSet) -> list:
    """Return ``{"image", "psnr"}`` of each noisy input against its clean image, unclipped."""
    return [{"image": name, "psnr": psnr(clean[0].numpy(), noisy[0].numpy(), clip=False)}
            for name, noisy, clean in zip(images.names, images.noisy, images.clean)]


@torch.no_grad()
def patch_losses(model: nn.Module, data: PatchSplit, indices: Optional[np.ndarray] = None, device=None,
                 batch_size: int = 512) -> np.ndarray:
    """Return the per-patch MSE (``mse_losses``) of ``model`` in eval mode, float64, in ``indices`` order."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    try:
        for noisy, clean, _ in iterate_batches(data, batch_size, indices=indices):
            losses.append(mse_losses(model(noisy.to(device)), clean.to(device)).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(losses).numpy() if losses else np.zeros(0)
