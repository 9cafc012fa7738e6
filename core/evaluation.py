"""Per-sample losses and predictions, and error overall and per class."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.datasets.base import DatasetSplits, iterate_batches
from core.ten_crop import ten_crop_predict, ten_crop_test_split


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 512, device=None) -> tuple:
    """Return ``(losses, predictions)`` as NumPy arrays, one entry per sample in ``data`` order.

    The model is evaluated in eval mode; every module's train/eval flag is restored afterwards.
    """
    device = device or next(model.parameters()).device
    # Restore each module's own flag afterwards: a model may mix modes, e.g. a frozen BatchNorm.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    losses, predictions = [], []
    for inputs, targets, _ in iterate_batches(data, batch_size):
        logits = model(inputs.to(device))
        losses.append(F.cross_entropy(logits, targets.to(device), reduction="none").float().cpu())
        predictions.append(logits.argmax(1).cpu())
    for module, training in modes:
        module.training = training
    return torch.cat(losses).numpy(), torch.cat(predictions).numpy()


def error_report(labels: np.ndarray, predictions: np.ndarray, losses: np.ndarray, num_classes: int) -> dict:
    """Summarise predictions: overall ``error`` and mean ``loss``, and ``per_class`` rows.

    Each per-class row has ``class``, ``count``, ``errors`` and ``error`` (nan for an empty class).
    """
    wrong = predictions != labels
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        count = int(mask.sum())
        errors = int(wrong[mask].sum())
        per_class.append({"class": c, "count": count, "errors": errors,
                          "error": errors / count if count else float("nan")})
    return {"error": float(wrong.mean()), "loss": float(losses.mean()), "count": int(len(labels)),
            "per_class": per_class}


def evaluate(model: nn.Module, data, num_classes: int, device=None) -> dict:
    """Return the ``error_report`` of ``model`` on ``data``."""
    losses, predictions = predict(model, data, device=device)
    return error_report(np.asarray(data.labels), predictions, losses, num_classes)


def split_reports(model: nn.Module, splits: DatasetSplits, test_crops: int = 1, device=None) -> dict:
    """Return the ``error_report`` of the test and validation splits, keyed "test" and "validation".

    With ``test_crops=10`` "test" is the ten-crop error (``core.ten_crop``) and the single centre
    crop's report is added as "test_centre_crop", so both stay comparable with other runs.
    """
    reports = {"test": evaluate(model, splits.test, splits.num_classes, device),
               "validation": evaluate(model, splits.val, splits.num_classes, device)}
    if test_crops == 10:
        crop = tuple(splits.test_files.spec.size) if splits.test_files is not None else None
        losses, predictions = ten_crop_predict(model, ten_crop_test_split(splits), crop=crop, device=device)
        reports["test_centre_crop"] = reports["test"]
        reports["test"] = error_report(np.asarray(splits.test.labels), predictions, losses, splits.num_classes)
    elif test_crops != 1:
        raise ValueError(f"test_crops must be 1 or 10, got {test_crops}")
    return reports
