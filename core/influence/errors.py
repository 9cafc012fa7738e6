"""Errors raised by the influence engine. Each message names the value and the fix."""


class InfluenceError(RuntimeError):
    """Base class for influence failures; no scores are returned or stored after one."""


class NonFiniteGradientError(InfluenceError):
    """A gradient contains NaN or infinity, so no solve is attempted."""


class IndefiniteHessianError(InfluenceError):
    """``H + damping*I`` is not positive definite, so ``(H + damping*I)^-1`` gives meaningless scores."""


class SolverDivergedError(InfluenceError):
    """An iterative solver produced NaN, infinity or a growing norm."""
