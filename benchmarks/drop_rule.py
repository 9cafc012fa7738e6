"""Evidence for the default drop rule: before/after experiments on digits, with and without label noise.

Runs two stored, resumable experiments in one workspace with the default CNN and settings:
``noisy`` (10% symmetric label noise) and ``clean``. Each seed trains round 1, scores the training
set, and trains every arm from the same initial weights: all samples again, the configured rule
(``validated``), the rule of Wang, Huan and Li (drop every positive score), a random drop and a highest-loss drop of the same size, plus the
rule variants in ``VARIANTS``, all scored on the same influence. It prints each arm's test error,
the paired differences with 95% t intervals, how well each ranking finds the flipped labels, and
whether each target is met, and writes both summaries to ``<workspace>/drop_rule.json``.

Usage (about 5-10 minutes per seed on 2 busy CPU cores; rerun the same command to resume)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/drop_rule.py --workspace /tmp/bench-drop-rule

``--seeds``, ``--epochs`` and ``--only noisy|clean`` shorten it. ``--first-seed 5 --no-variants``
checks the current default on fresh seeds, in separate experiments.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.drop_rules import DropRule  # noqa: E402
from curator import experiment, experiment_summary  # noqa: E402
from curator.config import RunConfig  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.workspace import Workspace  # noqa: E402

#: Rule variants trained as extra arms on the same scores as the default rule, each with a random
#: drop of the same size (``random_<name>``) as its control.
VARIANTS = {
    "max5": DropRule("validated", 0.05, alpha=None).to_dict(),
    "max20": DropRule("validated", 0.20, alpha=None).to_dict(),
    "perm05": DropRule("validated", 0.10, alpha=0.05).to_dict(),
    "max5_perm05": DropRule("validated", 0.05, alpha=0.05).to_dict(),
    "top10": DropRule("top_fraction", 0.10).to_dict(),
}
SETTINGS = {"noisy": {"label_noise": 0.1}, "clean": {"label_noise": 0.0}}


def run_one(workspace: Workspace, store: Store, name: str, seeds: list, epochs: int, variants: dict) -> dict:
    """Create (or resume) experiment ``bench-<name>`` (``-from<first seed>`` unless 0) and return its summary."""
    experiment_id = f"bench-{name}" if seeds[0] == 0 else f"bench-{name}-from{seeds[0]}"
    try:
        experiment.get_experiment(store, experiment_id)
        if variants:
            experiment.add_rules(store, experiment_id, variants, matched_random=True)
    except LookupError:
        run = RunConfig(epochs=epochs, **SETTINGS[name]).to_dict()
        config = experiment.ExperimentConfig(seeds=seeds, run=run, extra_rules=variants, matched_random=True)
        experiment.create_experiment(store, config, experiment_id)

    def progress(stage, step, total, message=""):
        if stage == "experiment":
            logging.info("%s: %s (%d of %d seeds done)", experiment_id, message, step, total)

    started = time.perf_counter()
    experiment.run_experiment(workspace, store, experiment_id, progress)
    logging.info("%s finished in %.0f s", experiment_id, time.perf_counter() - started)
    return experiment_summary.experiment_summary(store, experiment_id)


def _interval(paired: dict) -> str:
    if paired is None:
        return "n/a"
    if paired["low"] is None:
        return f"{paired['mean']:+.2%} (interval undefined)"
    return (f"{paired['mean']:+.2%} [{paired['low']:+.2%}, {paired['high']:+.2%}] "
            f"lower {paired['lower']}/{paired['n']}")


def _versus_random(arm: str, paired: dict):
    """Return the paired difference against the random drop of the same size as ``arm``'s."""
    if arm.startswith("rule_"):
        return paired.get(f"vs_random_{arm[len('rule_'):]}")
    return paired.get("vs_random") if arm in ("dropout", "high_loss") else None


def print_table(name: str, summary: dict) -> None:
    print(f"\n== {name}: {summary['experiment_id']}, seeds {summary['seeds_complete']}")
    print(f"{'arm':<18} {'dropped':>8} {'test error':>17} | paired test-error difference vs round1 | vs full | "
          f"vs random drop of the same size")
    for arm, values in summary["arms"].items():
        test = values["test_error"]
        spread = f"{test['std']:.2%}" if test["std"] is not None else "n/a"
        paired = summary["paired_test_error"][arm]
        print(f"{arm:<18} {values['n_dropped']['mean']:>8.1f} {test['mean']:>8.2%} +- {spread:<6} | "
              f"{_interval(paired.get('vs_round1'))} | {_interval(paired.get('vs_full'))} | "
              f"{_interval(_versus_random(arm, paired))}")
    if summary["detection"]:
        print("finding flipped training labels (mean over seeds; k = the default rule's drop count):")
        for ranking, values in summary["detection"].items():
            precision = values["precision"]["mean"] if values["precision"] else float("nan")
            print(f"  {ranking:<15} AUROC {values['auroc']['mean']:.3f} +- {values['auroc']['std'] or 0:.3f}  "
                  f"precision {precision:.2%}  recall {values['recall']['mean']:.2%}  "
                  f"precision@flipped {values['precision_at_flipped']['mean']:.2%}")


def check_targets(noisy: dict, clean: dict) -> list:
    """Return ``(target, met, measured)`` rows for every rule arm."""
    rows = []
    if noisy:
        detection = noisy["detection"]
        influence, loss = detection["influence"]["auroc"]["mean"], detection["training_loss"]["auroc"]["mean"]
        rows.append(("noisy: influence AUROC >= 0.9 and above training loss", influence >= 0.9 and influence > loss,
                     f"influence {influence:.3f}, training loss {loss:.3f}"))
        if "self_influence" in detection:
            value = detection["self_influence"]["auroc"]["mean"]
            rows.append(("noisy: self-influence AUROC >= 0.9 and above training loss", value >= 0.9 and value > loss,
                         f"self-influence {value:.3f}"))
    arms = [arm for arm in (noisy or clean)["arms"] if arm in ("dropout", "paper") or arm.startswith("rule_")]
    for arm in arms:
        if noisy:
            paired = noisy["paired_test_error"][arm]
            round1, random = paired["vs_round1"], _versus_random(arm, paired)
            rows.append((f"noisy: {arm} below round 1 in >= 80% of seeds", round1["lower"] >= 0.8 * round1["n"],
                         f"lower in {round1['lower']} of {round1['n']}"))
            if random is not None:
                rows.append((f"noisy: {arm} below a random drop of the same size on average", random["mean"] < 0,
                             f"mean difference {random['mean']:+.2%}"))
        if clean:
            round1 = clean["paired_test_error"][arm]["vs_round1"]
            reaches = round1["low"] is not None and round1["low"] <= 0
            rows.append((f"clean: {arm} vs round 1 interval reaches zero or below", reaches, _interval(round1)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/bench-drop-rule", help="workspace folder (reused to resume)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per experiment (default: 5)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed; another value runs separate experiments bench-<name>-from<seed>")
    parser.add_argument("--no-variants", action="store_true",
                        help="train only the standard arms, with the current default rule")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of every arm (default: 30)")
    parser.add_argument("--only", choices=sorted(SETTINGS), default=None, help="run one experiment only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    workspace = Workspace(args.workspace)
    store = Store(workspace)
    names = [args.only] if args.only else ["noisy", "clean"]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    variants = {} if args.no_variants else VARIANTS
    summaries = {name: run_one(workspace, store, name, seeds, args.epochs, variants) for name in names}
    for name, summary in summaries.items():
        print_table(name, summary)

    print("\ntargets:")
    for target, met, measured in check_targets(summaries.get("noisy"), summaries.get("clean")):
        print(f"  [{'met' if met else 'MISSED'}] {target}: {measured}")
    output = Path(workspace.root) / ("drop_rule.json" if args.first_seed == 0 else f"drop_rule-from{args.first_seed}.json")
    output.write_text(json.dumps(summaries, indent=1, default=str))
    print(f"\nsummaries written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
