"""Self-influence: each training sample's influence on its own loss, a detector of mislabelled samples.

Definition, in the engine's sign convention (positive means removing the sample lowers the loss in
question)::

    self_influence(x) = -grad L(x)^T (H + damping*I)^-1 grad L(x)

With a positive-definite damped curvature this is never positive: removing ``x`` raises its own
loss by about ``-self_influence(x) / n``. A large magnitude means the model had to bend far to fit
``x``, which is what a wrong label forces, so the suspicion ranking is ``-self_influence`` (highest
first).

Approximation used here, and why: the exact quantity over all parameters needs one inverse-curvature
product per training sample (a CG solve of about 200 curvature products each), far too costly for
every sample. This module restricts the gradients and the curvature to a parameter subset
(``params="last_layer"`` by default, 650 parameters for the digits CNN) and solves *exactly* there.
It forms the subset's curvature of the mean training loss with ``P`` curvature products
(``ExactSolver.hessian``), eigendecomposes it once, and takes every sample's quadratic form
``sum_k (v_k . g)^2 / (lambda_k + damping)`` from its subset gradient ``g``. All other parameters
stay at their trained values. Cost: ``P`` products over the training set, one ``O(P^3)``
eigendecomposition and one ``B x P`` Jacobian per batch.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.func import jacrev

from core.influence.errors import IndefiniteHessianError
from core.influence.problem import InfluenceProblem
from core.influence.solvers import ExactSolver
from core.progress import ProgressFn, report

logger = logging.getLogger(__name__)


@dataclass
class SelfInfluenceResult:
    """Self-influence of every training sample (dataset order, never positive) and diagnostics."""

    scores: np.ndarray
    diagnostics: dict = field(default_factory=dict)

    @property
    def suspicion(self) -> np.ndarray:
        """``-scores``: higher means more likely mislabelled."""
        return -self.scores


def per_sample_gradients(problem: InfluenceProblem, data, indices=None) -> torch.Tensor:
    """Return the ``N x P`` matrix of per-sample loss gradients over the problem's parameters.

    Memory is ``N * P`` numbers, so this is meant for a parameter subset such as the last layer.
    """
    rows = []
    for inputs, targets, _ in problem.batches(data, indices=indices):
        rows.append(jacrev(lambda p: problem.losses(p, inputs, targets))(problem.theta).detach())
    return torch.cat(rows) if rows else torch.zeros(0, problem.num_params, dtype=problem.dtype)


def self_influence(model: torch.nn.Module, loss_fn, train, params="last_layer", damping: float = 0.01,
                   curvature: str = "gauss_newton", dtype: Optional[torch.dtype] = torch.float64,
                   max_params: int = 5_000, progress: Optional[ProgressFn] = None) -> SelfInfluenceResult:
    """Compute every training sample's self-influence with the exact solve on ``params``.

    Args:
        model: the trained network, evaluated in eval mode (BatchNorm running statistics).
        loss_fn: per-sample loss, ``loss_fn(outputs, targets)`` with ``reduction="none"``.
        train: the training Dataset; the curvature is that of its mean loss.
        params: the parameter subset ("last_layer", or module names); "all" works only for models
            with at most ``max_params`` parameters, because the curvature is formed explicitly.
        damping: added to the curvature's eigenvalues, as in the validation influence.
        dtype: float64 by default; the subset is small, so the precision costs little.

    Raises ``IndefiniteHessianError`` when an eigenvalue plus ``damping`` is not positive.
    """
    started = time.perf_counter()
    problem = InfluenceProblem(model, loss_fn, train, params=params, curvature=curvature, dtype=dtype)
    solver = ExactSolver(max_params=max_params)

    matrix = solver.hessian(problem, progress).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    damped = eigenvalues + damping
    if damped[0] <= 0:
        raise IndefiniteHessianError(
            f"the {curvature} curvature on {params!r} plus damping {damping:g} has eigenvalue "
            f"{float(damped[0]):.3g} <= 0, so self-influence would be meaningless; raise damping above "
            f"{float(-eigenvalues[0]):.3g} or use curvature='gauss_newton'")
    formed = time.perf_counter()

    scores = []
    n = len(train)
    done = 0
    for start in range(0, n, problem.batch_size):
        indices = np.arange(start, min(start + problem.batch_size, n))
        gradients = per_sample_gradients(problem, train, indices).double()
        projected = gradients @ eigenvectors
        scores.append(-(projected.square() / damped).sum(1))
        done += len(indices)
        report(progress, "self_influence", done, n, "self-influence of training samples")

    values = torch.cat(scores).cpu().numpy()
    diagnostics = {"params": params, "num_params": problem.num_params, "damping": damping,
                   "curvature": curvature, "min_eigenvalue": float(eigenvalues[0]),
                   "max_eigenvalue": float(eigenvalues[-1]), "form_seconds": formed - started,
                   "seconds": time.perf_counter() - started,
                   "approximation": f"exact eigendecomposition restricted to params={params!r}"}
    logger.info("self-influence of %d samples over %d parameters in %.1f s", n, problem.num_params,
                diagnostics["seconds"])
    return SelfInfluenceResult(scores=values, diagnostics=diagnostics)
