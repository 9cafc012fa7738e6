"""Reference computations for the influence tests, written without the engine's code.

Softmax regression with an explicit Hessian (``torch.autograd.functional.hessian`` of the mean
training loss), per-sample gradients by a plain loop, ``torch.linalg.solve``, and L-BFGS fits in
float64 run to convergence. The flat parameter vector is laid out as the engine lays out
``LogisticRegression``: ``linear.weight`` row by row, then ``linear.bias``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from core.datasets import load_dataset
from core.models import build_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run a test module on one thread: on a shared, busy CPU two threads often wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def unpack(theta: torch.Tensor, num_classes: int, num_features: int) -> tuple:
    weight = theta[:num_classes * num_features].view(num_classes, num_features)
    bias = theta[num_classes * num_features:]
    return weight, bias


def mean_loss(theta, inputs, targets, num_classes, l2=0.0):
    """Mean cross-entropy of softmax regression, plus ``l2 / 2 * ||theta||^2``."""
    weight, bias = unpack(theta, num_classes, inputs.shape[1])
    loss = F.cross_entropy(F.linear(inputs, weight, bias), targets)
    return loss + 0.5 * l2 * (theta @ theta)


def explicit_hessian(theta, inputs, targets, num_classes) -> torch.Tensor:
    """The Hessian of the mean training loss, by automatic differentiation of the whole function."""
    return torch.autograd.functional.hessian(lambda t: mean_loss(t, inputs, targets, num_classes), theta)


def per_sample_gradients(theta, inputs, targets, num_classes) -> torch.Tensor:
    """One row per sample, by a plain loop over samples."""
    rows = []
    for i in range(len(targets)):
        t = theta.detach().clone().requires_grad_(True)
        loss = mean_loss(t, inputs[i:i + 1], targets[i:i + 1], num_classes)
        rows.append(torch.autograd.grad(loss, t)[0])
    return torch.stack(rows)


def reference_influence(theta, train_x, train_y, val_x, val_y, num_classes, damping) -> torch.Tensor:
    """``-g^T (H + damping*I)^-1 grad L(x_i)`` for every training sample, from explicit matrices."""
    hessian = explicit_hessian(theta, train_x, train_y, num_classes)
    damped = hessian + damping * torch.eye(len(theta), dtype=theta.dtype)
    val_gradient = per_sample_gradients(theta, val_x, val_y, num_classes).sum(0)
    direction = torch.linalg.solve(damped, val_gradient)
    return -per_sample_gradients(theta, train_x, train_y, num_classes) @ direction


def fit_softmax_regression(inputs, targets, num_classes, l2, start=None, keep=None) -> torch.Tensor:
    """Minimise the mean loss over ``keep`` (all samples by default) plus ``l2/2 ||theta||^2`` by L-BFGS."""
    if keep is not None:
        inputs, targets = inputs[keep], targets[keep]
    size = num_classes * (inputs.shape[1] + 1)
    theta = (torch.zeros(size, dtype=torch.float64) if start is None else start.detach().clone()).requires_grad_(True)
    optimizer = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-11, tolerance_change=1e-14,
                                  history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = mean_loss(theta, inputs, targets, num_classes, l2)
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return theta.detach()


def total_loss(theta, inputs, targets, num_classes) -> float:
    return float(mean_loss(theta, inputs, targets, num_classes) * len(targets))


def flat_digits(seed=0) -> dict:
    """The digits splits as float64 feature matrices, and the splits themselves."""
    splits = load_dataset("digits", seed=seed)
    return {"splits": splits,
            "train_x": splits.train.images.flatten(1).double(), "train_y": torch.from_numpy(splits.train.labels),
            "val_x": splits.val.images.flatten(1).double(), "val_y": torch.from_numpy(splits.val.labels)}


def logreg_with(theta, num_classes=10, num_features=64):
    """A float64 ``LogisticRegression`` from the model registry, with parameters ``theta``."""
    model = build_model("logreg", num_classes=num_classes, in_channels=1, image_size=(num_features, 1), seed=0)
    model = model.double()
    weight, bias = unpack(theta, num_classes, num_features)
    with torch.no_grad():
        model.linear.weight.copy_(weight)
        model.linear.bias.copy_(bias)
    return model


def pearson(a, b) -> float:
    return float(stats.pearsonr(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0])


def spearman(a, b) -> float:
    return float(stats.spearmanr(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0])


def relative_error(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    return float((actual - expected).norm() / expected.norm())
