"""An experiment's results, read back from the store: per-arm summaries, paired differences, detection.

Every error is labelled with its split. Paired differences and per-class changes use test error
only, because validation data chose the drop set of the validated rule. A paired difference is
``arm - reference`` per seed, so a negative mean means the arm had the lower test error.
"""

import json
from typing import Optional

import pandas as pd

from core.drop_rules import DropRule
from curator import statistics
from curator.experiment import REFERENCES, get_experiment
from curator.label_noise import RANKING_LABELS, RANKINGS
from curator.store import Store

#: Arms compared with ``random``: those of its size, and the two that drop nothing.
SAME_SIZE_AS_RANDOM = ("round1", "full", "dropout", "high_loss")


def arm_rows(store: Store, experiment_id: str) -> pd.DataFrame:
    """Return the stored arm results, one row per seed, arm and split, ordered by seed."""
    return store.query("SELECT * FROM experiment_arms WHERE experiment_id = ? ORDER BY seed, arm, split",
                       [experiment_id])


def ranking_rows(store: Store, experiment_id: str) -> pd.DataFrame:
    return store.query("SELECT * FROM experiment_rankings WHERE experiment_id = ? ORDER BY seed, ranking",
                       [experiment_id])


def _arm_summary(frame: pd.DataFrame) -> dict:
    """Summarise one arm over seeds; error keys name their split."""
    summary = {}
    for split in ("test", "validation"):
        rows = frame[frame["split"] == split]
        summary[f"{split}_error"] = statistics.summarize(rows["error"])
    rows = frame[frame["split"] == "test"]
    summary["n_dropped"] = statistics.summarize(rows["n_dropped"])
    flipped = rows["n_flipped_dropped"].dropna()
    summary["n_flipped_dropped"] = statistics.summarize(flipped) if len(flipped) else None
    summary["reused_from"] = sorted({value for value in rows["reused_from"] if isinstance(value, str)})
    return summary


def _paired(test: pd.DataFrame, arm: str, reference: str) -> Optional[dict]:
    """Paired test-error difference ``arm - reference`` over the seeds where both are stored."""
    table = test.pivot(index="seed", columns="arm", values="error")
    if arm not in table or reference not in table:
        return None
    both = table[[arm, reference]].dropna()
    if both.empty:
        return None
    return {"seeds": [int(seed) for seed in both.index],
            **statistics.paired_difference(both[arm].to_numpy(), both[reference].to_numpy())}


def _per_class(test: pd.DataFrame, arm: str) -> list:
    table = test.pivot(index="seed", columns="arm", values="per_class")
    if arm not in table or "round1" not in table:
        return []
    both = table[[arm, "round1"]].dropna()
    return statistics.per_class_change([json.loads(value) for value in both[arm]],
                                       [json.loads(value) for value in both["round1"]])


def _detection_summary(frame: pd.DataFrame) -> dict:
    summary = {}
    for ranking in [name for name in RANKINGS if name in set(frame["ranking"])]:
        rows = frame[frame["ranking"] == ranking]
        precision = rows["precision"].dropna()
        summary[ranking] = {
            "label": RANKING_LABELS[ranking], "split": "training labels",
            "auroc": statistics.summarize(rows["auroc"]),
            "precision": statistics.summarize(precision) if len(precision) else None,
            "recall": statistics.summarize(rows["recall"]),
            "precision_at_flipped": statistics.summarize(rows["precision_at_flipped"]),
            "n_flagged": statistics.summarize(rows["n_flagged"]),
            "n_flipped": statistics.summarize(rows["n_flipped"]),
            "curve": statistics.mean_curve([json.loads(curve) for curve in rows["curve"]])}
    return summary


def experiment_summary(store: Store, experiment_id: str) -> dict:
    """Return the experiment's settings, per-arm results, paired test differences and detection metrics.

    Every error is labelled with its split. Paired differences and per-class changes use test
    error only, because validation data chose the drop set of the validated rule. A negative
    ``mean`` of a paired difference means the arm had the lower test error.
    """
    record = get_experiment(store, experiment_id)
    config = record["config"]
    frame = arm_rows(store, experiment_id)
    test = frame[frame["split"] == "test"]
    arms_present = [arm for arm in config.arms() if arm in set(frame["arm"])]
    complete = sorted(seed for seed, rows in test.groupby("seed") if set(rows["arm"]) >= set(config.arms()))

    paired, per_class = {}, {}
    for arm in arms_present:
        references = [reference for reference in REFERENCES
                      if reference != arm and (reference != "random" or arm in SAME_SIZE_AS_RANDOM)]
        if arm.startswith("rule_") and f"random_{arm[5:]}" in arms_present:
            references.append(f"random_{arm[5:]}")
        paired[arm] = {f"vs_{reference}": _paired(test, arm, reference) for reference in references}
        if arm != "round1":
            per_class[arm] = _per_class(test, arm)

    rule = DropRule.from_dict(config.run["drop_rule"])
    summary = {
        "experiment_id": experiment_id, "status": record["status"], "error": record["error"],
        "created_at": str(record["created_at"]), "config": config.to_dict(), "drop_rule": rule.describe(),
        "seeds": config.seeds, "seeds_complete": complete,
        "arm_labels": {arm: config.arm_labels()[arm] for arm in arms_present},
        "arms": {arm: _arm_summary(frame[frame["arm"] == arm]) for arm in arms_present},
        "paired_test_error": paired, "per_class_test_error_change_vs_round1": per_class,
        "detection": _detection_summary(ranking_rows(store, experiment_id)),
        "confidence": statistics.CONFIDENCE,
        "notes": ["test error decides nothing: drop sets come from training and validation data only",
                  "validation error is shown for reference; the validated rule chose its drop set on it"]}
    return statistics.json_safe(summary)


def _format_share(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def summary_text(summary: dict) -> str:
    """Render an experiment summary as plain text for the command line."""
    lines = [f"experiment {summary['experiment_id']}: {summary['status']}, seeds {summary['seeds']} "
             f"({len(summary['seeds_complete'])} complete), rule: {summary['drop_rule']}", "",
             f"{'arm':<10} {'test error mean':>15} {'std':>8} {'validation error':>16} {'dropped':>8}"]
    for arm, values in summary["arms"].items():
        test, validation = values["test_error"], values["validation_error"]
        lines.append(f"{arm:<10} {_format_share(test['mean']):>15} {_format_share(test['std']):>8} "
                     f"{_format_share(validation['mean']):>16} {values['n_dropped']['mean'] or 0:>8.1f}")
    lines += ["", f"paired test-error differences (arm - reference, {summary['confidence']:.0%} t interval):"]
    for arm, references in summary["paired_test_error"].items():
        for name, paired in references.items():
            if paired is None:
                continue
            interval = (paired["note"] if paired["low"] is None
                        else f"[{paired['low']:+.2%}, {paired['high']:+.2%}]")
            lines.append(f"  {arm:<10} {name:<10} {paired['mean']:+.2%} {interval}, lower in "
                         f"{paired['lower']} of {paired['n']} seeds")
    if summary["detection"]:
        lines += ["", "finding flipped training labels (means over seeds):",
                  f"  {'ranking':<15} {'AUROC':>6} {'precision':>9} {'recall':>7} {'prec@flipped':>12}"]
        for name, values in summary["detection"].items():
            precision = values["precision"]["mean"] if values["precision"] else None
            lines.append(f"  {name:<15} {values['auroc']['mean']:>6.3f} {_format_share(precision):>9} "
                         f"{_format_share(values['recall']['mean']):>7} "
                         f"{_format_share(values['precision_at_flipped']['mean']):>12}")
    return "\n".join(lines)


def _points(value: float) -> str:
    """Format a difference of error shares as percentage points, e.g. ``-0.74 points``."""
    return f"{value * 100:+.2f} percentage points"


def certainty_sentence(paired: Optional[dict], what: str) -> str:
    """Return a plain-words sentence on whether a paired test-error difference exceeds seed noise."""
    if paired is None:
        return f"There is no result yet for {what}."
    if paired["low"] is None:
        return (f"{what.capitalize()}: {_points(paired['mean'])} in test error, from a single seed, so we cannot "
                f"yet tell a real change from chance. Run at least 2 seeds (5 is better).")
    interval = f"{_points(paired['low'])} to {_points(paired['high'])}"
    counts = f"lower in {paired['lower']} of {paired['n']} seeds"
    if paired["high"] < 0:
        return (f"{what.capitalize()}: test error changed by {_points(paired['mean'])} on average ({counts}). "
                f"We are fairly sure this is a real improvement: the {paired['confidence']:.0%} interval, "
                f"{interval}, lies entirely below zero.")
    if paired["low"] > 0:
        return (f"{what.capitalize()}: test error changed by {_points(paired['mean'])} on average ({counts}). "
                f"This is a real worsening: the {paired['confidence']:.0%} interval, {interval}, lies entirely "
                f"above zero.")
    return (f"{what.capitalize()}: test error changed by {_points(paired['mean'])} on average ({counts}), but the "
            f"{paired['confidence']:.0%} interval, {interval}, includes zero, so it cannot be distinguished from "
            f"the seed-to-seed variation.")


def plain_findings(summary: dict) -> dict:
    """Return the results page's sentences: ``changed``, ``sure_round1``, ``sure_random``, ``sure_full``, ``flipped``."""
    paired = summary["paired_test_error"].get("dropout") or {}
    dropout = summary["arms"].get("dropout")
    round1 = summary["arms"].get("round1")
    findings = {"changed": None, "flipped": None,
                "sure_round1": certainty_sentence(paired.get("vs_round1"), "compared with round 1"),
                "sure_random": certainty_sentence(paired.get("vs_random"),
                                                  "compared with dropping as many samples at random"),
                "sure_full": certainty_sentence(paired.get("vs_full"),
                                                "compared with retraining on every sample the same way")}
    if dropout and round1 and dropout["test_error"]["mean"] is not None:
        findings["changed"] = (
            f"Round 1 misclassified {round1['test_error']['mean']:.2%} of the test images on average. Retrained "
            f"without the dropped samples (about {dropout['n_dropped']['mean']:.0f} per seed), the model "
            f"misclassified {dropout['test_error']['mean']:.2%}. The test images took no part in choosing what to "
            f"drop.")
    if dropout and dropout["n_flipped_dropped"] and summary["detection"].get("influence"):
        flipped = summary["detection"]["influence"]["n_flipped"]["mean"]
        findings["flipped"] = (
            f"About {flipped:.0f} training labels per seed were deliberately made wrong. The drop set contained "
            f"{dropout['n_flipped_dropped']['mean']:.1f} of them on average.")
    return findings
