"""Measure how much test error a perfect drop rule removes on noisy digits, against retraining noise.

For each seed this loads digits with symmetric label noise, then trains the default CNN with the
round-2 recipe (augmentation on, initial weights of the seed) on:

- ``full``: every training sample, once per shuffling seed (``--shuffles``), which measures how much
  test error moves when only the batch order changes;
- ``oracle_k``: without ``k`` of the flipped samples (``--k``, the default rule's drop size),
  chosen at random among them once per draw (``--draws``): a perfect detector that drops as many
  samples as the rule;
- ``random_k``: without ``k`` samples drawn at random, once per draw;
- ``oracle_all``: without every flipped sample; ``random_all``: without as many drawn at random;
- ``loss_all``: without as many samples of the highest round-1 training loss, a practical
  detector of flipped labels;
- ``cleanlab``: without the samples cleanlab's ``find_label_issues`` flags from 4-fold out-of-fold
  probabilities (round-1 recipe), and ``random_cleanlab``: without as many drawn at random.

It prints test errors in images and, for each oracle, the share of (oracle, random) training
pairs of a seed in which the oracle has fewer errors. An experiment trains each arm once per
seed, so from that share ``p`` it also prints the chance that the oracle has fewer errors than
the random drop in at least 4 of 5 seeds. A rule of the same size that finds flipped labels
can at best expect the oracle's gain, so these figures bound what its experiment can show.
Each seed's results are stored as JSON under ``--output`` and reused when the command is rerun.

Usage (about 75 seconds per seed on one CPU core; cleanlab must be installed)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/noise_ceiling.py --output /tmp/bench-noise-ceiling
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from core.cross_validation import out_of_fold_probabilities
from core.evaluation import split_reports
from core.influence import cross_entropy_losses
from core.models import build_model
from core.training import train
from curator.config import RunConfig
from curator.pipeline import load_splits
from curator.statistics import paired_difference

#: The results each seed's JSON file must hold; missing ones are trained when the command is rerun.
ARMS = {"full", "oracle_k", "random_k", "oracle_all", "random_all", "loss_all", "cleanlab", "random_cleanlab"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder for the per-seed JSON results")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10, 20)),
                        help="dataset and model seeds (default: 10-19; 10-14 are the drop-rule benchmark's latest)")
    parser.add_argument("--noise", type=float, default=0.1, help="share of flipped labels (default: 0.1)")
    parser.add_argument("--k", type=int, default=58,
                        help="drop size of the smaller oracle (default: 58, the default rule's mean drop on "
                             "noisy seeds 10-14)")
    parser.add_argument("--draws", type=int, default=5, help="draws of each drop set per seed (default: 5)")
    parser.add_argument("--shuffles", type=int, default=5, help="trainings of the full set per seed (default: 5)")
    return parser.parse_args()


def initial_network(config: RunConfig, splits, round_number: int) -> torch.nn.Module:
    """Build the seed's initial network with round ``round_number``'s model options."""
    return build_model(config.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                       image_size=tuple(splits.info["image_size"]), seed=config.seed,
                       **config.round_model_options(round_number))


def test_errors(config: RunConfig, splits, drop: np.ndarray, shuffle: int = 0) -> int:
    """Train the seed's initial network without ``drop`` (round-2 recipe) and return its wrong test images."""
    model = initial_network(config, splits, 2)
    recipe = config.train_config(2)
    recipe.seed += 1000 * shuffle
    trained_on = np.flatnonzero(~drop)
    train(model, splits.train, recipe, indices=trained_on, device=torch.device("cpu"))
    report = split_reports(model, splits)["test"]
    return int(round(report["error"] * len(splits.test)))


def round1_losses(config: RunConfig, splits) -> np.ndarray:
    """Train round 1 (no augmentation) on the noisy labels and return each training sample's loss."""
    model = initial_network(config, splits, 1)
    train(model, splits.train, config.train_config(1), device=torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        logits = model(splits.train.images)
    return cross_entropy_losses(logits, torch.as_tensor(splits.train.labels)).numpy()


def measure_seed(seed: int, args, result: dict) -> dict:
    """Fill in the arms missing from ``result`` (a seed's stored results, or empty) and return it."""
    config = RunConfig(label_noise=args.noise, seed=seed, device="cpu")
    splits = load_splits(config)
    flipped = splits.train.labels != splits.train.true_labels
    n, m = len(flipped), int(flipped.sum())
    rng = np.random.default_rng([seed, 271_828])

    def mask(positions) -> np.ndarray:
        chosen = np.zeros(n, dtype=bool)
        chosen[positions] = True
        return chosen

    started = time.perf_counter()
    result.update({"seed": seed, "train": n, "flipped": m, "test": len(splits.test), "k": min(args.k, m)})
    if "full" not in result:
        result["full"] = [test_errors(config, splits, mask([]), shuffle) for shuffle in range(args.shuffles)]
    for name, size in (("k", result["k"]), ("all", m)):
        # Drawn sets come from one seeded generator in a fixed order, so a rerun draws the same ones.
        oracles = [mask(rng.choice(np.flatnonzero(flipped), size=size, replace=False))
                   for _ in range(args.draws if size < m else 1)]
        randoms = [mask(rng.choice(n, size=size, replace=False)) for _ in range(args.draws)]
        if f"oracle_{name}" not in result:
            result[f"oracle_{name}"] = [test_errors(config, splits, drop) for drop in oracles]
            result[f"random_{name}"] = [test_errors(config, splits, drop) for drop in randoms]
    if "loss_all" not in result:
        losses = round1_losses(config, splits)
        result["loss_auroc"] = float(roc_auc_score(flipped, losses))
        highest = mask(np.argsort(-losses, kind="stable")[:m])
        result["loss_all_flipped"] = int((highest & flipped).sum())
        result["loss_all"] = [test_errors(config, splits, highest)]
    if "cleanlab" not in result:
        from cleanlab.filter import find_label_issues

        probabilities = out_of_fold_probabilities(lambda: initial_network(config, splits, 1), splits.train,
                                                  splits.train.labels,
                                                  config.train_config(1), 4, config.seed)
        flagged = np.asarray(find_label_issues(splits.train.labels, probabilities), dtype=bool)
        result["cleanlab_flagged"] = int(flagged.sum())
        result["cleanlab_flipped"] = int((flagged & flipped).sum())
        result["cleanlab"] = [test_errors(config, splits, flagged)]
        draws = [mask(rng.choice(n, size=int(flagged.sum()), replace=False)) for _ in range(args.draws)]
        result["random_cleanlab"] = [test_errors(config, splits, drop) for drop in draws]
    result["seconds"] = result.get("seconds", 0.0) + time.perf_counter() - started
    return result


def report(results: list) -> None:
    first = results[0]
    print(f"test errors in images out of {first['test']} (round-2 recipe, {first['train']} training samples, "
          f"{first['flipped']} flipped in seed {first['seed']})")
    print("seed | full (per shuffle) | oracle_k (per draw) | random_k (per draw) | oracle_all | random_all (per draw) "
          "| loss_all | cleanlab | random_cleanlab (per draw)")
    for r in results:
        print(f"{r['seed']:>4} | {r['full']} | {r['oracle_k']} | {r['random_k']} | {r['oracle_all']} | "
              f"{r['random_all']} | {r['loss_all']} | {r['cleanlab']} | {r['random_cleanlab']}")
    print(f"full set, batch order alone: within-seed sd {np.mean([np.std(r['full'], ddof=1) for r in results]):.2f} "
          f"images (mean over seeds), range up to {max(np.ptp(r['full']) for r in results)}")
    losses = [r["loss_auroc"] for r in results]
    print(f"round-1 training loss finds the flipped labels at AUROC {min(losses):.3f}-{max(losses):.3f}; its "
          f"top {first['flipped']} hold {first['loss_all_flipped']} of them in seed {first['seed']}")
    flagged = [r["cleanlab_flagged"] for r in results]
    print(f"cleanlab (4-fold) flags {min(flagged)}-{max(flagged)} samples, of which "
          f"{sum(r['cleanlab_flipped'] for r in results) / sum(flagged):.0%} are flipped")
    for arm, control in (("oracle_k", "random_k"), ("oracle_all", "random_all"), ("loss_all", "random_all"),
                         ("cleanlab", "random_cleanlab")):
        wins = ties = pairs = 0
        for r in results:
            chosen, randoms = np.array(r[arm])[:, None], np.array(r[control])[None, :]
            wins += int((chosen < randoms).sum())
            ties += int((chosen == randoms).sum())
            pairs += chosen.size * randoms.size
        p = (wins + ties / 2) / pairs
        at_least_4 = p ** 5 + 5 * p ** 4 * (1 - p)
        chosen = np.array([np.mean(r[arm]) for r in results])
        randoms = np.array([np.mean(r[control]) for r in results])
        full = np.array([np.mean(r["full"]) for r in results])
        versus_random = paired_difference(chosen, randoms)
        versus_full = paired_difference(chosen, full)
        print(f"{arm}: fewer errors than {control} in {wins} of {pairs} pairs, tied in {ties} (p = {p:.2f}; "
              f"chance of fewer errors in at least 4 of 5 seeds {at_least_4:.2f}); per-seed means: "
              f"{arm} - {control} {versus_random['mean']:+.2f} images [{versus_random['low']:+.2f}, "
              f"{versus_random['high']:+.2f}], lower in {versus_random['lower']} of {len(results)} seeds; "
              f"{arm} - full {versus_full['mean']:+.2f} [{versus_full['low']:+.2f}, {versus_full['high']:+.2f}]")


def main():
    args = parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        path = output / f"seed-{seed}-noise-{args.noise:g}-k-{args.k}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        if not ARMS <= set(result):
            result = measure_seed(seed, args, result)
            path.write_text(json.dumps(result))
            print(f"seed {seed} done in {result['seconds']:.0f} s", flush=True)
        results.append(result)
    report(results)


if __name__ == "__main__":
    main()
