"""Inputs that broke other influence libraries: each gives a clear error or a correct score, never NaN."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.datasets import load_dataset
from core.influence import (IndefiniteHessianError, InfluenceProblem, NonFiniteGradientError, SingularHessianError,
                            SolverDivergedError, compute_influence, cross_entropy_losses, influence_scores,
                            solve_direction)
from core.models import build_model
from core.training import TrainConfig, train
from influence_reference import fit_softmax_regression, logreg_with, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def small_logreg(digits):
    train_x = digits.train.images.flatten(1).double()
    theta = fit_softmax_regression(train_x, torch.from_numpy(digits.train.labels), 10, l2=0.01)
    return logreg_with(theta)


def rank_deficient_problem():
    """Softmax regression with 3 x 31 parameters and 8 training samples: H has rank at most 16.

    Validation inputs are drawn independently, so their gradient has a component in H's null space.
    """
    generator = torch.Generator().manual_seed(0)
    features, classes = 30, 3
    train = TensorDataset(torch.randn(8, features, generator=generator, dtype=torch.float64),
                          torch.randint(0, classes, (8,), generator=generator))
    val = TensorDataset(torch.randn(20, features, generator=generator, dtype=torch.float64),
                        torch.randint(0, classes, (20,), generator=generator))
    model = build_model("logreg", num_classes=classes, in_channels=1, image_size=(features, 1), seed=0).double()
    return model, train, val


class CountingProblem(InfluenceProblem):
    """An ``InfluenceProblem`` that counts its curvature products."""

    products = 0

    def curvature_product(self, vector, batch=None):
        type(self).products += 1
        return super().curvature_product(vector, batch)


def test_lissa_scale_too_small_raises(small_logreg, digits):
    with pytest.raises(SolverDivergedError, match="Increase scale"):
        influence_scores(small_logreg, cross_entropy_losses, digits.train, digits.val, solver="lissa",
                         damping=0.01, scale=0.05, depth=500)


def test_lissa_scale_too_small_in_paper_loop_raises(small_logreg, digits):
    with pytest.raises(SolverDivergedError):
        influence_scores(small_logreg, cross_entropy_losses, digits.train, digits.val, solver="paper",
                         damping=0.01, scale=0.05, depth=200, max_val_samples=2)


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_rank_deficient_hessian_without_damping_raises(solver):
    model, train, val = rank_deficient_problem()

    with pytest.raises(SingularHessianError, match="set damping > 0"):
        influence_scores(model, cross_entropy_losses, train, val, solver=solver, damping=0.0, curvature="hessian")


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_rank_deficient_hessian_with_damping_scores(solver):
    model, train, val = rank_deficient_problem()

    options = {"tol": 1e-10} if solver == "cg" else {}

    scores = influence_scores(model, cross_entropy_losses, train, val, solver=solver, damping=0.1, **options)

    assert torch.isfinite(scores).all()
    assert len(scores) == 8


@pytest.mark.parametrize("where", ["validation", "training"])
def test_nan_gradient_raises_before_any_solve(small_logreg, digits, where):
    images = digits.train.images.clone() if where == "training" else digits.val.images.clone()
    images[5, 0, 3, 3] = float("nan")
    labels = torch.from_numpy(digits.train.labels if where == "training" else digits.val.labels)
    broken = TensorDataset(images, labels)
    train = broken if where == "training" else digits.train
    val = broken if where == "validation" else digits.val
    CountingProblem.products = 0
    problem = CountingProblem(small_logreg, cross_entropy_losses, train)

    with pytest.raises(NonFiniteGradientError, match=where):
        solve_direction(problem, val, "cg", damping=0.01)
    assert CountingProblem.products == 0


class BatchNormDropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Dropout(0.5), nn.Flatten())
        self.head = nn.Sequential(nn.BatchNorm1d(256), nn.Dropout(0.3), nn.Linear(256, 10))

    def forward(self, x):
        return self.head(self.features(x))


def test_batchnorm_dropout_scored_in_eval_mode(digits):
    torch.manual_seed(0)
    model = BatchNormDropoutNet()
    train(model, digits.train, TrainConfig(epochs=2, batch_size=128, seed=0))
    model.train()
    model.head[2].eval()
    modes = {name: module.training for name, module in model.named_modules()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    subset = torch.utils.data.Subset(digits.train, range(200))

    first = influence_scores(model, cross_entropy_losses, subset, digits.val, solver="cg", damping=0.1)
    second = influence_scores(model, cross_entropy_losses, subset, digits.val, solver="cg", damping=0.1)

    assert {name: module.training for name, module in model.named_modules()} == modes
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    assert int(model.features[1].num_batches_tracked) > 0
    assert torch.equal(first, second)

    # An independent eval-mode gradient: what the first sample's score is a dot product with.
    problem = InfluenceProblem(model, cross_entropy_losses, subset)
    direction, _ = solve_direction(problem, digits.val, "cg", damping=0.1)
    reference = model.__class__()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    image, label = subset[0]
    loss = cross_entropy_losses(reference(image[None]), label[None]).sum()
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(reference.parameters()))])
    assert float(first[0]) == pytest.approx(-float(gradient @ direction), rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    subset = digits.train.subset(np.arange(400))
    model = build_model("small_cnn", seed=0)
    train(model, subset, TrainConfig(epochs=15, batch_size=64, seed=0, weight_decay=0.0))
    return model, subset


def test_cnn_true_hessian_small_damping_indefinite(trained_cnn, digits):
    model, subset = trained_cnn

    with pytest.raises(IndefiniteHessianError, match="curvature='gauss_newton'"):
        influence_scores(model, cross_entropy_losses, subset, digits.val, solver="cg", damping=1e-4,
                         curvature="hessian", max_iter=300)


def test_cnn_gauss_newton_scores(trained_cnn, digits):
    model, subset = trained_cnn

    result = compute_influence(model, cross_entropy_losses, subset, digits.val, solver="cg", damping=1e-2,
                               curvature="gauss_newton", tol=1e-2, max_iter=300)

    assert torch.isfinite(result.scores).all()
    assert result.diagnostics["converged"]
    assert result.diagnostics["estimated_min_damped_eigenvalue"] > 0


def test_negative_damping_rejected(small_logreg, digits):
    with pytest.raises(ValueError, match="damping -0.1 must be a finite number >= 0"):
        influence_scores(small_logreg, cross_entropy_losses, digits.train, digits.val, damping=-0.1)


def test_unknown_solver_option_rejected(small_logreg, digits):
    with pytest.raises(ValueError, match="has no option"):
        influence_scores(small_logreg, cross_entropy_losses, digits.train, digits.val, solver="cg", depth=10)
