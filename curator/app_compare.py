"""Round 1 against round 2: test error overall and per class, with the noise a small test set carries.

Round 2 retrains from the same initial weights on the kept samples *and* with augmentation on, so
a difference mixes the effect of the dropped samples with that of augmentation. The page states this.
"""

import json
import math
from typing import Optional

import pandas as pd

from curator.gallery import class_name

#: A difference smaller than this many standard errors is reported as within noise.
NOISE_STANDARD_ERRORS = 2.0


def _latest(rows: pd.DataFrame) -> Optional[dict]:
    return None if rows.empty else rows.sort_values("created_at").iloc[-1].to_dict()


def round_metrics(metrics: pd.DataFrame, approval_id: int, split: str = "test") -> dict:
    """Return ``{1: row, 2: row}`` from ``queries.metrics``; round 2 is the one trained on ``approval_id``.

    A round that has no metrics yet maps to None.
    """
    rows = metrics[metrics["split"] == split]
    round1 = rows[rows["round"] == 1]
    round2 = rows[(rows["round"] == 2) & (rows["approval_id"] == approval_id)]
    return {1: _latest(round1), 2: _latest(round2)}


def approvals_with_round2(metrics: pd.DataFrame) -> list:
    """Return the approval ids that have round-2 metrics, newest first."""
    ids = metrics.loc[(metrics["round"] == 2) & metrics["approval_id"].notna(), "approval_id"]
    return sorted({int(value) for value in ids}, reverse=True)


def standard_error(error: float, count: int) -> float:
    """Return the binomial standard error of an error rate measured on ``count`` samples."""
    if count <= 0:
        return math.nan
    return math.sqrt(max(error * (1 - error), 0.0) / count)


def comparison(metrics: pd.DataFrame, approval_id: int, split: str = "test") -> Optional[dict]:
    """Return both rounds' error, training-set size and the difference, or None before round 2.

    ``difference_se`` treats the two errors as independent. Both rounds use the same test samples,
    so the true standard error of the difference is usually smaller: the noise band is conservative.
    """
    rounds = round_metrics(metrics, approval_id, split)
    if rounds[1] is None or rounds[2] is None:
        return None
    first, second = rounds[1], rounds[2]
    se1 = standard_error(first["error"], int(first["count"]))
    se2 = standard_error(second["error"], int(second["count"]))
    return {"split": split, "error_1": float(first["error"]), "error_2": float(second["error"]),
            "n_train_1": int(first["n_train"]), "n_train_2": int(second["n_train"]), "count": int(first["count"]),
            "se_1": se1, "se_2": se2, "difference": float(second["error"] - first["error"]),
            "difference_se": math.hypot(se1, se2)}


def verdict(result: dict) -> str:
    """Describe the change in plain words: lower, higher, or within the test set's noise."""
    difference, band = result["difference"], NOISE_STANDARD_ERRORS * result["difference_se"]
    points = f"{abs(difference) * 100:.1f} percentage points"
    noise = (f"On {result['count']} {result['split']} samples, differences smaller than about "
             f"{band * 100:.1f} points (two standard errors) can be chance.")
    if abs(difference) < band or difference == 0:
        return f"Round 2's {result['split']} error differs by {points}: within noise. {noise}"
    if difference < 0:
        return f"Round 2's {result['split']} error is lower by {points}. {noise}"
    return f"Round 2's {result['split']} error is higher by {points}: dropping did not help here. {noise}"


def per_class_errors(metrics: pd.DataFrame, approval_id: int, class_names: Optional[list],
                     split: str = "test") -> pd.DataFrame:
    """Return one row per class and round: ``Class``, ``Round``, ``Error``, ``Errors``, ``Samples``."""
    rows = []
    for round_number, row in round_metrics(metrics, approval_id, split).items():
        if row is None:
            continue
        for entry in json.loads(row["per_class"]):
            rows.append({"Class": class_name(entry["class"], class_names), "Round": f"Round {round_number}",
                         "Error": entry["error"], "Errors": int(entry["errors"]), "Samples": int(entry["count"])})
    return pd.DataFrame(rows, columns=["Class", "Round", "Error", "Errors", "Samples"])


def training_curves(history: pd.DataFrame) -> pd.DataFrame:
    """Return ``queries.history`` with a ``Round`` label for the charts."""
    curves = history.copy()
    curves["Round"] = [f"Round {int(value)}" for value in curves["round"]]
    return curves


def flipped_caught(curated: pd.DataFrame) -> tuple:
    """Return ``(flipped labels dropped, flipped labels)`` among an approved set's rows.

    Both are 0 when the rows carry no ``true_label`` (no label noise was injected).
    """
    if "true_label" not in curated:
        return 0, 0
    flipped = curated["true_label"].notna() & (curated["true_label"] != curated["label"])
    dropped = curated["decision"] == "drop"
    return int((flipped & dropped).sum()), int(flipped.sum())
