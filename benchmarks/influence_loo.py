"""Influence settings against actual leave-one-out retraining on the default CNN (small_cnn, digits).

Trains round 1 as the pipeline does, scores every training sample under each setting, then
retrains without K unfavorable, K favorable and K random samples (chosen by the reference setting)
and prints the Pearson and Spearman correlation of predicted and actual changes in total
validation loss, per setting. The retrainings are shared by every setting, so the settings are
compared on the same ground truth. See ``core/verify.py`` for the paired retraining.

Run (about 5-8 minutes on 2 busy CPU cores; ``--scratch-k 10`` adds about 15 minutes)::

    PYTHONPATH=. .venv/bin/python benchmarks/influence_loo.py
    PYTHONPATH=. .venv/bin/python benchmarks/influence_loo.py --k 10 --scratch-k 10
"""

import argparse
import logging
import time
import warnings

import numpy as np
import torch
from scipy import stats

from core.datasets import load_dataset
from core.influence import InfluenceError, compute_influence, cross_entropy_losses, defaults
from core.models import build_model
from core.training import TrainConfig, train
from core.verify import RetrainSettings, choose_samples, paired_retrain, total_validation_loss

#: (curvature, damping, solver, options); the first is the reference that chooses the samples.
SETTINGS = [
    ("gauss_newton", 0.01, "cg", defaults.solver_options("cg")),
    ("gauss_newton", 0.001, "cg", defaults.solver_options("cg")),
    ("gauss_newton", 0.1, "cg", defaults.solver_options("cg")),
    ("hessian", 0.1, "cg", defaults.solver_options("cg")),
    ("hessian", 1.0, "cg", defaults.solver_options("cg")),
    ("gauss_newton", 0.1, "lissa", defaults.solver_options("lissa")),
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=10, help="samples per group for warm retraining (default 10)")
    parser.add_argument("--scratch-k", type=int, default=3,
                        help="samples per group for from-scratch retraining, 30 epochs each (default 3; 0 skips)")
    parser.add_argument("--warm-epochs", type=int, default=5, help="epochs of each warm retraining (default 5)")
    parser.add_argument("--warm-lr", type=float, default=1e-4, help="Adam learning rate of warm retraining")
    parser.add_argument("--epochs", type=int, default=30, help="round-1 epochs (default 30, the pipeline's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def correlations(predicted, actual) -> tuple:
    return stats.pearsonr(predicted, actual)[0], stats.spearmanr(predicted, actual)[0]


def actual_changes(start, splits, indices, settings) -> tuple:
    """Return the actual changes for ``indices`` and the noise floor: the change from another batch order."""
    baseline = total_validation_loss(paired_retrain(start, splits.train, settings), splits.val)
    reshuffled = RetrainSettings(**{**settings.to_dict(), "seed": settings.seed + 7_919})
    noise = abs(total_validation_loss(paired_retrain(start, splits.train, reshuffled), splits.val) - baseline)
    changes = []
    for index in indices:
        retrained = paired_retrain(start, splits.train, settings, left_out=int(index))
        changes.append(total_validation_loss(retrained, splits.val) - baseline)
    return np.array(changes), noise


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    splits = load_dataset("digits", seed=args.seed)
    n = len(splits.train)

    initial = build_model("small_cnn", seed=args.seed)
    model = build_model("small_cnn", seed=args.seed)
    model.load_state_dict(initial.state_dict())
    started = time.perf_counter()
    train(model, splits.train, TrainConfig(epochs=args.epochs, seed=args.seed + 1))
    epoch_seconds = (time.perf_counter() - started) / args.epochs
    print(f"round 1: {args.epochs} epochs, {epoch_seconds:.3f} s per epoch, {n} training samples")

    results = {}
    for curvature, damping, solver, options in SETTINGS:
        name = f"{curvature} d={damping:g} {solver}"
        started = time.perf_counter()
        try:
            result = compute_influence(model, cross_entropy_losses, splits.train, splits.val, solver=solver,
                                       damping=damping, curvature=curvature, **options)
        except InfluenceError as error:
            print(f"{name}: {type(error).__name__}: {str(error)[:120]}")
            continue
        seconds = time.perf_counter() - started
        results[name] = (result.scores.double().numpy(), seconds / epoch_seconds, result.diagnostics)
        print(f"{name}: scored in {seconds / epoch_seconds:.0f} epoch-equivalents "
              f"({result.diagnostics.get('iterations', result.diagnostics.get('steps'))} iterations)")

    reference = next(iter(results.values()))[0]
    indices, _ = choose_samples(reference, args.k, seed=args.seed)
    warm = RetrainSettings(epochs=args.warm_epochs, lr=args.warm_lr, seed=args.seed + 1)
    started = time.perf_counter()
    changes, noise = actual_changes(model, splits, indices, warm)
    truth = {"warm": (indices, changes)}
    print(f"warm retraining: {len(indices)} samples x {warm.epochs} epochs at lr {warm.lr:g} "
          f"({time.perf_counter() - started:.0f} s); |actual| median {np.median(np.abs(changes)):.3g}, "
          f"noise floor (another batch order) {noise:.3g}")
    if args.scratch_k:
        chosen, _ = choose_samples(reference, args.scratch_k, seed=args.seed)
        scratch = RetrainSettings(epochs=args.epochs, lr=1e-3, seed=args.seed + 1)
        started = time.perf_counter()
        changes, noise = actual_changes(initial, splits, chosen, scratch)
        truth["scratch"] = (chosen, changes)
        print(f"scratch retraining: {len(chosen)} samples x {args.epochs} epochs "
              f"({time.perf_counter() - started:.0f} s); |actual| median {np.median(np.abs(changes)):.3g}, "
              f"noise floor (another batch order) {noise:.3g}")

    print()
    header = f"{'setting':<28} {'cost (epochs)':>13}"
    for mode in truth:
        header += f" {mode + ' Pearson':>15} {mode + ' Spearman':>16}"
    print(header)
    for name, (scores, cost, _) in results.items():
        line = f"{name:<28} {cost:>13.0f}"
        for chosen, actual in truth.values():
            pearson, spearman = correlations(-scores[chosen] / n, actual)
            line += f" {pearson:>15.3f} {spearman:>16.3f}"
        print(line)


if __name__ == "__main__":
    main()
