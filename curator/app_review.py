"""Tables and numbers of the Review page: the per-class breakdown, solver diagnostics and timings.

Influence follows the engine's sign: positive means removing the sample is predicted to lower
validation loss. ``predicted_val_change = -influence / n`` is a first-order estimate of the change
in total validation loss (summed over validation samples) when one sample is removed.
"""

import math
from typing import Optional

import pandas as pd

from curator import queries
from curator.gallery import class_name
from curator.store import Store
from curator.workspace import Workspace

#: Solver diagnostics shown first, in this order; any other keys a solver reports follow.
_SOLVE_KEYS = ("solver", "converged", "iterations", "relative_residual", "tolerance", "min_eigenvalue",
               "max_eigenvalue", "min_damped_eigenvalue", "condition_number", "seconds")


def has_label_noise(run: dict) -> bool:
    return float(run["config"].get("label_noise") or 0.0) > 0.0


def class_names_of(run: dict) -> Optional[list]:
    return (run["diagnostics"].get("dataset") or {}).get("class_names")


def drop_cutoff(store: Store, workspace: Workspace, run_id: str) -> Optional[float]:
    """Return the lowest influence among the samples currently dropped, or None when none are.

    With a class cap or overrides some samples above it are kept, so this is a marker, not a threshold.
    """
    lowest = queries.samples(store, workspace, run_id, where="decision = 'drop'", order="influence ASC",
                             limit=1)
    return None if lowest.empty else float(lowest["influence"].iloc[0])


def per_class_table(frame: pd.DataFrame, class_names: Optional[list], label_noise: bool) -> pd.DataFrame:
    """Return ``queries.per_class`` with readable column names; flip columns only with label noise."""
    table = pd.DataFrame({
        "Class": [class_name(label, class_names) for label in frame["label"]],
        "Samples": frame["count"].astype(int),
        "Dropped": frame["dropped"].astype(int),
        "Share dropped": frame["share_dropped"].astype(float),
        "Mean score": frame["mean_influence"].astype(float),
    })
    if label_noise:
        table["Flipped labels"] = frame["flipped"].astype(int)
        table["Flipped labels dropped"] = frame["flipped_dropped"].astype(int)
    return table


def flipped_caught_text(flipped_dropped: int, flipped: int, dropped: int) -> str:
    """Return e.g. ``75 of 126 flipped labels are in the drop set (88% of the 85 dropped)``."""
    if flipped == 0:
        return "No labels were flipped in this run."
    precision = f" ({flipped_dropped / dropped:.0%} of the {dropped} dropped)" if dropped else ""
    return f"{flipped_dropped} of {flipped} flipped labels are in the drop set{precision}."


def estimate_text(predicted_change: float) -> str:
    """Describe the summed first-order prediction in words, with its direction."""
    direction = "lower" if predicted_change < 0 else "raise"
    return (f"Estimate: dropping this set would {direction} the total validation loss by about "
            f"{abs(predicted_change):.3g}. It adds up one-sample predictions; removing many samples at once "
            f"interacts, so the real change can differ in size and even in sign. Round 2 measures it.")


#: List-valued solve diagnostics that contain one relative residual per iteration or per solve.
RESIDUAL_KEYS = ("residuals", "relative_residuals")


def _format(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(item) for item in value) if len(value) <= 4 else f"{len(value)} values"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def solver_table(influence: dict) -> pd.DataFrame:
    """Return one row per diagnostic and one column per validation half's solve."""
    solves = influence.get("solves") or {}
    keys = [key for key in _SOLVE_KEYS if any(key in solve for solve in solves.values())]
    keys += sorted({key for solve in solves.values() for key in solve} - set(keys))
    table = {"Diagnostic": [key.replace("_", " ") for key in keys]}
    for half, solve in sorted(solves.items()):
        table[f"Half {half.upper()}"] = [_format(solve.get(key, "")) for key in keys]
    return pd.DataFrame(table)


def residual_curves(influence: dict) -> pd.DataFrame:
    """Return ``Half``, ``Step`` (1-based) and ``Residual`` rows of every solve's residual history."""
    rows = []
    for half, solve in sorted((influence.get("solves") or {}).items()):
        history = next((solve[key] for key in RESIDUAL_KEYS if isinstance(solve.get(key), list)), [])
        rows += [(f"Half {half.upper()}", step, value) for step, value in enumerate(history, start=1)
                 if value is not None]
    return pd.DataFrame(rows, columns=["Half", "Step", "Residual"])


def solver_settings(influence: dict) -> pd.DataFrame:
    """Return the solve's settings and the round-1 convergence checks as a two-column table."""
    names = {"solver": "Solver", "curvature": "Curvature", "damping": "Damping", "params": "Parameters",
             "num_params": "Number of parameters", "validation_halves": "Validation half sizes",
             "training_gradient_norm": "Mean training-loss gradient norm",
             "last_epoch_loss_decrease": "Training-loss decrease in the last epoch"}
    rows = [(label, _format(influence[key])) for key, label in names.items() if key in influence]
    return pd.DataFrame(rows, columns=["Setting", "Value"])


def timings_table(timings: dict) -> pd.DataFrame:
    """Return seconds per stage, e.g. ``round1_seconds`` as ``round1``."""
    rows = [(key.removesuffix("_seconds").replace("_", " "), round(float(value), 2))
            for key, value in timings.items()]
    return pd.DataFrame(rows, columns=["Stage", "Seconds"])
