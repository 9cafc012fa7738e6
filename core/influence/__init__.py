"""Influence of training samples on validation loss.

``influence(x) = -(sum_j grad L(v_j))^T (H + damping*I)^-1 grad L(x)``: positive means removing
``x`` is predicted to lower validation loss. See ``core.influence.scoring`` for the details.

Example, from a notebook::

    from core.influence import influence_scores, cross_entropy_losses
    scores = influence_scores(model, cross_entropy_losses, train_set, val_set, solver="cg", damping=0.01)
"""

from core.influence.errors import (IndefiniteHessianError, InfluenceError, NonFiniteGradientError,
                                   SingularHessianError, SolverDivergedError)
from core.influence.problem import InfluenceProblem, select_parameters
from core.influence.scoring import (InfluenceResult, compute_influence, cross_entropy_losses,
                                    influence_scores, score_samples, solve_direction, training_gradient_norm)
from core.influence.solvers import (ConjugateGradientSolver, ExactSolver, LissaSolver,
                                    estimate_max_eigenvalue, make_solver)

__all__ = [
    "influence_scores", "compute_influence", "cross_entropy_losses", "InfluenceResult", "InfluenceProblem",
    "score_samples", "solve_direction", "training_gradient_norm", "select_parameters",
    "ExactSolver", "ConjugateGradientSolver", "LissaSolver", "make_solver", "estimate_max_eigenvalue",
    "InfluenceError", "IndefiniteHessianError", "NonFiniteGradientError", "SingularHessianError",
    "SolverDivergedError",
]
