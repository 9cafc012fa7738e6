"""Experiment statistics, settings checks and plain-words verdicts on hand-made numbers."""

import math

import numpy as np
import pytest

from curator import experiment, statistics
from curator.config import RunConfig, parse_noise_pairs
from curator.experiment_summary import certainty_sentence

#: Student t 0.975 quantile with 2 degrees of freedom (tables: 4.303).
T_975_DF2 = 4.302652729749464


def test_summarize_one_value_has_no_std():
    summary = statistics.summarize([0.25])

    assert summary["mean"] == 0.25
    assert summary["std"] is None


def test_summarize_uses_sample_std():
    summary = statistics.summarize([0.1, 0.2, 0.6])

    # Mean 0.3; squared deviations 0.04, 0.01, 0.09 sum to 0.14, divided by n - 1 = 2.
    assert summary["mean"] == pytest.approx(0.3)
    assert summary["std"] == pytest.approx(math.sqrt(0.07))


def test_paired_difference_matches_hand_interval():
    values, reference = [0.10, 0.12, 0.07], [0.11, 0.15, 0.09]
    differences = [-0.01, -0.03, -0.02]
    half_width = T_975_DF2 * 0.01 / math.sqrt(3)

    paired = statistics.paired_difference(values, reference)

    assert paired["values"] == pytest.approx(differences)
    assert paired["mean"] == pytest.approx(-0.02)
    assert paired["std"] == pytest.approx(0.01)
    assert paired["low"] == pytest.approx(-0.02 - half_width)
    assert paired["high"] == pytest.approx(-0.02 + half_width)
    assert (paired["lower"], paired["higher"], paired["tied"]) == (3, 0, 0)


def test_one_seed_interval_is_undefined():
    paired = statistics.paired_difference([0.1], [0.2])

    assert paired["low"] is None and paired["high"] is None
    assert "undefined with one seed" in paired["note"]


def test_identical_differences_give_zero_width():
    paired = statistics.paired_difference([0.2, 0.3], [0.1, 0.2])

    assert paired["low"] == pytest.approx(0.1)
    assert paired["high"] == pytest.approx(0.1)


def test_paired_difference_rejects_unpaired_values():
    with pytest.raises(ValueError, match="one entry per seed"):
        statistics.paired_difference([0.1, 0.2], [0.1])


def test_found_vs_inspected_groups_ties():
    flipped = np.array([True, False, True, False, False])
    suspicion = np.array([0.9, 0.9, 0.5, 0.1, 0.0])

    inspected, found = statistics.found_vs_inspected(flipped, suspicion)

    # Tied pair first (2 of 5 read, 1 of 2 flipped), then 0.5, 0.1 and 0.0 one at a time.
    assert inspected.tolist() == pytest.approx([0.0, 0.4, 0.6, 0.8, 1.0])
    assert found.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])


def test_found_vs_inspected_needs_both_kinds():
    with pytest.raises(ValueError, match="--label-noise"):
        statistics.found_vs_inspected(np.zeros(4, dtype=bool), np.arange(4.0))


def test_detection_metrics_by_hand():
    flipped = np.array([True, True, False, False, False, False])
    suspicion = np.array([0.8, 0.3, 0.9, 0.2, 0.1, 0.0])
    flagged = np.array([True, False, True, False, False, False])

    metrics = statistics.detection_metrics(flipped, suspicion, flagged)

    # Pairs (flipped, clean) ranked right: 0.8 beats 3 of 4, 0.3 beats 3 of 4, so 6 of 8.
    assert metrics["auroc"] == pytest.approx(6 / 8)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 2)
    # Top 2 by suspicion: 0.9 (clean) and 0.8 (flipped).
    assert metrics["precision_at_flipped"] == pytest.approx(1 / 2)


def test_detection_metrics_with_nothing_flagged():
    metrics = statistics.detection_metrics(np.array([True, False]), np.array([1.0, 0.0]), np.zeros(2, dtype=bool))

    assert metrics["precision"] is None
    assert metrics["recall"] == 0.0


def test_mean_curve_interpolates_each_seed():
    curves = [{"inspected": [0.0, 1.0], "found": [0.0, 1.0]},
              {"inspected": [0.0, 0.5, 1.0], "found": [0.0, 1.0, 1.0]}]

    mean = statistics.mean_curve(curves, grid=np.array([0.0, 0.25, 0.5, 1.0]))

    assert mean["found"] == pytest.approx([0.0, (0.25 + 0.5) / 2, (0.5 + 1.0) / 2, 1.0])


def test_per_class_change_skips_empty_classes():
    after = [[{"class": 0, "error": 0.1}, {"class": 1, "error": float("nan")}],
             [{"class": 0, "error": 0.3}, {"class": 1, "error": 0.2}]]
    before = [[{"class": 0, "error": 0.2}, {"class": 1, "error": 0.1}],
              [{"class": 0, "error": 0.2}, {"class": 1, "error": 0.4}]]

    changes = statistics.per_class_change(after, before)

    assert changes == [{"class": 0, "change": pytest.approx(0.0), "n": 2},
                       {"class": 1, "change": pytest.approx(-0.2), "n": 1}]


def test_json_safe_replaces_nan():
    assert statistics.json_safe({"a": [1.0, float("nan")], "b": float("inf")}) == {"a": [1.0, None], "b": None}


def test_noise_pairs_parse_from_text_and_lists():
    assert parse_noise_pairs("3:5, 7:1") == [(3, 5), (7, 1)]
    assert parse_noise_pairs([[3, 5]]) == [(3, 5)]
    assert RunConfig(label_noise=0.1, noise_pairs="3:5,7:1").noise_pairs == [[3, 5], [7, 1]]


@pytest.mark.parametrize("text, message", [
    ("3-5", "must look like '3:5,7:1'"),
    ("3:3", "two different class indices"),
    ("3:5:7", "two different class indices"),
    ("3:5,3:7", "give each source class once"),
])
def test_noise_pairs_reject_invalid_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_noise_pairs(text)


@pytest.mark.parametrize("seeds, message", [([], "at least one seed"), ([1, 1], "repeat")])
def test_experiment_config_rejects_bad_seeds(seeds, message):
    with pytest.raises(ValueError, match=message):
        experiment.ExperimentConfig(seeds=seeds)


def test_experiment_config_names_extra_rule_arms():
    config = experiment.ExperimentConfig(seeds=[0], extra_rules={"top5": {"name": "top_fraction", "value": 0.05}})

    assert config.arms() == list(experiment.ARMS) + ["rule_top5"]
    assert config.arm_labels()["rule_top5"].startswith("drop the most unfavorable 5.0%")


def _paired(mean, low, high, lower=2, n=3):
    return {"mean": mean, "low": low, "high": high, "confidence": 0.95, "lower": lower, "n": n}


def test_certainty_sentence_for_each_case():
    below = certainty_sentence(_paired(-0.01, -0.02, -0.001), "compared with round 1")
    above = certainty_sentence(_paired(0.01, 0.001, 0.02), "compared with round 1")
    across = certainty_sentence(_paired(-0.01, -0.03, 0.01), "compared with round 1")
    single = certainty_sentence(_paired(-0.01, None, None, 1, 1), "compared with round 1")

    assert "real improvement" in below
    assert "real worsening" in above
    assert "includes zero" in across
    assert "single seed" in single
    assert certainty_sentence(None, "compared with round 1").startswith("There is no result yet")


def test_noise_pairs_flip_only_chosen_classes():
    from curator.pipeline import load_splits

    train = load_splits(RunConfig(label_noise=0.05, noise_pairs="3:5,7:1")).train
    flipped = train.true_labels != train.labels
    pairs = set(zip(train.true_labels[flipped].tolist(), train.labels[flipped].tolist()))

    assert flipped.sum() == round(0.05 * len(train.labels))
    assert pairs <= {(3, 5), (7, 1)}
