"""The label-noise demo's measurements: how well each ranking of training samples finds flipped labels.

Every ranking gives a *suspicion* per training sample (higher = more likely mislabelled) and a
*flagged* set (what it would drop). Rankings:

- ``influence``: influence on validation loss, flagged by the run's drop set;
- ``self_influence``: ``-self_influence(x)`` from ``core.self_influence`` (exact on the last layer);
- ``training_loss``: the round-1 model's loss on the given label;
- ``random``: a seeded random order, the floor every ranking must beat;
- ``cleanlab``: ``1 -`` cleanlab's label quality, flagged by ``find_label_issues``, only where
  cleanlab is installed. Its probabilities come from K-fold cross-validation (each sample predicted
  by a model trained without it, as cleanlab expects), or with 0 folds from the round-1 model.

Rankings other than influence and cleanlab flag their top ``k``, with ``k`` the size of the run's drop
set, so precision and recall compare like with like. Only training data, the round-1 model and the
cross-validation models trained on training data take part; no validation or test label is used.
"""

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from core.cross_validation import out_of_fold_probabilities
from core.datasets import iterate_batches
from core.influence import cross_entropy_losses
from core.self_influence import self_influence
from curator import runs, statistics
from curator.pipeline import RunContext

logger = logging.getLogger(__name__)

#: Folds of the cross-validation that gives cleanlab its probabilities (0: the round-1 model's own).
DEFAULT_CLEANLAB_FOLDS = 4

RANKINGS = ("influence", "self_influence", "training_loss", "random", "cleanlab")
RANKING_LABELS = {
    "influence": "influence on validation loss",
    "self_influence": "self-influence (last layer, exact)",
    "training_loss": "round-1 training loss",
    "random": "random order",
    "cleanlab": "cleanlab label quality",
}


def flipped_mask(samples: pd.DataFrame) -> np.ndarray:
    """Return True for each training sample (in index order) whose given label differs from its true one."""
    samples = samples.sort_values("index")
    true = samples["true_label"]
    return (true.notna() & (true != samples["label"])).to_numpy(dtype=bool)


def has_label_noise(samples: pd.DataFrame) -> bool:
    """Return True when some, but not all, training labels were flipped."""
    flipped = flipped_mask(samples)
    return 0 < flipped.sum() < len(flipped)


def ranking_scores(ctx: RunContext, samples: pd.DataFrame, seed: int, params: str,
                   dropout_mask: np.ndarray, cleanlab_folds: int = DEFAULT_CLEANLAB_FOLDS) -> tuple:
    """Return ``(suspicion, flagged, info)``: per ranking, a score (higher = more suspect) and a drop set.

    ``influence`` is flagged by the run's drop set; the other rankings flag their top ``k``, with
    ``k`` the size of that drop set, except cleanlab, which flags what ``find_label_issues`` returns.
    """
    samples = samples.sort_values("index")
    n = len(samples)
    k = int(dropout_mask.sum())
    model = ctx.load_model("round1.pt")
    dtype = torch.float64
    result = self_influence(model.to(dtype), cross_entropy_losses, ctx.splits.train, params=params,
                            damping=ctx.config.damping, curvature=ctx.config.curvature, dtype=dtype,
                            progress=ctx.progress)
    suspicion = {"influence": samples["influence"].to_numpy(dtype=np.float64),
                 "self_influence": result.suspicion,
                 "training_loss": samples["loss"].to_numpy(dtype=np.float64),
                 "random": np.random.default_rng(seed + 31_337).random(n)}
    flagged = {name: _top_k(values, k) for name, values in suspicion.items()}
    flagged["influence"] = dropout_mask
    cleanlab = _cleanlab_ranking(ctx, samples, cleanlab_folds)
    if cleanlab is not None:
        suspicion["cleanlab"], flagged["cleanlab"] = cleanlab
    return suspicion, flagged, {"self_influence": result.diagnostics, "cleanlab": cleanlab is not None,
                                "cleanlab_folds": cleanlab_folds}


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    mask = np.zeros(len(values), dtype=bool)
    mask[np.argsort(-values, kind="stable")[:k]] = True
    return mask


def _cleanlab_ranking(ctx: RunContext, samples: pd.DataFrame, folds: int) -> Optional[tuple]:
    """Return cleanlab's ``(1 - label quality, find_label_issues mask)``, or None without cleanlab.

    With ``folds`` of 2 or more the probabilities are out of fold: each fold's network starts from
    the run's initial weights and trains with the round-1 settings on the other folds. With 0 they
    come from the round-1 model on its own training samples. A memorising network then predicts
    the flipped labels it was given, so ``find_label_issues`` flags few or none.
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        logger.info("cleanlab is not installed; its ranking is skipped")
        return None
    labels = samples["label"].to_numpy()
    if folds:
        probabilities = out_of_fold_probabilities(
            lambda: ctx.build_model(1), ctx.splits.train, labels, ctx.config.train_config(1), folds,
            ctx.config.seed, ctx.device, ctx.progress, val_data=ctx.splits.val)
    else:
        probabilities = _probabilities(ctx.load_model("round1.pt"), ctx.splits.train, ctx.device)
    quality = get_label_quality_scores(labels, probabilities)
    issues = find_label_issues(labels, probabilities)
    return 1.0 - quality, np.asarray(issues, dtype=bool)


@torch.no_grad()
def _probabilities(model: torch.nn.Module, data, device) -> np.ndarray:
    model.eval()
    chunks = [torch.softmax(model(inputs.to(device)), 1).cpu() for inputs, _, _ in iterate_batches(data, 512)]
    return torch.cat(chunks).double().numpy()


def score_rankings(ctx: RunContext, experiment_id: str, seed: int, params: str, samples: pd.DataFrame,
                   dropout_mask: np.ndarray, cleanlab_folds: int = DEFAULT_CLEANLAB_FOLDS) -> None:
    """Measure every ranking as a finder of flipped labels; store the rows and a per-sample Parquet file."""
    started = time.perf_counter()
    samples = samples.sort_values("index")
    flipped = flipped_mask(samples)
    suspicion, flagged, info = ranking_scores(ctx, samples, seed, params, dropout_mask, cleanlab_folds)

    columns = {"index": samples["index"].to_numpy(dtype=np.int64), "label": samples["label"].to_numpy(),
               "true_label": samples["true_label"].to_numpy(), "flipped": flipped}
    for name in suspicion:
        columns[f"suspicion_{name}"] = suspicion[name]
        columns[f"flagged_{name}"] = flagged[name]
    path = ctx.dir / "rankings.parquet"
    tmp = Path(f"{path}.tmp")
    pd.DataFrame(columns).to_parquet(tmp, index=False)
    os.replace(tmp, path)

    now = dt.datetime.now()
    with ctx.store.connect() as connection:
        connection.execute("DELETE FROM experiment_rankings WHERE experiment_id = ? AND seed = ?",
                           [experiment_id, seed])
        for name in suspicion:
            metrics = statistics.detection_metrics(flipped, suspicion[name], flagged[name])
            connection.execute(
                "INSERT INTO experiment_rankings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [experiment_id, seed, ctx.run_id, name, metrics["auroc"], metrics["precision"], metrics["recall"],
                 metrics["precision_at_flipped"], metrics["n_flagged"], metrics["n_flipped"],
                 metrics["true_positives"], json.dumps(metrics["curve"]), now])
    runs.update_run(ctx.store, ctx.run_id, diagnostics={"rankings": {**info, "path": str(path)}},
                    timings={"rankings_seconds": time.perf_counter() - started})
