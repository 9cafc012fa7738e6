"""Errors raised by the influence engine. Each message names the value and the fix."""


class InfluenceError(RuntimeError):
    """Base class for influence failures; no scores are returned or stored after one."""


class NonFiniteGradientError(InfluenceError):
    """A gradient or a score contains NaN or infinity, so no solve is attempted or no score is kept."""


class IndefiniteHessianError(InfluenceError):
    """``H + damping*I`` is not positive definite, so ``(H + damping*I)^-1`` gives meaningless scores."""


class SingularHessianError(IndefiniteHessianError):
    """``H + damping*I`` has an eigenvalue that is zero within rounding, so it has no usable inverse.

    Typical cause: damping 0 with more parameters than the training data determines (a rank-deficient
    Hessian). A subclass of ``IndefiniteHessianError``, so callers that catch that one catch this too.
    """


class SolverDivergedError(InfluenceError):
    """An iterative solver produced NaN, infinity or a growing norm."""
