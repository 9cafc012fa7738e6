"""Influence scores of softmax regression against explicit-Hessian and leave-one-out references."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from core.influence import compute_influence, cross_entropy_losses, influence_scores
from influence_reference import (fit_softmax_regression, flat_digits, logreg_with, mean_loss, one_thread,  # noqa: F401
                                 pearson, reference_influence, relative_error, spearman, total_loss)

L2 = 0.01


@pytest.fixture(scope="module")
def digits():
    data = flat_digits()
    data["theta"] = fit_softmax_regression(data["train_x"], data["train_y"], 10, L2)
    data["model"] = logreg_with(data["theta"])
    data["reference"] = reference_influence(data["theta"], data["train_x"], data["train_y"],
                                            data["val_x"], data["val_y"], 10, damping=L2)
    return data


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_exact_solver_matches_explicit_hessian(digits, curvature):
    scores = influence_scores(digits["model"], cross_entropy_losses, digits["splits"].train,
                              digits["splits"].val, solver="exact", damping=L2, curvature=curvature)

    assert scores.dtype == torch.float64
    assert relative_error(scores, digits["reference"]) < 1e-4


def test_curvatures_agree_for_linear_model(digits):
    # A linear model's outputs have no second derivative in the parameters, so H = J^T H_out J.
    common = dict(solver="exact", damping=L2)
    hessian = compute_influence(digits["model"], cross_entropy_losses, digits["splits"].train,
                                digits["splits"].val, curvature="hessian", **common)
    gauss_newton = compute_influence(digits["model"], cross_entropy_losses, digits["splits"].train,
                                     digits["splits"].val, curvature="gauss_newton", **common)

    assert relative_error(gauss_newton.scores, hessian.scores) < 1e-8
    assert relative_error(gauss_newton.direction, hessian.direction) < 1e-8
    assert gauss_newton.diagnostics["max_eigenvalue"] == pytest.approx(hessian.diagnostics["max_eigenvalue"],
                                                                       rel=1e-8)


def test_exact_solver_on_synthetic_float64():
    torch.manual_seed(3)
    classes, features = 3, 5
    centers = 2 * torch.randn(classes, features, dtype=torch.float64)
    train_y = torch.randint(0, classes, (60,))
    train_x = centers[train_y] + torch.randn(60, features, dtype=torch.float64)
    val_y = torch.randint(0, classes, (15,))
    val_x = centers[val_y] + torch.randn(15, features, dtype=torch.float64)
    theta = fit_softmax_regression(train_x, train_y, classes, l2=0.1)
    model = logreg_with(theta, classes, features)

    scores = influence_scores(model, cross_entropy_losses, TensorDataset(train_x, train_y),
                              TensorDataset(val_x, val_y), solver="exact", damping=0.05, curvature="hessian")
    expected = reference_influence(theta, train_x, train_y, val_x, val_y, classes, damping=0.05)

    assert relative_error(scores, expected) < 1e-6


def test_cg_matches_exact(digits):
    scores = influence_scores(digits["model"], cross_entropy_losses, digits["splits"].train,
                              digits["splits"].val, solver="cg", damping=L2, tol=1e-6, max_iter=500)

    assert pearson(scores, digits["reference"]) >= 0.99
    assert relative_error(scores, digits["reference"]) < 1e-3


def test_lissa_matches_exact(digits):
    result = compute_influence(digits["model"], cross_entropy_losses, digits["splits"].train,
                               digits["splits"].val, solver="lissa", damping=L2, depth=400,
                               batch_size=1024, repeats=1)

    assert pearson(result.scores, digits["reference"]) >= 0.99
    assert result.diagnostics["relative_residual"] < 0.5
    assert result.diagnostics["scale"] > result.diagnostics["estimated_max_eigenvalue"]


def test_sign_of_copied_validation_sample(digits):
    # A training copy of a validation image with its own label lowers that sample's loss (helps:
    # negative); the same image with a wrong label raises it (hurts: positive).
    data = digits
    val_index = int(torch.nonzero(data["val_y"] == 3)[0])
    image = data["val_x"][val_index:val_index + 1]
    train_x = torch.cat([data["train_x"], image, image])
    train_y = torch.cat([data["train_y"], torch.tensor([3, 8])])
    theta = fit_softmax_regression(train_x, train_y, 10, L2, start=data["theta"])
    model = logreg_with(theta)

    scores = influence_scores(model, cross_entropy_losses, TensorDataset(train_x, train_y),
                              TensorDataset(data["val_x"], data["val_y"]), solver="exact", damping=L2)

    assert scores[-2] < 0
    assert scores[-1] > 0
    assert scores[-1] > np.quantile(scores[:-2].numpy(), 0.99)


def test_leave_one_out_retraining(digits):
    # The training objective is mean loss + L2/2 ||theta||^2, so H + L2*I is its exact Hessian and
    # -influence/n predicts the change of the total validation loss when one sample is left out.
    data = digits
    n = len(data["train_y"])
    scores = influence_scores(data["model"], cross_entropy_losses, data["splits"].train, data["splits"].val,
                              solver="exact", damping=L2, curvature="hessian")
    order = np.argsort(scores.numpy())
    chosen = np.concatenate([order[:20], order[-20:]])
    base = total_loss(data["theta"], data["val_x"], data["val_y"], 10)

    predicted, actual = [], []
    for index in chosen:
        keep = np.delete(np.arange(n), index)
        theta = fit_softmax_regression(data["train_x"], data["train_y"], 10, L2, start=data["theta"], keep=keep)
        actual.append(total_loss(theta, data["val_x"], data["val_y"], 10) - base)
        predicted.append(-float(scores[index]) / n)

    assert pearson(predicted, actual) >= 0.95
    assert spearman(predicted, actual) >= 0.9


def test_reference_fit_is_at_minimum(digits):
    theta = digits["theta"].clone().requires_grad_(True)
    loss = mean_loss(theta, digits["train_x"], digits["train_y"], 10, L2)
    gradient = torch.autograd.grad(loss, theta)[0]

    assert float(gradient.norm()) < 1e-7
