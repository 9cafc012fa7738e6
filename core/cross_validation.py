"""Out-of-fold class probabilities: each training sample predicted by a model that never saw it.

Label-error finders such as cleanlab's confident learning expect these. A network's predictions on
its own training samples agree with the given labels, flipped ones included, once it has memorised
them, so in-sample probabilities hide the very errors being looked for.
"""

from typing import Callable, Optional

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from core.datasets.base import iterate_batches
from core.progress import ProgressFn, report
from core.training import TrainConfig, train

#: Allowed fold counts: at least two, so that every sample is held out once.
MIN_FOLDS, MAX_FOLDS = 2, 20


def fold_of_each_sample(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Return the fold (0 to ``folds - 1``) that holds out each sample, stratified by label and seeded.

    Raises ``ValueError`` naming the fix when ``folds`` is out of range or exceeds the sample count.
    """
    labels = np.asarray(labels)
    if not MIN_FOLDS <= int(folds) <= MAX_FOLDS:
        raise ValueError(f"folds {folds} must be between {MIN_FOLDS} and {MAX_FOLDS}; 4 or 5 is usual")
    if folds > len(labels):
        raise ValueError(f"folds {folds} exceed the {len(labels)} training samples; use fewer folds")
    # StratifiedKFold warns about a class with fewer samples than folds but rejects labels where
    # every class is that small. Plain folds still hold out each sample once there.
    if np.bincount(labels).max() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held_out] = number
    return fold


def out_of_fold_probabilities(make_model: Callable[[], torch.nn.Module], data, labels: np.ndarray,
                              config: TrainConfig, folds: int, seed: int, device: Optional[torch.device] = None,
                              progress: Optional[ProgressFn] = None, val_data=None) -> np.ndarray:
    """Return an ``(n, classes)`` float64 array: each sample's softmax from the model not trained on it.

    For each fold, ``make_model()`` gives a fresh network that ``train`` fits with ``config`` on the
    other folds, and that network predicts the held-out fold in eval mode. ``labels`` are the given
    (possibly noisy) labels that stratify the folds. ``val_data`` is passed on to ``train``, which
    needs it for the plateau schedule.
    """
    fold = fold_of_each_sample(labels, folds, seed)
    device = device or torch.device("cpu")
    probabilities = None
    for number in range(folds):
        report(progress, "cross-validation", number, folds, f"fold {number + 1} of {folds}")
        model = make_model()
        train(model, data, config, indices=np.flatnonzero(fold != number), device=device,
              stage=f"cross-validation fold {number + 1}", val_data=val_data)
        model.eval()
        held_out = np.flatnonzero(fold == number)
        with torch.no_grad():
            for inputs, _, positions in iterate_batches(data, 512, indices=held_out):
                fold_probabilities = torch.softmax(model(inputs.to(device)).float(), dim=1).double().cpu().numpy()
                if probabilities is None:
                    probabilities = np.full((len(fold), fold_probabilities.shape[1]), np.nan)
                probabilities[positions.numpy()] = fold_probabilities
    report(progress, "cross-validation", folds, folds, "done")
    return probabilities
