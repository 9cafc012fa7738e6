"""Label-noise demo: how well each ranking of the training samples finds deliberately flipped labels.

Runs (or resumes) stored experiments on digits with the default CNN: ``bench-noisy`` (10% symmetric
noise, the same experiment that ``benchmarks/drop_rule.py`` runs, so a shared workspace reuses it)
and ``bench-pairs`` (5% of the training labels flipped 3 -> 5 and 7 -> 1). For each it prints the
AUROC, precision and recall of every ranking: influence on validation loss, self-influence (exact
on the last layer), round-1 training loss, random order, and cleanlab where it is installed.

``--sweep`` also recomputes influence on validation loss at other settings from each seed's stored
round-1 model (damping 0.1 and 1.0 over all parameters with CG, and the exact last-layer solve),
to see whether a setting other than the default finds flipped labels better.

Usage (a few minutes per seed on 2 busy CPU cores; rerun to resume)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/label_noise.py --workspace /tmp/bench-drop-rule
"""

import argparse
import logging
import sys
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.influence import InfluenceProblem, cross_entropy_losses, score_samples, solve_direction  # noqa: E402
from curator import experiment, experiment_summary  # noqa: E402
from curator.config import RunConfig  # noqa: E402
from curator.pipeline import RunContext  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.workspace import Workspace  # noqa: E402

SETTINGS = {"noisy": {"label_noise": 0.1}, "pairs": {"label_noise": 0.05, "noise_pairs": [[3, 5], [7, 1]]}}
#: Influence settings of ``--sweep``: (parameters, solver, damping).
SWEEP = [("all", "cg", 0.1), ("all", "cg", 1.0), ("last_layer", "exact", 0.01)]


def run_one(workspace: Workspace, store: Store, name: str, seeds: int, epochs: int) -> dict:
    experiment_id = f"bench-{name}"
    try:
        experiment.get_experiment(store, experiment_id)
    except LookupError:
        run = RunConfig(epochs=epochs, **SETTINGS[name]).to_dict()
        experiment.create_experiment(store, experiment.ExperimentConfig(seeds=list(range(seeds)), run=run),
                                     experiment_id)
    started = time.perf_counter()
    experiment.run_experiment(workspace, store, experiment_id)
    logging.info("%s finished in %.0f s", experiment_id, time.perf_counter() - started)
    return experiment_summary.experiment_summary(store, experiment_id)


def print_detection(name: str, summary: dict) -> None:
    print(f"\n== {name}: {summary['experiment_id']}, seeds {summary['seeds_complete']}, "
          f"rule: {summary['drop_rule']}")
    print(f"  {'ranking':<15} {'AUROC mean +- std':>18} {'precision':>9} {'recall':>7} {'precision@flipped':>17}")
    for ranking, values in summary["detection"].items():
        auroc = values["auroc"]
        precision = values["precision"]["mean"] if values["precision"] else float("nan")
        print(f"  {ranking:<15} {auroc['mean']:>9.3f} +- {auroc['std'] or 0:.3f} {precision:>9.2%} "
              f"{values['recall']['mean']:>7.2%} {values['precision_at_flipped']['mean']:>17.2%}")


def sweep(workspace: Workspace, store: Store, summary: dict) -> None:
    """Print the flipped-label AUROC of influence on the whole validation set at each ``SWEEP`` setting."""
    print(f"\n== influence settings on {summary['experiment_id']} (AUROC for flipped labels, per seed)")
    for seed in summary["seeds_complete"]:
        ctx = RunContext(workspace, store, experiment.run_id_for(summary["experiment_id"], seed))
        train, val = ctx.splits.train, ctx.splits.val
        flipped = train.true_labels != train.labels
        model = ctx.load_model("round1.pt")
        for params, solver, damping in SWEEP:
            started = time.perf_counter()
            problem = InfluenceProblem(model, cross_entropy_losses, train, params=params)
            options = {"tol": 1e-4, "max_iter": 500} if solver == "cg" else {}
            direction, _ = solve_direction(problem, val, solver, damping, **options)
            scores = score_samples(problem, direction, train).double().numpy()
            print(f"  seed {seed} params={params} solver={solver} damping={damping:g}: "
                  f"AUROC {roc_auc_score(flipped, scores):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/bench-label-noise", help="workspace folder (reused to resume)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per experiment (default: 5)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--only", choices=sorted(SETTINGS), default=None, help="run one experiment only")
    parser.add_argument("--sweep", action="store_true", help="also try other influence settings per seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    workspace = Workspace(args.workspace)
    store = Store(workspace)
    names = [args.only] if args.only else list(SETTINGS)
    summaries = {name: run_one(workspace, store, name, args.seeds, args.epochs) for name in names}
    for name, summary in summaries.items():
        print_detection(name, summary)
    if args.sweep:
        for summary in summaries.values():
            sweep(workspace, store, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
