"""Inverse curvature-vector products ``s = (H + damping*I)^-1 v``: one class per method.

Every solver returns ``(s, diagnostics)``; ``diagnostics`` is a JSON-ready dict that is stored with
the run. No solver returns a vector containing NaN or infinity: each raises an ``InfluenceError``
subclass whose message names the fix instead.

Cost is counted in curvature products over the whole training set ("full products"); one costs
about as much as one training epoch (``benchmarks/influence_speed.py`` measures the ratio).
"""

import hashlib
import inspect
import logging
import math
import os
import time
from typing import Optional

import torch

from core.influence import defaults
from core.influence.errors import IndefiniteHessianError, SingularHessianError, SolverDivergedError
from core.influence.problem import InfluenceProblem
from core.progress import ProgressFn, report

logger = logging.getLogger(__name__)


class InverseHVPSolver:
    """Base class: ``solve(problem, v, damping)`` returns ``((H + damping*I)^-1 v, diagnostics)``."""

    name = "base"

    def solve(self, problem: InfluenceProblem, vector: torch.Tensor, damping: float,
              progress: Optional[ProgressFn] = None) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} must override solve")


def checked_option(solver: str, option: str, value, integer: bool = False, minimum: float = 0,
                   above: bool = False):
    """Return ``value`` as an int or float if it is finite and ``>= minimum`` (``> minimum`` with ``above``).

    Raises ``ValueError`` naming the solver, the option and the value otherwise, so a mistyped
    ``--solver-option`` fails before any training starts.
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if number and integer:
        number = float(value).is_integer()
    if number:
        number = value > minimum if above else value >= minimum
    if not number:
        kind = "an integer" if integer else "a number"
        bound = f"> {minimum:g}" if above else f">= {minimum:g}"
        raise ValueError(f"solver {solver!r} option {option}={value!r} is invalid: it must be {kind} {bound}; "
                         f"fix --solver-option {option}=...")
    return int(value) if integer else float(value)


def _indefinite_message(damping: float, value: float, curvature: str) -> str:
    fix = "raise damping above that eigenvalue's magnitude"
    if curvature == "hessian":
        fix += " or use curvature='gauss_newton', which is positive semi-definite"
    return (f"H + damping*I is not positive definite (found curvature {value:.3g} with damping "
            f"{damping:g}); its inverse would give meaningless scores, so none were computed. To fix: {fix}.")


def _singular_message(damping: float, value: float, largest: float) -> str:
    return (f"H + damping*I is singular: its curvature {value:.3g} along some direction is zero within "
            f"rounding, next to a largest curvature found of {largest:.3g} (damping {damping:g}). The Hessian is "
            f"rank-deficient, for example because the model has more parameters than the training data "
            f"determines, so it has no inverse and no scores were computed. To fix: set damping > 0, "
            f"e.g. {max(1e-3 * abs(largest), 1e-6):.2g} (1e-3 of that largest curvature).")


def singular_tolerance(largest: float, size: int, dtype: torch.dtype) -> float:
    """Return the eigenvalue below which a ``size x size`` matrix counts as singular.

    The rank rule of LAPACK and ``numpy.linalg.matrix_rank``: ``largest * size * eps(dtype)``,
    with ``eps`` of the dtype the matrix was computed in.
    """
    return abs(largest) * size * torch.finfo(dtype).eps


class ExactSolver(InverseHVPSolver):
    """Form ``H`` explicitly and solve through its eigendecomposition.

    Diagnostics report the smallest and largest eigenvalue of ``H`` (undamped), how many are
    negative, and the condition number of ``H + damping*I``. A damped eigenvalue below
    ``-singular_tolerance`` raises ``IndefiniteHessianError``; one within ``singular_tolerance`` of
    zero raises ``SingularHessianError``.

    Warnings:
        Forming ``H`` costs ``P`` curvature products over the training set (batched ``chunk`` at a
        time with ``vmap``) and ``O(P^2)`` memory; the eigendecomposition costs ``O(P^3)``. Use it
        for models or parameter subsets of up to a few thousand parameters (``max_params``).
    """

    name = "exact"

    def __init__(self, max_params: int = 10_000, chunk: int = 64):
        self.max_params = checked_option("exact", "max_params", max_params, integer=True, minimum=1)
        self.chunk = checked_option("exact", "chunk", chunk, integer=True, minimum=1)

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
        largest = float(damped.abs().max())
        tolerance = singular_tolerance(largest, problem.num_params, problem.dtype)
        diagnostics = {"solver": self.name, "min_eigenvalue": float(eigenvalues[0]),
                       "max_eigenvalue": float(eigenvalues[-1]), "min_damped_eigenvalue": float(damped[0]),
                       "negative_eigenvalues": int((damped < -tolerance).sum()),
                       "condition_number": float(damped[-1] / damped[0]) if damped[0] > tolerance else math.inf}

        if damped[0] < -tolerance:
            raise IndefiniteHessianError(_indefinite_message(damping, float(damped[0]), problem.curvature)
                                         + f" {diagnostics['negative_eigenvalues']} eigenvalues are negative.")
        if damped[0] <= tolerance:
            raise SingularHessianError(_singular_message(damping, float(damped[0]), largest))

        solution = eigenvectors @ ((eigenvectors.T @ vector.double()) / damped)
        diagnostics["seconds"] = time.perf_counter() - started
        return solution.to(problem.dtype), diagnostics


def lanczos_extremes(alphas: list, betas: list) -> tuple:
    """Return the smallest and largest Ritz value from CG's step sizes, in O(k^2) for k steps.

    CG's ``alpha_j`` and ``beta_j`` define the Lanczos tridiagonal matrix of ``H + damping*I`` on
    the Krylov space CG explored, whose eigenvalues approach the extreme eigenvalues of the
    matrix from inside. They are estimates: the true smallest eigenvalue may be lower.
    """
    k = len(alphas)
    if k == 0:
        return math.nan, math.nan
    tridiagonal = torch.zeros(k, k, dtype=torch.float64)
    for j in range(k):
        tridiagonal[j, j] = 1 / alphas[j] + (betas[j - 1] / alphas[j - 1] if j > 0 else 0.0)
        if j + 1 < k:
            tridiagonal[j, j + 1] = tridiagonal[j + 1, j] = math.sqrt(betas[j]) / alphas[j]
    ritz = torch.linalg.eigvalsh(tridiagonal)
    return float(ritz[0]), float(ritz[-1])


class ConjugateGradientSolver(InverseHVPSolver):
    """Conjugate gradient on ``H + damping*I`` with full-training-set curvature products.

    One full product per iteration. Stops when ``||r|| / ||v||`` falls below ``tol`` (or below the
    dtype's machine epsilon, whichever is larger) or after ``max_iter`` products. A step with
    ``p^T (H + damping*I) p <= 0`` proves the damped matrix indefinite and raises
    ``IndefiniteHessianError``; one whose Rayleigh quotient is zero within rounding of the largest
    seen raises ``SingularHessianError`` (typical with damping 0).
    Running out of iterations is reported as ``converged: False`` and logged as a warning with the
    residual reached. Diagnostics include the residual after every iteration and Lanczos estimates
    of the extreme eigenvalues of ``H + damping*I``.

    With Gauss-Newton curvature the solve also sums the output tangents of its steps
    (``InfluenceProblem.recording_solution_tangents``), so scoring the training set along the
    solution afterwards takes no further pass through the network.
    """

    name = "cg"

    def __init__(self, tol: float = defaults.CG_TOL, max_iter: int = defaults.CG_MAX_ITER):
        self.tol = checked_option("cg", "tol", tol, minimum=0)
        self.max_iter = checked_option("cg", "max_iter", max_iter, integer=True, minimum=1)

    def _check_curvature(self, curvature, p, largest, damping, problem, iteration) -> float:
        if not torch.isfinite(curvature):
            raise SolverDivergedError(f"CG produced a non-finite curvature product at iteration "
                                      f"{iteration}; check the model for NaN parameters")
        rayleigh = float(curvature / (p @ p))
        largest = max(largest, abs(rayleigh))
        if abs(rayleigh) <= 64 * torch.finfo(problem.dtype).eps * largest:
            raise SingularHessianError(_singular_message(damping, rayleigh, largest)
                                       + f" (CG iteration {iteration})")
        if rayleigh <= 0:
            raise IndefiniteHessianError(_indefinite_message(damping, rayleigh, problem.curvature)
                                         + f" (CG iteration {iteration})")
        return largest

    def solve(self, problem, vector, damping, progress=None, checkpoint_path: Optional[str] = None):
        """Return ``(x, diagnostics)`` for ``(H + damping*I) x = vector``.

        With ``checkpoint_path`` the state is saved after every iteration, and a saved state of the
        same problem, right-hand side and settings is continued from.
        """
        started = time.perf_counter()
        norm_v = vector.norm()
        if norm_v == 0:
            return torch.zeros_like(vector), {"solver": self.name, "iterations": 0, "relative_residual": 0.0,
                                              "converged": True, "seconds": 0.0}
        key = _checkpoint_key(problem, vector, damping, self.tol)
        state = _load_checkpoint(checkpoint_path, key) if checkpoint_path else None
        if state is None:
            x = torch.zeros_like(vector)
            r = vector.clone()
            p = r.clone()
            first, relative, largest = 1, 1.0, 0.0
            alphas, betas, residuals = [], [], []
        else:
            x, r, p = (state[name].to(vector.device, vector.dtype) for name in ("x", "r", "p"))
            first, largest = state["iteration"] + 1, state["largest"]
            alphas, betas, residuals = state["alphas"], state["betas"], state["residuals"]
            relative = residuals[-1]
            logger.info("CG continues from iteration %d of a saved solve (%s)", first - 1, checkpoint_path)
        rr = r @ r
        iteration = first - 1

        with problem.recording_solution_tangents() as tangents:
            if state is not None:
                # The tangents of the iterations before the restart are gone, so a partial sum
                # would give wrong scores: scoring then takes its usual pass through the network.
                tangents.abandon()
            for iteration in range(first, self.max_iter + 1):
                ap = problem.curvature_product(p) + damping * p
                curvature = p @ ap
                largest = self._check_curvature(curvature, p, largest, damping, problem, iteration)
                alpha = rr / curvature
                x = x + alpha * p
                tangents.step(alpha)
                r = r - alpha * ap
                rr_next = r @ r
                relative = float(rr_next.sqrt() / norm_v)
                alphas.append(float(alpha))
                residuals.append(relative)
                report(progress, "solve", iteration, self.max_iter, f"CG residual {relative:.2e}")
                # Below the dtype's resolution further steps divide rounding noise by rounding noise.
                if relative < self.tol or relative < torch.finfo(problem.dtype).eps:
                    break
                betas.append(float(rr_next / rr))
                p = r + (rr_next / rr) * p
                rr = rr_next
                if checkpoint_path:
                    _save_checkpoint(checkpoint_path, {**key, "x": x.cpu(), "r": r.cpu(), "p": p.cpu(),
                                                       "iteration": iteration, "largest": largest,
                                                       "alphas": alphas, "betas": betas, "residuals": residuals})
        tangents.finish(x)

        converged = relative < max(self.tol, torch.finfo(problem.dtype).eps)
        if not converged:
            logger.warning("CG stopped after %d iterations at relative residual %.3g (tolerance %.1g); "
                           "raise max_iter or damping", iteration, relative, self.tol)
        smallest_ritz, largest_ritz = lanczos_extremes(alphas, betas)
        return x, {"solver": self.name, "iterations": iteration, "relative_residual": relative,
                   "converged": converged, "tolerance": self.tol, "residuals": residuals,
                   "resumed_from_iteration": None if state is None else first - 1,
                   "estimated_min_damped_eigenvalue": smallest_ritz,
                   "estimated_max_damped_eigenvalue": largest_ritz,
                   "seconds": time.perf_counter() - started}


def _checkpoint_key(problem: InfluenceProblem, vector: torch.Tensor, damping: float, tol: float) -> dict:
    """Return what a saved CG state must match: the right-hand side's digest and the solve's settings."""
    digest = hashlib.sha256(vector.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return {"vector_sha256": digest, "damping": float(damping), "tol": float(tol), "curvature": problem.curvature,
            "num_params": problem.num_params, "dtype": str(problem.dtype)}


def _load_checkpoint(path: str, key: dict) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file only costs the iterations it held
        logger.warning("ignoring the unreadable CG checkpoint %s (%s); the solve starts again", path, error)
        return None
    if any(state.get(name) != value for name, value in key.items()):
        logger.info("the CG checkpoint %s belongs to another solve; the solve starts again", path)
        return None
    return state


def _save_checkpoint(path: str, state: dict) -> None:
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def estimate_max_eigenvalue(problem: InfluenceProblem, damping: float, iterations: int = 20,
                            seed: int = 0, tol: float = 1e-3) -> float:
    """Estimate the largest-magnitude eigenvalue of ``H + damping*I`` by power iteration.

    Costs at most ``iterations`` full products, and stops early once the estimate changes by less
    than ``tol`` (relative). Power iteration approaches the eigenvalue from below, so callers
    that need an upper bound multiply it by a margin.
    """
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(problem.num_params, generator=generator).to(problem.device, problem.dtype)
    vector /= vector.norm()
    value = 0.0
    for _ in range(iterations):
        product = problem.curvature_product(vector) + damping * vector
        previous, value = value, float(vector @ product)
        norm = product.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        vector = product / norm
        if abs(value - previous) <= tol * abs(value):
            break
    return value


class LissaSolver(InverseHVPSolver):
    """LiSSA (Agarwal et al., 2017), the stochastic estimator used by Koh and Liang and by data dropout.

    With ``A = (H + damping*I) / scale`` the Neumann series ``A^-1 v = sum_k (I - A)^k v`` is built by
    ``h_0 = v, h_t = v + h_{t-1} - (H_batch h_{t-1} + damping*h_{t-1}) / scale`` on random training
    mini-batches, and ``s = h_depth / scale``, averaged over ``repeats`` independent runs.

    The series converges only when ``scale`` exceeds the largest eigenvalue of ``H + damping*I``, so by
    default ``scale`` is 1.5 times a power-iteration estimate of it. Full convergence takes several
    times ``scale / damping`` steps, but the scores, dominated by the large eigenvalues, settle long
    before: ``core.influence.defaults`` records the depth chosen and its measured agreement. A run
    stops early when ``||h_t - h_{t-1}|| / ||h_t||`` falls below ``tol``; with mini-batches this
    change levels off at the batches' noise, so ``tol`` mainly ends full-batch runs early. Each step
    detaches ``h``, so memory stays flat across steps.

    Cost: ``repeats * depth`` mini-batch products (``depth * batch_size / n`` full products each),
    plus power iteration when ``scale`` is not given, plus one full product for the final residual.

    Raises ``SolverDivergedError`` on a NaN, an infinity, a norm above ``10 * ||v|| * scale / damping``
    (an upper bound on every iterate when the damped matrix is positive definite) or a final
    residual ``||v - (H + damping*I) s|| / ||v||`` above 1 (worse than ``s = 0``), and
    ``IndefiniteHessianError`` when ``s^T (H + damping*I) s <= 0``. A final residual above
    ``warn_residual`` is logged as a warning.
    """

    name = "lissa"

    def __init__(self, depth: int = defaults.LISSA_DEPTH, repeats: int = defaults.LISSA_REPEATS,
                 scale: Optional[float] = None, batch_size: int = defaults.LISSA_BATCH_SIZE, tol: float = 1e-6,
                 seed: int = 0, power_iterations: int = 20, warn_residual: float = 0.5, check_residual: bool = True):
        self.depth = checked_option("lissa", "depth", depth, integer=True, minimum=1)
        self.repeats = checked_option("lissa", "repeats", repeats, integer=True, minimum=1)
        self.scale = None if scale is None else checked_option("lissa", "scale", scale, minimum=0, above=True)
        self.batch_size = checked_option("lissa", "batch_size", batch_size, integer=True, minimum=1)
        self.tol = checked_option("lissa", "tol", tol, minimum=0)
        self.seed = checked_option("lissa", "seed", seed, integer=True, minimum=0)
        self.power_iterations = checked_option("lissa", "power_iterations", power_iterations, integer=True, minimum=1)
        self.warn_residual = checked_option("lissa", "warn_residual", warn_residual, minimum=0)
        if not isinstance(check_residual, bool):
            raise ValueError(f"solver 'lissa' option check_residual={check_residual!r} must be true or false")
        self.check_residual = check_residual

    def _random_batches(self, problem: InfluenceProblem, generator: torch.Generator):
        n = problem.num_train
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - self.batch_size + 1 if n > self.batch_size else 1, self.batch_size):
                for inputs, targets, _ in problem.batches(problem.train, indices=order[start:start + self.batch_size]):
                    yield inputs, targets

    def resolve_scale(self, problem: InfluenceProblem, damping: float) -> tuple:
        """Return ``(scale, estimated largest eigenvalue or None)``."""
        if self.scale is not None:
            return float(self.scale), None
        estimated = estimate_max_eigenvalue(problem, damping, self.power_iterations, self.seed)
        return 1.5 * abs(estimated), estimated

    def _run(self, problem, vector, damping, scale, repeat, progress) -> tuple:
        """One LiSSA run; return ``(h_final / scale, steps taken)``."""
        generator = torch.Generator().manual_seed(self.seed + 1000 * repeat)
        batches = self._random_batches(problem, generator)
        bound = 10 * float(vector.norm()) * scale / max(damping, 1e-12)
        h = vector.clone()
        step = 0
        for step in range(1, self.depth + 1):
            product = problem.curvature_product(h, batch=next(batches)).detach()
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
        return h / scale, step

    def check_solution(self, problem, vector, solution, damping, scale) -> float:
        """Return ``||v - (H + damping*I) s|| / ||v||`` after one full product; raise or warn as above."""
        product = problem.curvature_product(solution) + damping * solution
        curvature = float(solution @ product)
        residual = float((vector - product).norm() / vector.norm())
        if not math.isfinite(residual):
            raise SolverDivergedError("LiSSA's solution gives a non-finite residual; check the model for NaN "
                                      "parameters")
        if curvature <= 0:
            raise IndefiniteHessianError(_indefinite_message(
                damping, curvature / float(solution @ solution), problem.curvature) + " (LiSSA's solution)")
        if residual > 1:
            raise SolverDivergedError(
                f"LiSSA's solution has relative residual {residual:.3g} > 1, worse than no solve at all "
                f"(scale {scale:.3g}, damping {damping:g}). Increase depth or damping, or use solver='cg'")
        if residual > self.warn_residual:
            logger.warning("LiSSA stopped at relative residual %.3g (scale %.3g, damping %g, depth %d); "
                           "increase depth or repeats, or use solver='cg'", residual, scale, damping, self.depth)
        return residual

    def solve(self, problem, vector, damping, progress=None):
        started = time.perf_counter()
        if damping <= 0 and self.scale is None:
            raise ValueError("LiSSA needs damping > 0 to converge at a known rate; set damping (e.g. 0.01)")
        if float(vector.norm()) == 0:
            return torch.zeros_like(vector), {"solver": self.name, "steps": [0], "relative_residual": 0.0}
        scale, estimated = self.resolve_scale(problem, damping)

        estimates, steps_taken = [], []
        for repeat in range(self.repeats):
            estimate, steps = self._run(problem, vector, damping, scale, repeat, progress)
            estimates.append(estimate)
            steps_taken.append(steps)
        solution = torch.stack(estimates).mean(0)

        diagnostics = {"solver": self.name, "scale": scale, "estimated_max_eigenvalue": estimated,
                       "depth": self.depth, "repeats": self.repeats, "steps": steps_taken,
                       "batch_size": self.batch_size}
        if self.check_residual:
            diagnostics["relative_residual"] = self.check_solution(problem, vector, solution, damping, scale)
        diagnostics["seconds"] = time.perf_counter() - started
        return solution, diagnostics


SOLVERS = {"exact": ExactSolver, "cg": ConjugateGradientSolver, "lissa": LissaSolver}


def make_solver(name: str, **options) -> InverseHVPSolver:
    """Build the solver ``name`` ("exact", "cg" or "lissa") with its options."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)} or 'paper'")
    accepted = [key for key in inspect.signature(SOLVERS[name]).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; its options are {accepted}")
    return SOLVERS[name](**options)
