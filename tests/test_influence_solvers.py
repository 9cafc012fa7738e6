"""Solver contracts on problems whose solution is known: a diagonal quadratic, softmax regression, a CNN."""

import gc
import logging
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from core.datasets import load_dataset
from core.influence import (ConjugateGradientSolver, ExactSolver, IndefiniteHessianError, InfluenceProblem,
                            LissaSolver, SolverDivergedError, cross_entropy_losses, influence_scores,
                            score_samples, select_parameters, solve_direction)
from core.models import build_model
from influence_reference import (fit_softmax_regression, logreg_with, one_thread,  # noqa: F401
                                 reference_influence, relative_error)


class Quadratic(nn.Module):
    """Per-sample loss ``sum_d x_d * w_d^2``: the mean loss has the Hessian ``diag(2 * mean(x))``."""

    def __init__(self, size):
        super().__init__()
        self.w = nn.Parameter(torch.ones(size, dtype=torch.float64))

    def forward(self, x):
        return (x * self.w ** 2).sum(1)


def identity_loss(outputs, targets):
    return outputs


def quadratic_problem(eigenvalues, n=4):
    """A problem whose Hessian is exactly ``diag(eigenvalues)``: every sample has ``x = eigenvalues / 2``."""
    eigenvalues = torch.tensor(eigenvalues, dtype=torch.float64)
    data = TensorDataset((eigenvalues / 2).repeat(n, 1), torch.zeros(n))
    return InfluenceProblem(Quadratic(len(eigenvalues)), identity_loss, data, curvature="hessian")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def logreg_problem(digits):
    train_x = digits.train.images.flatten(1).double()
    theta = fit_softmax_regression(train_x, torch.from_numpy(digits.train.labels), 10, l2=0.01)
    return InfluenceProblem(logreg_with(theta), cross_entropy_losses, digits.train, curvature="hessian")


EIGENVALUES = [0.5, 1.0, 2.0, 4.0, 8.0]


def test_exact_reports_eigenvalues():
    problem = quadratic_problem(EIGENVALUES)
    vector = torch.arange(1.0, 6.0, dtype=torch.float64)

    solution, info = ExactSolver().solve(problem, vector, damping=0.1)

    assert info["min_eigenvalue"] == pytest.approx(0.5, rel=1e-12)
    assert info["max_eigenvalue"] == pytest.approx(8.0, rel=1e-12)
    assert info["condition_number"] == pytest.approx(8.1 / 0.6, rel=1e-12)
    expected = vector / (torch.tensor(EIGENVALUES, dtype=torch.float64) + 0.1)
    assert relative_error(solution, expected) < 1e-12


def test_exact_rejects_negative_eigenvalue():
    problem = quadratic_problem([-0.3, -0.2, 1.0, 2.0])

    with pytest.raises(IndefiniteHessianError, match="2 eigenvalues are negative"):
        ExactSolver().solve(problem, torch.ones(4, dtype=torch.float64), damping=0.1)


def test_cg_solution_residual_and_ritz_values():
    problem = quadratic_problem(EIGENVALUES)
    vector = torch.arange(1.0, 6.0, dtype=torch.float64)

    solution, info = ConjugateGradientSolver(tol=1e-10, max_iter=50).solve(problem, vector, damping=0.1)

    damped = torch.tensor(EIGENVALUES, dtype=torch.float64) + 0.1
    true_residual = float((vector - damped * solution).norm() / vector.norm())
    assert info["converged"]
    assert info["iterations"] <= 5
    assert info["relative_residual"] == pytest.approx(true_residual, rel=1e-3, abs=1e-14)
    assert info["relative_residual"] < 1e-10
    assert len(info["residuals"]) == info["iterations"]
    assert relative_error(solution, vector / damped) < 1e-10
    assert info["estimated_min_damped_eigenvalue"] == pytest.approx(0.6, rel=1e-6)
    assert info["estimated_max_damped_eigenvalue"] == pytest.approx(8.1, rel=1e-6)


def test_cg_detects_negative_curvature():
    problem = quadratic_problem([-1.0, 1.0, 2.0])

    with pytest.raises(IndefiniteHessianError, match="not positive definite"):
        ConjugateGradientSolver().solve(problem, torch.ones(3, dtype=torch.float64), damping=0.1)


def test_cg_out_of_iterations_warns(caplog):
    problem = quadratic_problem(EIGENVALUES)

    with caplog.at_level(logging.WARNING, logger="core.influence.solvers"):
        _, info = ConjugateGradientSolver(tol=1e-12, max_iter=2).solve(problem, torch.ones(5, dtype=torch.float64), 0.1)

    assert not info["converged"]
    assert info["iterations"] == 2
    assert "CG stopped after 2 iterations" in caplog.text


def test_lissa_full_batch_stops_early_at_exact_solution():
    problem = quadratic_problem(EIGENVALUES)
    vector = torch.arange(1.0, 6.0, dtype=torch.float64)

    solution, info = LissaSolver(depth=5000, batch_size=4, tol=1e-12).solve(problem, vector, damping=0.1)

    damped = torch.tensor(EIGENVALUES, dtype=torch.float64) + 0.1
    assert info["steps"][0] < 5000
    assert info["estimated_max_eigenvalue"] == pytest.approx(8.1, rel=1e-2)
    assert relative_error(solution, vector / damped) < 1e-9
    assert info["relative_residual"] < 1e-9


def test_lissa_growing_norm_raises():
    # With damping 0.1 the damped matrix has eigenvalue -0.4, so (I - A) has one eigenvalue above 1.
    problem = quadratic_problem([-0.5, 1.0, 2.0])

    with pytest.raises(SolverDivergedError, match="diverged"):
        LissaSolver(depth=5000, batch_size=4, scale=3.0).solve(problem, torch.ones(3, dtype=torch.float64), 0.1)


def test_lissa_repeats_are_averaged(logreg_problem, digits):
    gradient = logreg_problem.loss_gradient_sum(digits.val)
    options = dict(depth=30, batch_size=64, scale=3.0, tol=0.0, check_residual=False)

    averaged, info = LissaSolver(repeats=3, seed=0, **options).solve(logreg_problem, gradient, 0.01)
    singles = [LissaSolver(repeats=1, seed=seed, **options).solve(logreg_problem, gradient, 0.01)[0]
               for seed in (0, 1000, 2000)]

    assert info["steps"] == [30, 30, 30]
    assert relative_error(averaged, torch.stack(singles).mean(0)) < 1e-12
    assert relative_error(singles[0], singles[1]) > 1e-3


def test_lissa_keeps_no_graph_between_steps(logreg_problem, digits):
    # If a step kept the autograd graph, each iterate would hold the previous one alive.
    gradient = logreg_problem.loss_gradient_sum(digits.val)
    alive = []
    original = logreg_problem.curvature_product

    def recording_product(vector, batch=None):
        if batch is not None:
            alive.append(weakref.ref(vector))
        return original(vector, batch)

    logreg_problem.curvature_product = recording_product
    try:
        solution, _ = LissaSolver(depth=50, batch_size=64, scale=3.0, tol=0.0).solve(logreg_problem, gradient, 0.01)
    finally:
        del logreg_problem.curvature_product
    gc.collect()

    assert len(alive) == 50
    assert sum(ref() is not None for ref in alive) <= 1
    assert not solution.requires_grad
    assert solution.grad_fn is None


def test_paper_loop_equals_one_solve(logreg_problem, digits):
    # With the same scale and batches for every right-hand side, LiSSA is linear in it, so one
    # solve per validation sample, summed, equals one solve of the summed gradient.
    val = Subset(digits.val, range(6))
    options = dict(depth=60, batch_size=128, scale=3.0, tol=0.0, seed=5)

    looped, info = solve_direction(logreg_problem, val, "paper", damping=0.01, **options)
    single, single_info = solve_direction(logreg_problem, val, "lissa", damping=0.01, **options)

    assert info["validation_samples"] == 6
    assert relative_error(looped, single) < 1e-10
    assert info["relative_residual"] == pytest.approx(single_info["relative_residual"], rel=1e-8)


@pytest.fixture(scope="module")
def cnn(digits):
    model = build_model("small_cnn", seed=0).double()
    subset = digits.train.subset(np.arange(300))
    return model, subset


def test_last_layer_matches_softmax_regression_on_features(cnn, digits):
    model, subset = cnn
    model.eval()
    with torch.no_grad():
        train_features = model.classifier[:-1](model.features(subset.images.double()))
        val_features = model.classifier[:-1](model.features(digits.val.images.double()))
    last = model.classifier[-1]
    theta = torch.cat([last.weight.detach().reshape(-1), last.bias.detach()])
    expected = reference_influence(theta, train_features, torch.from_numpy(subset.labels), val_features,
                                   torch.from_numpy(digits.val.labels), 10, damping=0.01)

    scores = influence_scores(model, cross_entropy_losses, subset, digits.val, solver="exact", damping=0.01,
                              curvature="hessian", params="last_layer")

    assert relative_error(scores, expected) < 1e-8


def test_named_module_selection_equals_last_layer(cnn, digits):
    model, subset = cnn
    common = dict(solver="cg", damping=0.01, tol=1e-10, max_iter=500)

    by_name = influence_scores(model, cross_entropy_losses, subset, digits.val, params=["classifier.3"], **common)
    by_string = influence_scores(model, cross_entropy_losses, subset, digits.val, params="classifier.3", **common)
    last = influence_scores(model, cross_entropy_losses, subset, digits.val, params="last_layer", **common)

    assert torch.equal(by_name, last)
    assert torch.equal(by_string, last)


def test_parameter_selection_names(cnn):
    model, _ = cnn

    assert select_parameters(model, "last_layer") == ["classifier.3.weight", "classifier.3.bias"]
    assert select_parameters(model, "features.1,classifier.1") == [
        "features.1.weight", "features.1.bias", "classifier.1.weight", "classifier.1.bias"]
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(model, ["classifier.9"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
def test_cuda_scores_match_cpu(cnn, digits, solver):
    model, subset = cnn
    options = {"exact": {}, "cg": {"tol": 1e-10}, "lissa": {"depth": 50, "scale": 10.0, "tol": 0.0}}[solver]
    common = dict(solver=solver, damping=0.1, params="last_layer", **options)

    on_cpu = influence_scores(model, cross_entropy_losses, subset, digits.val, **common)
    on_cuda = influence_scores(model.to("cuda"), cross_entropy_losses, subset, digits.val, **common)
    model.to("cpu")

    assert on_cuda.device.type == "cpu"
    assert relative_error(on_cuda, on_cpu) < 1e-8


def test_scores_from_gauss_newton_cache_equal_fresh(cnn, digits):
    model, subset = cnn
    problem = InfluenceProblem(model, cross_entropy_losses, subset, batch_size=128)
    direction = torch.randn(problem.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fresh = score_samples(problem, direction, subset)
    indices = np.array([299, 0, 128, 127, 5])

    problem.curvature_product(direction)
    cached = score_samples(problem, direction, subset)

    assert problem.cached_directional_derivatives(direction) is not None
    assert relative_error(cached, fresh) < 1e-10
    assert relative_error(score_samples(problem, direction, subset, indices=indices), fresh[indices]) < 1e-10
    other = Subset(subset, range(10))
    assert relative_error(score_samples(problem, direction, other), fresh[:10]) < 1e-10


@pytest.mark.parametrize("cache_limit", [20_000, 0], ids=["linearisation cache", "no cache"])
def test_cg_tangent_scores_equal_fresh(cnn, digits, cache_limit):
    model, subset = cnn
    solving = InfluenceProblem(model, cross_entropy_losses, subset, batch_size=128, cache_limit=cache_limit)
    direction, _ = solve_direction(solving, digits.val, "cg", 0.1, tol=1e-6)
    fresh = score_samples(InfluenceProblem(model, cross_entropy_losses, subset, batch_size=128), direction, subset)
    indices = np.array([299, 0, 128, 127, 5])

    # Without a linearisation cache, only the tangents summed during the solve provide the scores.
    assert solving.cached_directional_derivatives(direction) is not None
    assert relative_error(score_samples(solving, direction, subset), fresh) < 1e-10
    assert relative_error(score_samples(solving, direction, subset, indices=indices), fresh[indices]) < 1e-10
    other = direction + 1e-3 * torch.randn(direction.shape, generator=torch.Generator().manual_seed(1),
                                           dtype=direction.dtype)
    if cache_limit == 0:
        assert solving.cached_directional_derivatives(other) is None
    other_fresh = score_samples(InfluenceProblem(model, cross_entropy_losses, subset, batch_size=128), other, subset)
    assert relative_error(score_samples(solving, other, subset), other_fresh) < 1e-10


def test_cg_continues_from_checkpoint(cnn, digits, tmp_path):
    model, subset = cnn
    checkpoint = str(tmp_path / "solve.ckpt")

    def problem():
        return InfluenceProblem(model, cross_entropy_losses, subset, batch_size=128)

    gradient = problem().loss_gradient_sum(digits.val)
    whole, whole_info = ConjugateGradientSolver(tol=1e-8).solve(problem(), gradient, 0.1)
    ConjugateGradientSolver(tol=1e-8, max_iter=3).solve(problem(), gradient, 0.1, checkpoint_path=checkpoint)
    resuming = problem()
    resumed, info = ConjugateGradientSolver(tol=1e-8).solve(resuming, gradient, 0.1, checkpoint_path=checkpoint)
    fresh = score_samples(problem(), resumed, subset)

    assert info["resumed_from_iteration"] == 3
    assert info["iterations"] == whole_info["iterations"]
    assert relative_error(resumed, whole) < 1e-10
    # The tangents of iterations 1-3 are lost, so scoring must not use a partial sum.
    assert relative_error(score_samples(resuming, resumed, subset), fresh) < 1e-10


def test_cg_ignores_checkpoint_of_another_solve(cnn, digits, tmp_path, caplog):
    model, subset = cnn
    problem = InfluenceProblem(model, cross_entropy_losses, subset, batch_size=128)
    gradient = problem.loss_gradient_sum(digits.val)
    checkpoint = tmp_path / "solve.ckpt"
    ConjugateGradientSolver(tol=1e-8, max_iter=2).solve(problem, gradient, 0.1, checkpoint_path=str(checkpoint))

    _, other_damping = ConjugateGradientSolver(tol=1e-3).solve(problem, gradient, 0.2, checkpoint_path=str(checkpoint))
    checkpoint.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        _, damaged = ConjugateGradientSolver(tol=1e-3).solve(problem, gradient, 0.1, checkpoint_path=str(checkpoint))

    assert other_damping["resumed_from_iteration"] is None
    assert damaged["resumed_from_iteration"] is None
    assert "unreadable CG checkpoint" in caplog.text


def test_true_hessian_solve_records_no_tangents(logreg_problem, digits):
    direction, _ = solve_direction(logreg_problem, digits.val, "cg", 0.01, tol=1e-6)

    assert logreg_problem.cached_directional_derivatives(direction) is None


def test_cg_stops_at_machine_precision():
    problem = quadratic_problem(EIGENVALUES)

    solution, info = ConjugateGradientSolver(tol=0.0, max_iter=100).solve(
        problem, torch.arange(1.0, 6.0, dtype=torch.float64), damping=0.1)

    assert info["iterations"] < 100
    assert info["converged"]
    assert torch.isfinite(solution).all()
