"""Statistics of an experiment: per-arm summaries, paired seed differences and label-noise detection.

Error rates are shares in [0, 1]. A paired difference is ``arm - reference`` per seed, so a negative
mean means the arm has the lower error. Intervals are two-sided Student t intervals over seeds
(``scipy.stats.t.interval``). One seed gives no spread to estimate, so its interval is reported as
undefined rather than as zero width. Detection metrics come from scikit-learn.
"""

import math
from typing import Optional

import numpy as np
from scipy import stats
from sklearn.metrics import precision_score, recall_score, roc_auc_score, roc_curve

#: Confidence of every interval reported.
CONFIDENCE = 0.95
#: Inspected shares at which detection curves of several seeds are averaged.
CURVE_GRID = np.linspace(0.0, 1.0, 101)

UNDEFINED_WITH_ONE_SEED = "undefined with one seed: run at least 2 seeds to estimate the spread"


def _float(value) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(values) -> dict:
    """Return ``n``, ``mean``, sample standard deviation ``std`` (ddof 1; None for n < 2) and ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"n": 0, "mean": None, "std": None, "values": []}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"n": int(len(values)), "mean": float(values.mean()), "std": std, "values": values.tolist()}


def t_interval(differences, confidence: float = CONFIDENCE) -> tuple:
    """Return ``(low, high, note)``: the t interval of the mean of ``differences``.

    ``low`` and ``high`` are None with fewer than two values, and ``note`` gives the reason. Identical values
    give a zero-width interval at their mean.
    """
    differences = np.asarray(differences, dtype=np.float64)
    n = len(differences)
    if n < 2:
        return None, None, UNDEFINED_WITH_ONE_SEED
    mean = float(differences.mean())
    error = float(stats.sem(differences))
    if error == 0.0:
        return mean, mean, "every seed gave the same difference"
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=error)
    return float(low), float(high), None


def paired_difference(values, reference, confidence: float = CONFIDENCE) -> dict:
    """Compare ``values`` with ``reference`` seed by seed (same seed order): ``values - reference``.

    Returns the summary of the differences, its interval (``low``, ``high``, ``confidence``), and
    how many seeds the arm was ``lower``, ``higher`` or ``tied``.
    """
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired values need one entry per seed on both sides, got {values.shape} "
                         f"and {reference.shape}")
    differences = values - reference
    low, high, note = t_interval(differences, confidence)
    return {**summarize(differences), "low": low, "high": high, "confidence": confidence, "note": note,
            "lower": int((differences < 0).sum()), "higher": int((differences > 0).sum()),
            "tied": int((differences == 0).sum())}


def found_vs_inspected(flipped, suspicion) -> tuple:
    """Return ``(inspected, found)``: the curve of flipped labels found as the ranking is read down.

    Samples are inspected in decreasing ``suspicion``; ``inspected`` is the share of training samples
    read and ``found`` the share of all flipped labels among them. Tied scores enter together,
    which is where the curve has its points (scikit-learn's ``roc_curve`` thresholds).
    """
    flipped = np.asarray(flipped, dtype=bool)
    n, positives = len(flipped), int(flipped.sum())
    if positives in (0, n):
        raise ValueError(f"the found-vs-inspected curve needs flipped and clean samples, got {positives} "
                         f"flipped of {n}; inject label noise (e.g. --label-noise 0.1)")
    false_rate, true_rate, _ = roc_curve(flipped, suspicion, drop_intermediate=False)
    inspected = (true_rate * positives + false_rate * (n - positives)) / n
    return inspected, true_rate


def detection_metrics(flipped, suspicion, flagged) -> dict:
    """Score one ranking of training samples as a finder of flipped labels.

    ``suspicion``: higher means more likely flipped. ``flagged``: the boolean set the method would
    drop. Returns ``auroc``, ``precision`` and ``recall`` of ``flagged`` (precision None when
    nothing is flagged), ``precision_at_flipped`` (share flipped among the top ``m``, with ``m``
    the number flipped), and the found-vs-inspected curve.
    """
    flipped = np.asarray(flipped, dtype=bool)
    suspicion = np.asarray(suspicion, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    count = int(flipped.sum())
    inspected, found = found_vs_inspected(flipped, suspicion)
    top = np.zeros(len(flipped), dtype=bool)
    top[np.argsort(-suspicion, kind="stable")[:count]] = True
    return {"auroc": float(roc_auc_score(flipped, suspicion)),
            "precision": float(precision_score(flipped, flagged, zero_division=0)) if flagged.any() else None,
            "recall": float(recall_score(flipped, flagged)),
            "precision_at_flipped": float(precision_score(flipped, top)),
            "n_flagged": int(flagged.sum()), "n_flipped": count,
            "true_positives": int((flipped & flagged).sum()),
            "curve": {"inspected": inspected.tolist(), "found": found.tolist()}}


def mean_curve(curves: list, grid: np.ndarray = CURVE_GRID) -> dict:
    """Average found-vs-inspected curves of several seeds on a common grid of inspected shares."""
    if not curves:
        return {"inspected": grid.tolist(), "found": []}
    resampled = [np.interp(grid, curve["inspected"], curve["found"]) for curve in curves]
    return {"inspected": grid.tolist(), "found": np.mean(resampled, axis=0).tolist()}


def per_class_change(per_class_rows: list, reference_rows: list) -> list:
    """Return the mean over seeds of each class's error change, ``arm - reference``.

    Each argument is one list per seed of ``{"class", "error", ...}`` rows (``error`` may be NaN
    for an empty class, which is then left out of that class's mean).
    """
    changes = {}
    for rows, reference in zip(per_class_rows, reference_rows):
        base = {row["class"]: row["error"] for row in reference}
        for row in rows:
            before, after = base.get(row["class"]), row["error"]
            if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
                continue
            changes.setdefault(row["class"], []).append(after - before)
    return [{"class": label, "change": float(np.mean(values)), "n": len(values)}
            for label, values in sorted(changes.items())]


def json_safe(value):
    """Return ``value`` with every NaN or infinite float replaced by None, recursively, for JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
