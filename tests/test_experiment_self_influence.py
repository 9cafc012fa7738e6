"""Self-influence on the last layer against an explicit Hessian and explicit per-sample gradients."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from core.influence import cross_entropy_losses
from core.self_influence import self_influence

DAMPING = 0.05


def _data(n=40, features=6, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, features, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return torch.utils.data.TensorDataset(inputs, targets)


def _model(features=6, hidden=5, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def _explicit_self_influence(model, data, damping):
    """``-g_i^T (H + damping I)^-1 g_i`` over the last layer, H from torch.autograd.functional.hessian."""
    inputs, targets = data.tensors
    weight, bias = model[2].weight.detach(), model[2].bias.detach()
    sizes = (weight.numel(), bias.numel())

    def loss(flat, x, y):
        w, b = flat[:sizes[0]].view_as(weight), flat[sizes[0]:].view_as(bias)
        logits = functional_call(model, {"2.weight": w, "2.bias": b}, (x,))
        return nn.functional.cross_entropy(logits, y)

    flat = torch.cat([weight.reshape(-1), bias])
    hessian = torch.autograd.functional.hessian(lambda p: loss(p, inputs, targets), flat)
    damped = hessian + damping * torch.eye(len(flat), dtype=flat.dtype)
    values = []
    for i in range(len(targets)):
        gradient = torch.autograd.functional.jacobian(lambda p: loss(p, inputs[i:i + 1], targets[i:i + 1]), flat)
        values.append(-(gradient @ torch.linalg.solve(damped, gradient)))
    return torch.stack(values)


def test_self_influence_matches_explicit_last_layer():
    data, model = _data(), _model()
    expected = _explicit_self_influence(model, data, DAMPING)

    result = self_influence(model, cross_entropy_losses, data, params="last_layer", damping=DAMPING,
                            curvature="hessian")

    assert torch.allclose(torch.from_numpy(result.scores), expected, rtol=1e-6, atol=1e-9)


def test_gauss_newton_equals_hessian_on_last_layer():
    # Cross-entropy logits are linear in the last layer, so its Gauss-Newton matrix is its Hessian.
    data, model = _data(seed=1), _model()

    hessian = self_influence(model, cross_entropy_losses, data, damping=DAMPING, curvature="hessian")
    gauss_newton = self_influence(model, cross_entropy_losses, data, damping=DAMPING, curvature="gauss_newton")

    assert gauss_newton.scores == pytest.approx(hessian.scores, rel=1e-6, abs=1e-9)


def test_self_influence_is_never_positive():
    result = self_influence(_model(), cross_entropy_losses, _data(seed=2), damping=DAMPING)

    assert (result.scores <= 0).all()
    assert (result.suspicion == -result.scores).all()


def test_self_influence_reports_its_approximation():
    result = self_influence(_model(), cross_entropy_losses, _data(seed=3), damping=DAMPING)

    assert result.diagnostics["num_params"] == 5 * 3 + 3
    assert "last_layer" in result.diagnostics["approximation"]


def test_self_influence_rejects_too_many_parameters():
    with pytest.raises(ValueError, match="max_params"):
        self_influence(_model(), cross_entropy_losses, _data(), params="all", max_params=10)
