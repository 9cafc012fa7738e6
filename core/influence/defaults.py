"""Default influence settings, and the evidence behind each.

Measured on the default CNN (``small_cnn``, 38,330 parameters, BatchNorm, 30 epochs of Adam on the
1,257 digits training samples, 100% training accuracy) on a shared 2-core CPU with one torch
thread. Costs are in training-epoch equivalents (seconds / seconds of one training epoch).

Leave-one-out, ``PYTHONPATH=. .venv/bin/python benchmarks/influence_loo.py --k 10 --scratch-k 10``:
Pearson / Spearman between predicted (``-influence / n``) and actual change of the total validation
loss over 30 left-out samples, retrained warm (5 epochs from round 1's weights) and from scratch::

    gauss_newton, damping 0.001   warm 0.74 / 0.90   scratch 0.62 / 0.81
    gauss_newton, damping 0.01    warm 0.86 / 0.94   scratch 0.72 / 0.83
    gauss_newton, damping 0.1     warm 0.94 / 0.97   scratch 0.79 / 0.87
    hessian, damping 0.1          warm 0.94 / 0.97   scratch 0.79 / 0.87
    hessian, damping 1.0          warm 0.90 / 0.81   scratch 0.78 / 0.78

Speed and agreement, ``PYTHONPATH=. .venv/bin/python benchmarks/influence_speed.py``: at damping 0.1
CG reaches relative residual 1e-3 in 12 iterations, and one solve plus scoring costs 14 to 18
epochs, including the one-time linearisation of the Gauss-Newton cache. Its scores agree with a
solve converged to float32 precision at Pearson 1.0000. ``benchmarks/README.md`` has the tables.
"""

#: Gauss-Newton: positive semi-definite for cross-entropy, so every damping > 0 gives a valid solve.
CURVATURE = "gauss_newton"
#: Best leave-one-out correlation of the dampings measured (above), and CG converges in ~12 steps.
#: Damping 0.01 correlated less (warm 0.86, scratch 0.72) at 2.5 times the CG iterations.
DAMPING = 0.1
#: CG needs no step-size tuning and stops on a residual; LiSSA needs ``scale / damping`` steps.
SOLVER = "cg"
#: Relative residual at which CG stops. Scores at residual 1e-3 agree with a 1e-8 solve at
#: Pearson > 0.9999 at damping 0.1 and at 0.01 (31 iterations there).
CG_TOL = 1e-3
CG_MAX_ITER = 500
#: Each LiSSA step costs about 0.1-0.2 epochs (a 128-sample product), and mini-batch noise keeps
#: the residual near 0.1, so more depth buys little. At damping 0.1, depth 100 / 200 / 300 / 1000
#: agreed with a converged solve at Pearson 0.954 / 0.996 / 0.992 / 0.991 for about 15 / 22 / 31 /
#: 195 epochs, power iteration included.
LISSA_DEPTH = 200
LISSA_REPEATS = 1
LISSA_BATCH_SIZE = 128
#: Samples per batch of gradients, full curvature products and scoring. Larger batches amortise
#: per-call overhead and the one-time linearisation of the Gauss-Newton cache (one trace per batch).
BATCH_SIZE = 1024


def solver_options(solver: str) -> dict:
    """Return the default options of ``solver``."""
    if solver == "cg":
        return {"tol": CG_TOL, "max_iter": CG_MAX_ITER}
    if solver in ("lissa", "paper"):
        return {"depth": LISSA_DEPTH, "repeats": LISSA_REPEATS, "batch_size": LISSA_BATCH_SIZE}
    return {}
