"""Speed, accuracy and memory of the influence step on the default CNN (small_cnn on digits).

Everything is measured side by side in one run and reported as ratios (times in training-epoch
equivalents), because the CPUs are shared and absolute times vary from run to run; scoring times
are the fastest of a few repeats:

1. scoring by one forward-mode JVP per batch against per-sample gradients (``torch.func.vmap(grad)``
   and a plain loop) with the same direction ``s``: time ratio and agreement;
2. the data dropout paper's loop (one LiSSA solve per validation sample) against one solve of
   the summed gradient, timed on a few validation samples and extrapolated to all of them;
3. the cost of the default influence step in training-epoch equivalents;
4. agreement with a fully converged solve against cost, for CG iterations and LiSSA depth;
5. peak RSS of scoring at 2k and 20k synthetic samples, each in its own subprocess.

Run (about 5-10 minutes on 2 busy CPU cores)::

    PYTHONPATH=. .venv/bin/python benchmarks/influence_speed.py
"""

import argparse
import json
import logging
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from scipy import stats
from torch.func import functional_call, grad, vmap

from core.datasets import load_dataset
from core.influence import (ConjugateGradientSolver, InfluenceProblem, LissaSolver, cross_entropy_losses, defaults,
                            score_samples, solve_direction)
from core.models import build_model
from core.training import TrainConfig, train


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--paper-samples", type=int, default=3,
                        help="validation samples the paper's loop is timed on (default 3)")
    parser.add_argument("--paper-depth", type=int, default=100,
                        help="LiSSA depth of every solve in the paper-loop comparison (default 100)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the RSS measurement")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def timed(function, *args, repeats: int = 1, **kwargs):
    """Return ``(result, seconds)`` with the fastest of ``repeats`` calls: other load only adds time."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - started)
    return result, best


def agreement(candidate, reference) -> tuple:
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    pearson = stats.pearsonr(candidate, reference)[0]
    max_relative = np.max(np.abs(candidate - reference)) / np.max(np.abs(reference))
    return pearson, max_relative


def per_sample_vmap_scores(problem, direction, data, chunk: int = 128) -> torch.Tensor:
    """``-s . grad L(x)`` from per-sample gradients formed by ``vmap(grad)``, ``chunk`` samples at a time."""
    def one_loss(flat, x, y):
        return problem.losses(flat, x[None], y[None]).sum()

    per_sample_grad = vmap(grad(one_loss), in_dims=(None, 0, 0))
    chunks = []
    for inputs, targets, _ in problem.batches(data):
        for start in range(0, len(targets), chunk):
            gradients = per_sample_grad(problem.theta, inputs[start:start + chunk], targets[start:start + chunk])
            chunks.append(-(gradients @ direction))
    return torch.cat(chunks)


def per_sample_loop_scores(model, direction, data) -> torch.Tensor:
    """``-s . grad L(x)`` from one ``backward`` per sample on the eval-mode model."""
    model.eval()
    params = [p for p in model.parameters()]
    scores = []
    for index in range(len(data)):
        image, label = data[index]
        loss = cross_entropy_losses(model(image[None]), label[None]).sum()
        gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        scores.append(-(gradient @ direction))
    return torch.stack(scores)


def compare_scoring(name, model, problem, direction, data, epoch_seconds):
    """Print the scoring methods' times and agreement; ``problem`` solved for ``direction`` if it has a cache."""
    fresh_problem = InfluenceProblem(model, cross_entropy_losses, data, batch_size=defaults.BATCH_SIZE)
    score_samples(fresh_problem, direction, data)  # warm-up, outside the timings
    jvp_scores, jvp_seconds = timed(score_samples, fresh_problem, direction, data, repeats=3)
    rows = [("JVP (engine, fresh)", jvp_scores, jvp_seconds)]
    if problem.cached_directional_derivatives(direction) is not None:
        rows.append(("output tangents summed during the CG solve",
                     *timed(score_samples, problem, direction, data, repeats=3)))
        # A problem with the same linearisation but no solve of its own replays the cache instead.
        replaying = InfluenceProblem(model, cross_entropy_losses, data, batch_size=defaults.BATCH_SIZE)
        replaying.curvature_product(direction)
        rows.append(("JVP replaying the Gauss-Newton cache",
                     *timed(score_samples, replaying, direction, data, repeats=3)))
    rows.append(("vmap(grad)", *timed(per_sample_vmap_scores, fresh_problem, direction, data, repeats=3)))
    rows.append(("loop of backward", *timed(per_sample_loop_scores, model, direction, data, repeats=2)))

    vmap_seconds = dict((method, seconds) for method, _, seconds in rows)["vmap(grad)"]
    print(f"{name}, {problem.num_params} parameters:")
    print(f"  {'method':<44} {'epoch-equiv.':>12} {'x JVP time':>11} {'vmap(grad) / this':>18} "
          f"{'Pearson vs JVP':>15} {'max rel. error':>15}")
    for method, scores, seconds in rows:
        pearson, max_relative = agreement(scores.detach(), jvp_scores)
        print(f"  {method:<44} {seconds / epoch_seconds:>12.3f} {seconds / jvp_seconds:>11.3f} "
              f"{vmap_seconds / seconds:>18.1f} {pearson:>15.6f} {max_relative:>15.2e}")


def section_scoring(model, problem, direction, splits, epoch_seconds):
    print("\n## 1. Scoring with the same s: one JVP per batch against per-sample gradients")
    compare_scoring("small_cnn (default), after a Gauss-Newton CG solve", model, problem, direction,
                    splits.train, epoch_seconds)

    # The same comparison on a wider network of the same family: per-sample gradients cost
    # O(batch x parameters) memory traffic, the JVP does not. Its direction is random.
    wide = build_model("small_cnn", seed=0, width=64, hidden=512)
    wide_problem = InfluenceProblem(wide, cross_entropy_losses, splits.train, batch_size=defaults.BATCH_SIZE)
    wide_direction = torch.randn(wide_problem.num_params, generator=torch.Generator().manual_seed(0))
    compare_scoring("small_cnn width 64, hidden 512 (random s, no solve)", wide, wide_problem, wide_direction,
                    splits.train, epoch_seconds)


def section_paper_loop(problem, splits, count, depth, epoch_seconds):
    print("\n## 2. The paper's loop (one LiSSA solve per validation sample) against one solve")
    options = {**defaults.solver_options("lissa"), "depth": depth}
    solver = LissaSolver(**options)
    scale, _ = solver.resolve_scale(problem, defaults.DAMPING)
    options["scale"] = scale
    subset = torch.utils.data.Subset(splits.val, range(count))
    _, loop_seconds = timed(solve_direction, problem, subset, "paper", defaults.DAMPING, **options)
    _, single_seconds = timed(solve_direction, problem, splits.val, "lissa", defaults.DAMPING, **options)
    per_sample = loop_seconds / count
    extrapolated = per_sample * len(splits.val)
    print(f"LiSSA depth {depth} (both sides; the cost of a solve is proportional to depth, the ratio is not), "
          f"batch {options['batch_size']}, damping {defaults.DAMPING}, scale {scale:.3g} shared by every solve")
    print(f"paper loop: {per_sample / epoch_seconds:.1f} epoch-equivalents per validation sample, measured on "
          f"{count} samples")
    print(f"one LiSSA solve of the summed gradient: {single_seconds / epoch_seconds:.1f} epoch-equivalents")
    print(f"extrapolated to all {len(splits.val)} validation samples (an estimate: measured cost per sample "
          f"times the count): the loop costs {extrapolated / single_seconds:.0f}x one solve, "
          f"{extrapolated / epoch_seconds:.0f} epoch-equivalents")


def section_default_cost(model, splits, epoch_seconds):
    print("\n## 3. The default influence step in training-epoch equivalents")
    print(f"defaults: solver {defaults.SOLVER}, curvature {defaults.CURVATURE}, damping {defaults.DAMPING}, "
          f"options {defaults.solver_options(defaults.SOLVER)}, batch size {defaults.BATCH_SIZE}")
    problem = InfluenceProblem(model, cross_entropy_losses, splits.train, curvature=defaults.CURVATURE,
                               batch_size=defaults.BATCH_SIZE)
    (direction, info), solve_seconds = timed(solve_direction, problem, splits.val, defaults.SOLVER, defaults.DAMPING,
                                             **defaults.solver_options(defaults.SOLVER))
    scores, score_seconds = timed(score_samples, problem, direction, splits.train)
    _, vmap_seconds = timed(per_sample_vmap_scores, problem, direction, splits.train)
    total = solve_seconds + score_seconds
    print(f"solve {solve_seconds / epoch_seconds:.1f} + score {score_seconds / epoch_seconds:.1f} = "
          f"{total / epoch_seconds:.1f} epoch-equivalents ({info.get('iterations')} CG iterations, "
          f"relative residual {info.get('relative_residual', float('nan')):.1e})")
    print(f"the pipeline solves twice (two validation halves) and scores twice: about "
          f"{2 * total / epoch_seconds:.0f} epoch-equivalents")
    print(f"the same solve with vmap(grad) scoring: {(solve_seconds + vmap_seconds) / epoch_seconds:.1f} "
          f"epoch-equivalents, {(solve_seconds + vmap_seconds) / total:.2f}x the engine's step")
    return scores


def section_convergence(model, splits, epoch_seconds, default_scores):
    print("\n## 4. Agreement with a converged solve against cost")
    problem = InfluenceProblem(model, cross_entropy_losses, splits.train, curvature=defaults.CURVATURE,
                               batch_size=defaults.BATCH_SIZE)
    gradient = problem.loss_gradient_sum(splits.val)
    problem.curvature_product(gradient)  # builds the linearisation cache outside the timings
    (converged, info), seconds = timed(ConjugateGradientSolver(tol=1e-8, max_iter=2000).solve,
                                       problem, gradient, defaults.DAMPING)
    reference = score_samples(problem, converged, splits.train)
    print(f"reference: CG to relative residual {info['relative_residual']:.1e} in {info['iterations']} iterations "
          f"({seconds / epoch_seconds:.0f} epoch-equivalents); Lanczos estimates of the damped eigenvalues "
          f"{info['estimated_min_damped_eigenvalue']:.3g} to {info['estimated_max_damped_eigenvalue']:.3g}")
    pearson, _ = agreement(default_scores, reference)
    print(f"the default step's scores (section 3) agree with it at Pearson {pearson:.4f}")

    logging.getLogger("core.influence.solvers").setLevel(logging.ERROR)
    print(f"\n{'solver':<8} {'setting':<22} {'cost (epochs)':>13} {'Pearson':>9} {'rel. residual':>14}")
    for iterations in (3, 5, 8, 10, 15, 20, 40):
        (direction, info), seconds = timed(ConjugateGradientSolver(tol=0.0, max_iter=iterations).solve,
                                           problem, gradient, defaults.DAMPING)
        pearson, _ = agreement(score_samples(problem, direction, splits.train), reference)
        setting = f"{info['iterations']} iterations"
        print(f"{'cg':<8} {setting:<22} {seconds / epoch_seconds:>13.1f} {pearson:>9.4f} "
              f"{info['relative_residual']:>14.1e}")
    for depth in (100, 200, 300, 1000):
        solver = LissaSolver(depth=depth, batch_size=defaults.LISSA_BATCH_SIZE)
        (direction, info), seconds = timed(solver.solve, problem, gradient, defaults.DAMPING)
        pearson, _ = agreement(score_samples(problem, direction, splits.train), reference)
        print(f"{'lissa':<8} {f'depth {depth}, batch {solver.batch_size}':<22} {seconds / epoch_seconds:>13.1f} "
              f"{pearson:>9.4f} {info['relative_residual']:>14.1e}")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(samples: int) -> None:
    """Score ``samples`` synthetic 8x8 images; print the RSS before and the peak RSS during scoring as JSON.

    Writing 5 to ``/proc/self/clear_refs`` resets the peak (``VmHWM``) to the current RSS (Linux 4.0
    and later), so the peak covers scoring alone and not the imports before it.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(samples, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    data = torch.utils.data.TensorDataset(images, labels)
    model = build_model("small_cnn", seed=0)
    problem = InfluenceProblem(model, cross_entropy_losses, data, batch_size=defaults.BATCH_SIZE)
    direction = torch.randn(problem.num_params, generator=generator)
    score_samples(problem, direction, torch.utils.data.Subset(data, range(64)))  # warm-up

    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_mib("VmRSS")
    scores = score_samples(problem, direction, data)
    peak = _status_mib("VmHWM")
    print(json.dumps({"samples": samples, "before_mib": before, "peak_mib": peak, "scored": len(scores)}))


def section_memory():
    print("\n## 5. Peak RSS while scoring (each size in its own subprocess)")
    rows = []
    for samples in (2_000, 20_000):
        output = subprocess.run([sys.executable, __file__, "--memory-child", str(samples)], capture_output=True,
                                text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    for row in rows:
        print(f"{row['samples']:>6} samples: RSS {row['before_mib']:.0f} MiB before scoring, peak "
              f"{row['peak_mib']:.0f} MiB while scoring (+{row['peak_mib'] - row['before_mib']:.0f} MiB)")
    growth = rows[1]["peak_mib"] / rows[0]["peak_mib"] - 1
    print(f"growth of the peak from 2k to 20k samples: {growth:.1%}; the 20k input tensor alone is "
          f"{20_000 * 64 * 4 / 2**20:.1f} MiB")


def measure_epoch(splits) -> float:
    """Return the faster of two training epochs of a fresh default CNN, in seconds.

    Measured again before every section, because the load on shared CPUs changes within a run.
    """
    history = train(build_model("small_cnn", seed=1), splits.train, TrainConfig(epochs=2, seed=3))
    return min(row["seconds"] for row in history)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {args.threads} thread(s); times are in training-epoch equivalents")

    splits = load_dataset("digits", seed=0)
    model = build_model("small_cnn", seed=0)
    history = train(model, splits.train, TrainConfig(epochs=30, seed=1))
    epoch_seconds = float(np.median([row["seconds"] for row in history[1:]]))
    print(f"round 1: 30 epochs of {len(splits.train)} samples, median {epoch_seconds:.3f} s per epoch "
          f"(each section below measures the epoch time again next to its own timings)")

    problem = InfluenceProblem(model, cross_entropy_losses, splits.train, batch_size=defaults.BATCH_SIZE)
    direction, _ = solve_direction(problem, splits.val, "cg", defaults.DAMPING, tol=1e-3)
    section_scoring(model, problem, direction, splits, measure_epoch(splits))
    default_scores = section_default_cost(model, splits, measure_epoch(splits))
    section_convergence(model, splits, measure_epoch(splits), default_scores)
    section_paper_loop(problem, splits, args.paper_samples, args.paper_depth, measure_epoch(splits))
    if not args.skip_memory:
        section_memory()


if __name__ == "__main__":
    main()
