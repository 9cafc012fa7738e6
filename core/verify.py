"""Check influence predictions against actual leave-one-out retraining.

For chosen training samples ``x`` the predicted change of the total validation loss when ``x`` is
removed is ``-influence(x) / n`` (the engine's sign convention: a positive influence predicts a
drop). The actual change is measured by retraining without ``x`` and comparing with a retraining
on all samples by the same procedure::

    actual(x) = L_val(retrained without x) - L_val(retrained with every sample)

Retraining is *paired*: every run sees the same seeded batch order, and ``x`` is only masked out
of the one batch that contains it. Without pairing, a shuffle of ``n - 1`` samples is a different
shuffle altogether, and its noise would drown the effect of one sample.

Two modes:

- ``warm``: start from the round-1 parameters and train a few epochs at a small learning rate.
  Cheap (``epochs`` epochs per sample) and close to what influence functions linearise.
- ``scratch``: start from the round-1 initial weights and repeat round 1's schedule. The real
  question, but each retraining costs a full round 1, and 30 epochs of nonconvex training amplify
  a removal in ways a first-order prediction cannot follow.

``noise_floor`` is the change of the validation loss from another batch order alone: the noise an
unpaired comparison would carry. Pairing cancels most of it, so actual changes well below it can
still be resolved (on the default CNN, warm: median actual change 0.04 against a noise floor of 0.2,
with Pearson 0.94 against the prediction).

Warm retraining behaves like extra damping (a few small steps move little along flat directions),
so it agrees best with larger damping; see ``benchmarks/README.md`` for both modes per setting.

Both train in train mode, as round 1 did (BatchNorm uses batch statistics), without augmentation.
Cost: ``(3k + 2)`` retrainings of ``epochs`` epochs each.
"""

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from core.datasets.base import iterate_batches
from core.progress import ProgressFn, report

logger = logging.getLogger(__name__)

MODES = ("warm", "scratch")
GROUPS = ("unfavorable", "favorable", "random")


@dataclass
class RetrainSettings:
    """Settings of every leave-one-out retraining; ``seed`` fixes the batch order they share."""

    epochs: int = 5
    lr: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    seed: int = 1

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"retraining needs at least 1 epoch, got {self.epochs}; set --epochs 1 or more")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the retraining learning rate must be a finite number > 0, got {self.lr}; fix --lr")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'adam' or 'sgd'")

    def to_dict(self) -> dict:
        return asdict(self)


def choose_samples(scores: np.ndarray, k: int, seed: int = 0) -> tuple:
    """Return ``(indices, groups)``: the ``k`` most unfavorable, ``k`` most favorable and ``k`` random others.

    Unfavorable means the highest influence (removal predicted to lower validation loss). The
    random ones are drawn from the samples not already chosen. ``k`` is reduced when the training
    set has fewer than ``3k`` samples.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, n // 3)
    if k == 0:
        raise ValueError(f"the training set has {n} samples; verification needs at least 3")
    order = np.argsort(-scores, kind="stable")
    unfavorable, favorable = order[:k], order[::-1][:k]
    rest = np.setdiff1d(np.arange(n), np.concatenate([unfavorable, favorable]))
    random = np.random.default_rng(seed).choice(rest, size=min(k, len(rest)), replace=False)
    indices = np.concatenate([unfavorable, favorable, random]).astype(np.int64)
    groups = ["unfavorable"] * k + ["favorable"] * k + ["random"] * len(random)
    return indices, groups


def _optimizer(model: nn.Module, settings: RetrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def paired_retrain(model: nn.Module, data, settings: RetrainSettings, left_out: Optional[int] = None,
                   device: Optional[torch.device] = None) -> nn.Module:
    """Train a copy of ``model`` on ``data`` without sample ``left_out``; return the copy.

    The batch order depends only on ``settings.seed`` and the epoch, never on ``left_out``: the
    left-out sample is dropped from its batch, and a batch left empty is skipped.
    """
    device = device or next(model.parameters()).device
    model = copy.deepcopy(model).to(device)
    model.train()
    dtype = next(model.parameters()).dtype
    optimizer = _optimizer(model, settings)

    for epoch in range(settings.epochs):
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        for inputs, targets, positions in iterate_batches(data, settings.batch_size, shuffle=True,
                                                          generator=generator):
            if left_out is not None:
                keep = positions != left_out
                if not keep.any():
                    continue
                inputs, targets = inputs[keep], targets[keep]
            loss = F.cross_entropy(model(inputs.to(device, dtype)), targets.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"leave-one-out retraining diverged (loss {loss.item()}) at epoch "
                                         f"{epoch + 1}; lower the retraining learning rate (now {settings.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def total_validation_loss(model: nn.Module, val, device=None, batch_size: int = 1024) -> float:
    """Return the sum of per-sample cross-entropy over ``val``, in eval mode and the model's dtype.

    The model is left in eval mode: the retrained copies are not used afterwards.
    """
    first = next(model.parameters())
    model.eval()
    total = 0.0
    for inputs, targets, _ in iterate_batches(val, batch_size):
        logits = model(inputs.to(device or first.device, first.dtype))
        total += float(F.cross_entropy(logits, targets.to(logits.device), reduction="none").double().sum())
    return total


def _correlations(predicted: np.ndarray, actual: np.ndarray) -> tuple:
    if len(predicted) < 3 or np.std(predicted) == 0 or np.std(actual) == 0:
        return math.nan, math.nan
    return float(stats.pearsonr(predicted, actual)[0]), float(stats.spearmanr(predicted, actual)[0])


def verify_influence(start: nn.Module, train, val, scores, k: int = 10, mode: str = "warm",
                     settings: Optional[RetrainSettings] = None, seed: int = 0, device=None,
                     progress: Optional[ProgressFn] = None) -> dict:
    """Retrain without each chosen sample and compare predicted with actual validation-loss changes.

    Args:
        start: the model to retrain from: round 1's trained model for "warm", its initial weights
            for "scratch". It is not changed.
        train, val: the training set the scores belong to (dataset order) and the validation set
            whose total loss the scores predict.
        scores: influence of every training sample, summed over the whole validation set.
        k: samples per group (unfavorable, favorable, random).
        settings: retraining settings; "scratch" callers pass round 1's epochs and learning rate.

    Returns a JSON-ready dict: ``pearson``, ``spearman``, ``noise_floor`` (the absolute change of
    the validation loss when only the batch order changes, which pairing cancels), ``baseline_loss``, ``settings``,
    ``seconds`` and ``points``, one dict per sample with ``index``, ``group``, ``influence``,
    ``predicted`` and ``actual``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown verification mode {mode!r}; choose one of {MODES}")
    settings = settings or RetrainSettings()
    scores = np.asarray(scores, dtype=np.float64)
    n = len(train)
    if len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} training samples; score the same training set")
    started = time.perf_counter()
    indices, groups = choose_samples(scores, k, seed)
    total = len(indices) + 2

    baseline = total_validation_loss(paired_retrain(start, train, settings, device=device), val, device)
    report(progress, "verify", 1, total, "retrained on every sample")
    reshuffled = RetrainSettings(**{**settings.to_dict(), "seed": settings.seed + 7_919})
    noise = abs(total_validation_loss(paired_retrain(start, train, reshuffled, device=device), val, device) - baseline)
    report(progress, "verify", 2, total, "retrained with another batch order")

    points = []
    for step, (index, group) in enumerate(zip(indices, groups), start=3):
        retrained = paired_retrain(start, train, settings, left_out=int(index), device=device)
        actual = total_validation_loss(retrained, val, device) - baseline
        points.append({"index": int(index), "group": group, "influence": float(scores[index]),
                       "predicted": -float(scores[index]) / n, "actual": actual})
        report(progress, "verify", step, total, f"left out sample {int(index)} ({group})")

    predicted = np.array([p["predicted"] for p in points])
    actual = np.array([p["actual"] for p in points])
    pearson, spearman = _correlations(predicted, actual)
    logger.info("verification (%s, k=%d): Pearson %.3f, Spearman %.3f, noise floor %.3g",
                mode, k, pearson, spearman, noise)
    return {"mode": mode, "k": groups.count("unfavorable"), "pearson": pearson, "spearman": spearman,
            "noise_floor": noise, "baseline_loss": baseline, "settings": settings.to_dict(),
            "seconds": time.perf_counter() - started, "points": points}
