"""Inverse curvature-vector products ``s = (H + damping*I)^-1 v``: one class per method.

Every solver returns ``(s, diagnostics)``; ``diagnostics`` is a JSON-ready dict that is stored with
the run. No solver returns a vector containing NaN or infinity: each raises an ``InfluenceError``
subclass whose message names the fix instead.
"""

import inspect
import logging
import math
import time
from typing import Optional

import torch

from core.influence.errors import IndefiniteHessianError, SolverDivergedError
from core.influence.problem import InfluenceProblem
from core.progress import ProgressFn, report

logger = logging.getLogger(__name__)


class InverseHVPSolver:
    """Base class: ``solve(problem, v, damping)`` returns ``((H + damping*I)^-1 v, diagnostics)``."""

    name = "base"

    def solve(self, problem: InfluenceProblem, vector: torch.Tensor, damping: float,
              progress: Optional[ProgressFn] = None) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} must override solve")


def _indefinite_message(damping: float, value: float, curvature: str) -> str:
    fix = "raise damping above that eigenvalue's magnitude"
    if curvature == "hessian":
        fix += " or use curvature='gauss_newton', which is positive semi-definite"
    return (f"H + damping*I is not positive definite (found curvature {value:.3g} with damping "
            f"{damping:g}); its inverse would give meaningless scores, so none were computed. To fix: {fix}.")


class ExactSolver(InverseHVPSolver):
    """Form ``H`` explicitly and solve through its eigendecomposition.

    Warnings:
        Forming ``H`` costs ``P`` curvature products over the training set and ``O(P^2)`` memory;
        the eigendecomposition costs ``O(P^3)``. Use it for models or parameter subsets of up to a
        few thousand parameters (``max_params``).
    """

    name = "exact"

    def __init__(self, max_params: int = 10_000, chunk: int = 64):
        self.max_params = max_params
        self.chunk = chunk

    def hessian(self, problem: InfluenceProblem, progress: Optional[ProgressFn] = None) -> torch.Tensor:
        """Return the ``P x P`` curvature matrix of the mean training loss (symmetrised)."""
        p = problem.num_params
        if p > self.max_params:
            raise ValueError(f"the exact solver would form a {p} x {p} matrix; it is limited to "
                             f"max_params={self.max_params}. Use solver='cg', or params='last_layer'")
        eye = torch.eye(p, dtype=problem.dtype, device=problem.device)
        columns = []
        for start in range(0, p, self.chunk):
            block = eye[start:start + self.chunk]
            columns.append(torch.func.vmap(problem.curvature_product)(block))
            report(progress, "solve", min(start + self.chunk, p), p, "forming the Hessian")
        matrix = torch.cat(columns)
        return (matrix + matrix.T) / 2

    def solve(self, problem, vector, damping, progress=None):
        started = time.perf_counter()
        matrix = self.hessian(problem, progress).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        damped = eigenvalues + damping
        diagnostics = {"solver": self.name, "min_eigenvalue": float(eigenvalues[0]),
                       "max_eigenvalue": float(eigenvalues[-1]), "min_damped_eigenvalue": float(damped[0]),
                       "condition_number": float(damped[-1] / damped[0]) if damped[0] > 0 else math.inf}
        if damped[0] <= 0:
            raise IndefiniteHessianError(_indefinite_message(damping, float(damped[0]), problem.curvature))
        solution = eigenvectors @ ((eigenvectors.T @ vector.double()) / damped)
        diagnostics["seconds"] = time.perf_counter() - started
        return solution.to(problem.dtype), diagnostics


class ConjugateGradientSolver(InverseHVPSolver):
    """Conjugate gradient on ``H + damping*I`` with full-training-set curvature products.

    Stops when ``||r|| / ||v||`` falls below ``tol`` or after ``max_iter`` products. A step with
    ``p^T (H + damping*I) p <= 0`` proves the damped matrix indefinite and raises
    ``IndefiniteHessianError``. Running out of iterations is reported as ``converged: False`` and
    logged as a warning with the residual reached.
    """

    name = "cg"

    def __init__(self, tol: float = 1e-5, max_iter: int = 300):
        self.tol = tol
        self.max_iter = max_iter

    def solve(self, problem, vector, damping, progress=None):
        started = time.perf_counter()
        norm_v = vector.norm()
        if norm_v == 0:
            return torch.zeros_like(vector), {"solver": self.name, "iterations": 0, "relative_residual": 0.0,
                                              "converged": True, "seconds": 0.0}
        x = torch.zeros_like(vector)
        r = vector.clone()
        p = r.clone()
        rr = r @ r
        iteration = 0
        relative = 1.0
        for iteration in range(1, self.max_iter + 1):
            ap = problem.curvature_product(p) + damping * p
            curvature = p @ ap
            if not torch.isfinite(curvature):
                raise SolverDivergedError(f"CG produced a non-finite curvature product at iteration "
                                          f"{iteration}; check the model for NaN parameters")
            if curvature <= 0:
                raise IndefiniteHessianError(_indefinite_message(
                    damping, float(curvature / (p @ p)), problem.curvature) + f" (CG iteration {iteration})")
            alpha = rr / curvature
            x = x + alpha * p
            r = r - alpha * ap
            rr_next = r @ r
            relative = float(rr_next.sqrt() / norm_v)
            report(progress, "solve", iteration, self.max_iter, f"CG residual {relative:.2e}")
            if relative < self.tol:
                break
            p = r + (rr_next / rr) * p
            rr = rr_next

        converged = relative < self.tol
        if not converged:
            logger.warning("CG stopped after %d iterations at relative residual %.3g (tolerance %.1g); "
                           "raise max_iter or damping", iteration, relative, self.tol)
        return x, {"solver": self.name, "iterations": iteration, "relative_residual": relative,
                   "converged": converged, "tolerance": self.tol, "seconds": time.perf_counter() - started}


def estimate_max_eigenvalue(problem: InfluenceProblem, damping: float, iterations: int = 20,
                            seed: int = 0) -> float:
    """Estimate the largest-magnitude eigenvalue of ``H + damping*I`` by power iteration."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(problem.num_params, generator=generator).to(problem.device, problem.dtype)
    vector /= vector.norm()
    value = 0.0
    for _ in range(iterations):
        product = problem.curvature_product(vector) + damping * vector
        value = float(vector @ product)
        norm = product.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        vector = product / norm
    return value


class LissaSolver(InverseHVPSolver):
    """LiSSA (Agarwal et al., 2017), the stochastic estimator used by Koh and Liang and by data dropout.

    With ``A = (H + damping*I) / scale`` the Neumann series ``A^-1 v = sum_k (I - A)^k v`` is built by
    ``h_0 = v, h_t = v + h_{t-1} - (H_batch h_{t-1} + damping*h_{t-1}) / scale`` on random training
    mini-batches, and ``s = h_depth / scale``, averaged over ``repeats``.

    The series converges only when ``scale`` exceeds the largest eigenvalue of ``H + damping*I``, so by
    default ``scale`` is 1.5 times a power-iteration estimate of it. Convergence takes about
    ``scale / damping`` steps, which is why the default ``depth`` is large for small damping; each
    step detaches ``h``, so memory stays flat across steps.

    A NaN, an infinity, or a norm above ``10 * ||v|| * scale / damping`` (an upper bound on the norm
    of every iterate when the damped matrix is positive definite) raises ``SolverDivergedError``.
    """

    name = "lissa"

    def __init__(self, depth: int = 2000, repeats: int = 1, scale: Optional[float] = None,
                 batch_size: int = 128, tol: float = 1e-6, seed: int = 0, power_iterations: int = 20):
        self.depth = depth
        self.repeats = repeats
        self.scale = scale
        self.batch_size = batch_size
        self.tol = tol
        self.seed = seed
        self.power_iterations = power_iterations

    def _random_batches(self, problem: InfluenceProblem, generator: torch.Generator):
        n = problem.num_train
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - self.batch_size + 1 if n > self.batch_size else 1, self.batch_size):
                for inputs, targets, _ in problem.batches(problem.train, indices=order[start:start + self.batch_size]):
                    yield inputs, targets

    def solve(self, problem, vector, damping, progress=None):
        started = time.perf_counter()
        if damping <= 0 and self.scale is None:
            raise ValueError("LiSSA needs damping > 0 to converge at a known rate; set damping (e.g. 0.01)")
        estimated = None
        scale = self.scale
        if scale is None:
            estimated = estimate_max_eigenvalue(problem, damping, self.power_iterations, self.seed)
            scale = 1.5 * abs(estimated)
        bound = 10 * float(vector.norm()) * scale / max(damping, 1e-12)
        estimates, steps_taken = [], []

        for repeat in range(self.repeats):
            generator = torch.Generator().manual_seed(self.seed + 1000 * repeat)
            batches = self._random_batches(problem, generator)
            h = vector.clone()
            step = 0
            for step in range(1, self.depth + 1):
                inputs, targets = next(batches)
                product = problem.curvature_product(h, batch=(inputs, targets)).detach()
                h_next = (vector + h - (product + damping * h) / scale).detach()
                norm = float(h_next.norm())
                if not math.isfinite(norm) or norm > bound:
                    raise SolverDivergedError(
                        f"LiSSA diverged at step {step} of repeat {repeat + 1}: ||h|| = {norm:.3g} "
                        f"(bound {bound:.3g}) with scale {scale:.3g} and damping {damping:g}. Increase scale "
                        f"above the largest eigenvalue of H + damping*I, or increase damping; no scores were stored")
                change = float((h_next - h).norm()) / max(norm, 1e-30)
                h = h_next
                if step % 25 == 0 or step == self.depth:
                    report(progress, "solve", repeat * self.depth + step, self.repeats * self.depth,
                           f"LiSSA step {step}, relative change {change:.2e}")
                if change < self.tol:
                    break
            estimates.append(h / scale)
            steps_taken.append(step)

        solution = torch.stack(estimates).mean(0)
        return solution, {"solver": self.name, "scale": scale, "estimated_max_eigenvalue": estimated,
                          "depth": self.depth, "repeats": self.repeats, "steps": steps_taken,
                          "batch_size": self.batch_size, "seconds": time.perf_counter() - started}


SOLVERS = {"exact": ExactSolver, "cg": ConjugateGradientSolver, "lissa": LissaSolver}


def make_solver(name: str, **options) -> InverseHVPSolver:
    """Build the solver ``name`` ("exact", "cg" or "lissa") with its options."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)} or 'paper'")
    accepted = set(inspect.signature(SOLVERS[name]).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; its options are {sorted(accepted)}")
    return SOLVERS[name](**options)
