"""Influence of training samples, and the validation-gradient solve it starts from.

Sign convention, used everywhere in this project::

    influence(x) = -g^T (H + damping*I)^-1 grad L(x),    g = sum_j grad L(v_j)

which is Koh and Liang's ``I_up,loss`` summed over the validation set. A positive score means that
upweighting x raises validation loss, so removing x is predicted to lower it: x is *unfavorable*.
Removing x from ``n`` training samples changes the total validation loss by about
``-influence(x) / n`` (first order).

By linearity one solve ``s = (H + damping*I)^-1 g`` serves every validation sample, and
``influence(x) = -s . grad L(x)`` is the directional derivative of ``L(x)`` along ``-s``: one
forward-mode pass (``torch.func.jvp``) scores a whole batch without keeping per-sample gradients.
"""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from core.influence import defaults
from core.influence.errors import NonFiniteGradientError, SolverDivergedError
from core.influence.problem import InfluenceProblem
from core.influence.solvers import LissaSolver, make_solver
from core.progress import ProgressFn, report

logger = logging.getLogger(__name__)


@dataclass
class InfluenceResult:
    """Scores of every training sample (dataset order), the solved direction ``s`` and diagnostics."""

    scores: torch.Tensor
    direction: torch.Tensor
    diagnostics: dict = field(default_factory=dict)

    def predicted_validation_change(self) -> torch.Tensor:
        """First-order change in total validation loss when each sample alone is removed."""
        return -self.scores / len(self.scores)


def score_samples(problem: InfluenceProblem, direction: torch.Tensor, data, indices=None,
                  progress: Optional[ProgressFn] = None) -> torch.Tensor:
    """Return ``-direction . grad L(x)`` for the samples of ``data`` (or its ``indices``), in order.

    One forward-mode pass per batch, about two to three forward passes' cost; no per-sample gradient
    is formed. When ``data`` is the problem's training set, two shortcuts give the same scores
    faster. If ``direction`` is the solution of a Gauss-Newton CG solve on this problem, the
    output tangents summed during that solve already hold every ``J_i direction``, so scoring takes
    no pass through the network. Otherwise a linearisation cache built by Gauss-Newton products is
    replayed when there is one.
    Raises ``NonFiniteGradientError`` naming the positions of any sample whose score is NaN or
    infinite.
    """
    total = len(data) if indices is None else len(indices)
    cached = problem.cached_directional_derivatives(direction, indices) if data is problem.train else None
    if cached is not None:
        scores = -cached.detach()
        positions = torch.arange(total) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
        _raise_on_non_finite(scores, positions)
        report(progress, "score", total, total, "scoring training samples")
        return scores.cpu()

    chunks = []
    done = 0
    for inputs, targets, positions in problem.batches(data, indices=indices):
        scores = -problem.directional_derivatives(direction, inputs, targets).detach()
        _raise_on_non_finite(scores, positions)
        chunks.append(scores)
        done += len(targets)
        report(progress, "score", done, total, "scoring training samples")
    if not chunks:
        return torch.zeros(0, dtype=problem.dtype)
    return torch.cat(chunks).cpu()


def _raise_on_non_finite(scores: torch.Tensor, positions: torch.Tensor) -> None:
    bad = ~torch.isfinite(scores)
    if bad.any():
        raise NonFiniteGradientError(
            f"the scores of samples at positions {positions[bad.cpu()].tolist()[:10]} are NaN or infinite; "
            f"check those inputs for NaN or extreme values. No scores were kept")


def solve_direction(problem: InfluenceProblem, val, solver: str = defaults.SOLVER, damping: float = defaults.DAMPING,
                    progress: Optional[ProgressFn] = None, checkpoint_path: Optional[str] = None,
                    **solver_options) -> tuple:
    """Return ``(s, diagnostics)`` with ``s = (H + damping*I)^-1 sum_j grad L(v_j)``.

    The validation and the training gradients are checked for NaN and infinity first, so bad
    inputs raise ``NonFiniteGradientError`` before any curvature product is taken. The training
    gradient's norm (0 at a minimum) is reported as ``training_gradient_norm``.

    ``solver="paper"`` reproduces the data dropout paper's loop instead: one LiSSA solve per
    validation sample (``max_val_samples`` caps how many), summed afterwards. With the same
    ``scale`` and batches for every sample, LiSSA is linear in its right-hand side, so the loop
    gives the same direction as one LiSSA solve of the summed gradient, at ``k`` times the cost.

    ``checkpoint_path`` (CG only; other solvers ignore it) saves CG's state after every iteration,
    and a later call with the same problem, data and settings continues from it.
    """
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping {damping} must be a finite number >= 0, e.g. 0.1")
    started = time.perf_counter()
    gradient = problem.loss_gradient_sum(val)
    training_norm = float(problem.training_gradient().norm())
    gradient_seconds = time.perf_counter() - started
    if solver == "paper":
        direction, diagnostics = _solve_paper_loop(problem, val, damping, progress, **solver_options)
    else:
        resume = {"checkpoint_path": checkpoint_path} if checkpoint_path and solver == "cg" else {}
        direction, diagnostics = make_solver(solver, **solver_options).solve(problem, gradient, damping, progress,
                                                                             **resume)
    if not torch.isfinite(direction).all():
        raise SolverDivergedError(f"solver {solver!r} returned a non-finite direction; no scores were computed. "
                                  f"Raise damping or use solver='cg'")
    diagnostics.update({"validation_gradient_norm": float(gradient.norm()), "training_gradient_norm": training_norm,
                        "validation_gradient_seconds": gradient_seconds})
    return direction, diagnostics


def _solve_paper_loop(problem, val, damping, progress, max_val_samples: Optional[int] = None, **lissa_options):
    solver = LissaSolver(**lissa_options)
    solver.scale, estimated = solver.resolve_scale(problem, damping)
    check_residual, solver.check_residual = solver.check_residual, False
    count = len(val) if max_val_samples is None else min(max_val_samples, len(val))
    direction = torch.zeros_like(problem.theta)
    gradient_sum = torch.zeros_like(problem.theta)
    steps = []
    started = time.perf_counter()
    for j in range(count):
        gradient = problem.loss_gradient_sum(torch.utils.data.Subset(val, [j]))
        solution, info = solver.solve(problem, gradient, damping)
        direction += solution
        gradient_sum += gradient
        steps.extend(info["steps"])
        report(progress, "solve", j + 1, count, "paper loop: one LiSSA solve per validation sample")

    # One residual check of the summed direction, as a single solve of the summed gradient has.
    diagnostics = {"solver": "paper", "validation_samples": count, "scale": solver.scale,
                   "estimated_max_eigenvalue": estimated, "steps": steps}
    if check_residual:
        diagnostics["relative_residual"] = solver.check_solution(problem, gradient_sum, direction, damping,
                                                                 solver.scale)
    diagnostics["seconds"] = time.perf_counter() - started
    return direction, diagnostics


def training_gradient_norm(problem: InfluenceProblem) -> float:
    """Return ``||grad of the mean training loss||`` at the problem's parameters (0 at a minimum)."""
    return float(problem.training_gradient().norm())


def compute_influence(model, loss_fn, train, val, solver: str = defaults.SOLVER, damping: float = defaults.DAMPING,
                      curvature: str = defaults.CURVATURE, params="all", batch_size: int = defaults.BATCH_SIZE,
                      dtype: Optional[torch.dtype] = None, progress: Optional[ProgressFn] = None,
                      **solver_options) -> InfluenceResult:
    """Score every training sample; see the module docstring for the sign convention.

    Args:
        model: the trained network. It is evaluated in eval mode; its mode and buffers are unchanged.
        loss_fn: ``loss_fn(outputs, targets)`` returning per-sample losses (``reduction="none"``).
        train, val: Datasets of ``(input, target)`` (a ``LabeledSplit``, ``TensorDataset``, ...).
        solver: "cg" (default), "exact", "lissa" or "paper".
        damping: added to the curvature's diagonal. A network's Hessian is rarely positive definite,
            and damping also stands in for an L2 penalty that the training loss did not include.
        curvature: "gauss_newton" (default, positive semi-definite) or "hessian".
        params: "all", "last_layer" or a list of module names; influence is taken w.r.t. these.
        dtype: computation dtype, the model's by default.
        solver_options: passed to the solver (``tol``, ``max_iter``, ``depth``, ``scale``, ...).
    """
    timings = {}
    started = time.perf_counter()
    problem = InfluenceProblem(model, loss_fn, train, params=params, curvature=curvature,
                               batch_size=batch_size, dtype=dtype)
    direction, diagnostics = solve_direction(problem, val, solver, damping, progress, **solver_options)
    timings["solve_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    scores = score_samples(problem, direction, train, progress=progress)
    timings["score_seconds"] = time.perf_counter() - started
    diagnostics.update({"curvature": curvature, "damping": damping, "params": params,
                        "num_params": problem.num_params, "timings": timings})
    return InfluenceResult(scores=scores, direction=direction.cpu(), diagnostics=diagnostics)


def influence_scores(model, loss_fn, train, val, solver: str = defaults.SOLVER, damping: float = defaults.DAMPING,
                     **options) -> torch.Tensor:
    """Return a 1-D tensor of influence scores, one per training sample in dataset order.

    Positive means removing the sample is predicted to lower validation loss (unfavorable).
    ``train`` and ``val`` are Datasets of ``(input, target)``; see ``compute_influence`` for options.
    """
    return compute_influence(model, loss_fn, train, val, solver=solver, damping=damping, **options).scores


def cross_entropy_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, the classification loss the engine uses by default."""
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")
