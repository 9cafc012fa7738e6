"""A trained model seen as a function of a flat parameter vector, with gradients and curvature products.

All derivatives are taken in eval mode: BatchNorm uses its running statistics, which are passed in
as fixed buffers and never updated, and Dropout is off. The model's own train/eval mode and its
buffers are left as they were.
"""

import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, linearize, vjp

from core import distributed
from core.datasets.base import iterate_batches
from core.influence import defaults
from core.influence.errors import NonFiniteGradientError

#: ``loss_fn(outputs, targets) -> per-sample losses`` (``reduction="none"``).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CURVATURES = ("hessian", "gauss_newton")

#: A Gauss-Newton solve records the network-output tangents of its solution (see
#: ``SolutionTangents``) while the training set's outputs have at most this many elements in all.
TANGENT_LIMIT = 50_000_000


def select_parameters(model: nn.Module, params: Union[str, Sequence[str]]) -> list:
    """Return the names of the parameters that influence is taken with respect to.

    ``params`` is "all", "last_layer" (the parameters of the last module that owns any), or a list
    of module or parameter name prefixes such as ``["classifier.3"]``.
    """
    named = [name for name, p in model.named_parameters() if p.requires_grad]
    if params in (None, "all"):
        return named
    if params == "last_layer":
        owners = [name for name, module in model.named_modules()
                  if any(True for _ in module.parameters(recurse=False))]
        last = owners[-1]
        prefix = f"{last}." if last else ""
        return [name for name in named if name.startswith(prefix) and "." not in name[len(prefix):]]
    if isinstance(params, str):
        params = [p.strip() for p in params.split(",") if p.strip()]
    chosen = [name for name in named if any(name == p or name.startswith(f"{p}.") for p in params)]
    if not chosen:
        raise ValueError(f"parameter selection {list(params)} matches no parameter; "
                         f"names look like {named[:4]}")
    return chosen


class InfluenceProblem:
    """Per-sample losses, gradients and Hessian- or Gauss-Newton-vector products at fixed parameters.

    ``theta`` is the flat vector of the selected parameters; all other parameters and all buffers
    stay fixed. ``dtype`` defaults to the model's. ``curvature`` is "hessian" (the true Hessian of
    the mean training loss) or "gauss_newton" (``J^T H_out J``, positive semi-definite for convex
    losses such as cross-entropy and MSE).

    With ``across_ranks`` (under torchrun) each full-data sum runs over this rank's contiguous
    shard of the data and is then summed over ranks with an all-reduce, so every rank gets the
    global result. The full-data sums are ``loss_gradient_sum`` and the full training-set
    curvature product. Every rank must then make the same calls in the same order.
    Mini-batch products (``curvature_product(v, batch=...)``) are not reduced, and a collective
    cannot run under ``torch.func.vmap``, so the exact solver needs ``across_ranks=False``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train, params="all",
                 curvature: str = "gauss_newton", batch_size: int = defaults.BATCH_SIZE, dtype: Optional[torch.dtype] = None,
                 cache_limit: int = 20_000, across_ranks: bool = False):
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")
        self.model = model
        self.loss_fn = loss_fn
        self.train = train
        self.curvature = curvature
        self.batch_size = batch_size
        first = next(model.parameters())
        self.device = first.device
        self.dtype = dtype or first.dtype

        self.names = select_parameters(model, params)
        state = {name: p.detach().to(self.dtype) for name, p in model.named_parameters()}
        state.update({name: b.detach() if not b.is_floating_point() else b.detach().to(self.dtype)
                      for name, b in model.named_buffers()})
        self.shapes = [state[name].shape for name in self.names]
        self.sizes = [state[name].numel() for name in self.names]
        self.theta = torch.cat([state[name].reshape(-1) for name in self.names])
        self.fixed = {name: value for name, value in state.items() if name not in set(self.names)}
        self.num_train = len(train.dataset) if hasattr(train, "dataset") else len(train)
        # Full-data Gauss-Newton products reuse each batch's linearisation when the training set
        # has at most ``cache_limit`` samples; this halves their cost but keeps every batch's
        # activations in memory, so large sets recompute them instead.
        self.cache_limit = cache_limit
        self._linearised = None
        self._training_gradient = None
        self.across_ranks = across_ranks and distributed.is_distributed()
        self._recorder = None
        self._solutions = []

    @property
    def num_params(self) -> int:
        return self.theta.numel()

    def outputs(self, flat: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Evaluate the model in eval mode with the selected parameters set to ``flat``."""
        pieces = torch.split(flat, self.sizes)
        params = {name: piece.view(shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}
        # Each module's own flag is switched and restored, because ``model.train(mode)`` would set
        # every submodule to one mode and lose a mix such as a frozen BatchNorm in a training model.
        training = [module for module in self.model.modules() if module.training]
        for module in training:
            module.training = False
        try:
            return functional_call(self.model, {**self.fixed, **params}, (inputs,))
        finally:
            for module in training:
                module.training = True

    def losses(self, flat: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample losses at parameters ``flat``."""
        return self.loss_fn(self.outputs(flat, inputs), targets)

    def _own_positions(self, data):
        """Return the positions of ``data`` this rank sums over: all (None) unless ``across_ranks``."""
        return distributed.shard_positions(len(data)) if self.across_ranks else None

    def _sum_over_ranks(self, total: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(total) if self.across_ranks else total

    def batches(self, data, indices=None) -> Iterable:
        """Yield ``(inputs, targets, positions)`` on the problem's device and dtype."""
        for inputs, targets, positions in iterate_batches(data, self.batch_size, indices=indices):
            inputs = inputs.to(self.device, self.dtype)
            targets = targets.to(self.device)
            if targets.is_floating_point():
                targets = targets.to(self.dtype)
            yield inputs, targets, positions

    def loss_gradient_sum(self, data, name: str = "validation") -> torch.Tensor:
        """Return ``sum_j grad L(z_j)`` over all samples of ``data``; raise on NaN or infinity."""
        total = torch.zeros_like(self.theta)
        for inputs, targets, _ in self.batches(data, indices=self._own_positions(data)):
            total += grad(lambda p: self.losses(p, inputs, targets).sum())(self.theta)
        total = self._sum_over_ranks(total)
        if not torch.isfinite(total).all():
            raise NonFiniteGradientError(
                f"the {name} loss gradient contains NaN or infinity "
                f"({int((~torch.isfinite(total)).sum())} of {total.numel()} entries); check the "
                f"{name} inputs for NaN and the model's outputs for overflow before computing influence")
        return total

    def training_gradient(self) -> torch.Tensor:
        """Return the gradient of the mean training loss (computed once, then cached)."""
        if self._training_gradient is None:
            self._training_gradient = self.loss_gradient_sum(self.train, name="training") / self.num_train
        return self._training_gradient

    def batch_curvature_product(self, vector: torch.Tensor, inputs, targets) -> torch.Tensor:
        """Return the curvature of the batch's *summed* loss times ``vector``."""
        if self.curvature == "hessian":
            # Forward-over-reverse: the directional derivative of the gradient along ``vector``.
            batch_grad = grad(lambda p: self.losses(p, inputs, targets).sum())
            return jvp(batch_grad, (self.theta,), (vector,))[1]
        return self._gauss_newton_batch(vector, inputs, targets)[0]

    def _gauss_newton_batch(self, vector: torch.Tensor, inputs, targets) -> tuple:
        """Return ``(J^T H_out J v, outputs, J v)`` for one batch.

        ``J`` is the Jacobian of the outputs and ``H_out`` the Hessian of the loss with respect to them.
        """
        outputs, output_tangent = jvp(lambda p: self.outputs(p, inputs), (self.theta,), (vector,))
        output_grad = grad(lambda z: self.loss_fn(z, targets).sum())
        curved = jvp(output_grad, (outputs.detach(),), (output_tangent,))[1]
        _, pullback = vjp(lambda p: self.outputs(p, inputs), self.theta)
        return pullback(curved)[0], outputs.detach(), output_tangent.detach()

    def curvature_product(self, vector: torch.Tensor, batch=None) -> torch.Tensor:
        """Return ``H v`` for the mean training loss, over all training data or one ``batch``.

        ``batch`` is ``(inputs, targets)``; the product is then the batch's mean-loss curvature,
        an unbiased estimate of the full one.
        """
        if batch is not None:
            inputs, targets = batch
            return self.batch_curvature_product(vector, inputs, targets) / len(targets)
        if self.curvature == "gauss_newton" and self.num_train <= self.cache_limit:
            return self._cached_gauss_newton_product(vector)
        recorder = self._recorder if self.curvature == "gauss_newton" else None
        if recorder is not None:
            recorder.start_product()
        # Out-of-place sums here and below, so that ``vmap`` over many vectors (the exact solver) works.
        total = 0
        for inputs, targets, positions in self.batches(self.train, indices=self._own_positions(self.train)):
            if recorder is None:
                total = total + self.batch_curvature_product(vector, inputs, targets)
                continue
            product, outputs, tangent = self._gauss_newton_batch(vector, inputs, targets)
            recorder.add(positions, targets, outputs, tangent)
            total = total + product
        return self._sum_over_ranks(total) / self.num_train

    def _cached_gauss_newton_product(self, vector: torch.Tensor) -> torch.Tensor:
        if self._linearised is None:
            self._linearised = []
            for inputs, targets, positions in self.batches(self.train, indices=self._own_positions(self.train)):
                def forward(p, inputs=inputs):
                    return self.outputs(p, inputs)
                with warnings.catch_warnings():
                    # linearize traces through torch.fx, whose constant folding warns about its own
                    # get_attr nodes (torch 2.14); the warning says nothing about the user's model.
                    warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
                    outputs, push_forward = linearize(forward, self.theta)
                _, pullback = vjp(forward, self.theta)
                self._linearised.append((outputs.detach(), targets, positions, push_forward, pullback))

        if self._recorder is not None:
            self._recorder.start_product()
        total = 0
        for outputs, targets, positions, push_forward, pullback in self._linearised:
            output_grad = grad(lambda z, targets=targets: self.loss_fn(z, targets).sum())
            tangent = push_forward(vector)
            if self._recorder is not None:
                self._recorder.add(positions, targets, outputs, tangent.detach())
            curved = jvp(output_grad, (outputs,), (tangent,))[1]
            total = total + pullback(curved)[0]
        return self._sum_over_ranks(total) / self.num_train

    @contextmanager
    def recording_solution_tangents(self):
        """Yield a ``SolutionTangents`` that collects ``J v`` from each full Gauss-Newton product ``v``.

        A solver that builds its solution as a sum of vectors it multiplied by the curvature (CG)
        calls ``step(alpha)`` after each product and ``finish(x)`` at the end. Scoring the training
        set along ``x`` then needs no further pass through the network. With the true Hessian, or
        when the outputs would exceed ``TANGENT_LIMIT`` elements, the recorder stays disabled.
        """
        enabled = self.curvature == "gauss_newton" and self._recorder is None
        recorder = SolutionTangents(self, enabled)
        if enabled:
            self._recorder = recorder
        try:
            yield recorder
        finally:
            if enabled:
                self._recorder = None

    def remember_solution(self, vector: torch.Tensor, batches: list) -> None:
        """Keep ``(positions, targets, outputs, J vector)`` per batch for ``cached_directional_derivatives``."""
        # Two directions per run (the validation halves); keep a few so a benchmark's extra solves fit.
        self._solutions = [*self._solutions[-3:], (vector, batches)]

    def _solution_derivatives(self, vector: torch.Tensor, requested: torch.Tensor, values, covered) -> bool:
        for solution, batches in self._solutions:
            if solution.shape != vector.shape or not torch.equal(solution, vector.to(solution)):
                continue
            for positions, targets, outputs, tangent in batches:
                if requested[positions].any():
                    values[positions.to(self.device)] = jvp(lambda z: self.loss_fn(z, targets),
                                                            (outputs,), (tangent,))[1]
                    covered[positions] = True
            return True
        return False

    def cached_directional_derivatives(self, vector: torch.Tensor, indices=None) -> Optional[torch.Tensor]:
        """Return ``grad L(x_i) . vector`` for training positions ``indices`` from the Gauss-Newton cache.

        Uses the output tangents of a CG solve whose solution is ``vector`` when there are any
        (``recording_solution_tangents``), else replays the cached linearisation of each batch that
        contains a requested sample. Both give the same values as ``directional_derivatives`` at a
        fraction of its cost. Returns None when neither exists or a requested sample is missing
        (another rank's shard, for example).
        """
        if self._linearised is None and not self._solutions:
            return None
        wanted = torch.arange(self.num_train) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
        requested = torch.zeros(self.num_train, dtype=torch.bool)
        requested[wanted] = True
        covered = torch.zeros(self.num_train, dtype=torch.bool)
        values = torch.zeros(self.num_train, dtype=self.dtype, device=self.device)

        if self._solution_derivatives(vector, requested, values, covered):
            return values[wanted.to(self.device)] if covered[wanted].all() else None
        if self._linearised is None:
            return None
        for outputs, targets, positions, push_forward, _ in self._linearised:
            if not requested[positions].any():
                continue
            tangent = push_forward(vector)
            values[positions.to(self.device)] = jvp(lambda z: self.loss_fn(z, targets), (outputs,), (tangent,))[1]
            covered[positions] = True
        if not covered[wanted].all():
            return None
        return values[wanted.to(self.device)]

    def directional_derivatives(self, vector: torch.Tensor, inputs, targets) -> torch.Tensor:
        """Return ``grad L(x_i) . vector`` for every sample of the batch in one forward-mode pass."""
        return jvp(lambda p: self.losses(p, inputs, targets), (self.theta,), (vector,))[1]


class SolutionTangents:
    """The network-output tangent ``J x`` of a solution ``x = sum_k alpha_k p_k``, built during its solve.

    Every full Gauss-Newton product ``H p`` already pushes ``p`` forward through the network
    (``J p``, one value per sample and output). By linearity ``J x = sum_k alpha_k J p_k``, so
    keeping that running sum (the size of the network's outputs over the training set) gives every
    training sample's ``grad L(x_i) . x = (J_i x) . dL/dz_i`` at the end of the solve without
    another pass through the network.
    """

    def __init__(self, problem: InfluenceProblem, enabled: bool):
        self.problem = problem
        self.enabled = enabled
        self._latest = []
        self._solution = None

    def start_product(self) -> None:
        """Forget the previous product's batches (called by the problem before each full product)."""
        self._latest = []

    def add(self, positions, targets, outputs, tangent) -> None:
        """Record one batch of the current product (called by the problem)."""
        if not self.enabled:
            return
        self._latest.append((positions, targets, outputs, tangent))
        if len(self._latest) * tangent.numel() > TANGENT_LIMIT:
            self.enabled, self._latest, self._solution = False, [], None

    def abandon(self) -> None:
        """Stop recording: the solution did not start from zero in this process (a resumed solve)."""
        self.enabled, self._latest, self._solution = False, [], None

    def step(self, alpha) -> None:
        """Add ``alpha`` times the latest product's output tangent to the solution's."""
        if not self.enabled:
            return
        if not self._latest:
            self.enabled, self._solution = False, None
            return
        if self._solution is None:
            self._solution = [[positions, targets, outputs, alpha * tangent]
                              for positions, targets, outputs, tangent in self._latest]
        else:
            for kept, (_, _, _, tangent) in zip(self._solution, self._latest):
                kept[3] = kept[3] + alpha * tangent
        self._latest = []

    def finish(self, solution: torch.Tensor) -> None:
        """Let the problem score along ``solution`` from the recorded tangents."""
        if self.enabled and self._solution is not None:
            self.problem.remember_solution(solution.detach(), [tuple(batch) for batch in self._solution])
