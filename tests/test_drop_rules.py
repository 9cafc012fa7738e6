"""Drop rules on hand-made score arrays, checked against values worked out by hand in each test."""

import math

import numpy as np
import pytest

from core.drop_rules import (DropRule, cap_per_class, choose_validated_k, cross_fitted_gain, permutation_p_value,
                             select_drop, top_k_mask)

SCORES = np.array([0.5, -0.2, 0.9, 0.1, -0.7, 0.3, 0.0, 0.8])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_paper_rule_drops_exactly_the_positives():
    mask = select_drop(DropRule("paper", None, class_cap=1.0), SCORES, LABELS)

    assert mask.tolist() == [True, False, True, True, False, True, False, True]


def test_paper_rule_never_drops_zero_scores():
    mask = select_drop(DropRule("paper", None, class_cap=1.0), np.zeros(4), np.zeros(4))

    assert not mask.any()


def test_threshold_rule_drops_scores_above_value():
    mask = select_drop(DropRule("threshold", 0.3, class_cap=1.0), SCORES, LABELS)

    assert np.flatnonzero(mask).tolist() == [0, 2, 7]


def test_top_k_drops_the_k_highest():
    mask = select_drop(DropRule("top_k", 3, class_cap=1.0), SCORES, LABELS)

    assert np.flatnonzero(mask).tolist() == [0, 2, 7]


def test_top_k_never_drops_a_non_positive_score():
    mask = top_k_mask(SCORES, 8)

    assert np.flatnonzero(mask).tolist() == [0, 2, 3, 5, 7]


def test_top_fraction_rounds_share_times_n():
    # round(0.3 * 8) = 2: the two highest scores, 0.9 (index 2) and 0.8 (index 7).
    mask = select_drop(DropRule("top_fraction", 0.3, class_cap=1.0), SCORES, LABELS)

    assert np.flatnonzero(mask).tolist() == [2, 7]


def test_class_cap_keeps_top_floor_cap_times_class_size():
    labels = np.array([0] * 6 + [1] * 3)
    scores = np.array([0.1, 0.6, 0.3, 0.9, 0.2, 0.4, 0.7, 0.5, 0.8])
    drop = np.ones(9, dtype=bool)

    capped = cap_per_class(drop, scores, labels, 0.5)

    # Class 0: floor(0.5 * 6) = 3 drops, its highest scores 0.9, 0.6, 0.4 (indices 3, 1, 5).
    # Class 1: floor(0.5 * 3) = 1 drop, its highest score 0.8 (index 8).
    assert np.flatnonzero(capped).tolist() == [1, 3, 5, 8]


def test_class_cap_only_chooses_among_drops():
    labels = np.zeros(4, dtype=int)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    drop = np.array([False, True, True, True])

    capped = cap_per_class(drop, scores, labels, 0.5)

    assert np.flatnonzero(capped).tolist() == [1, 2]


def test_class_cap_of_one_changes_nothing():
    drop = np.array([True, False, True, True])

    assert cap_per_class(drop, np.arange(4.0), np.zeros(4), 1.0).tolist() == drop.tolist()


def test_select_drop_applies_the_class_cap():
    # Paper rule drops 0, 2, 3 (class 0) and 5, 7 (class 1); a cap of 1/4 keeps one per class.
    mask = select_drop(DropRule("paper", None, class_cap=0.25), SCORES, LABELS)

    assert np.flatnonzero(mask).tolist() == [2, 7]


def _hand_curve(scores_a, scores_b):
    """Mean of the two cross-fitted gains, summed sample by sample."""
    n = len(scores_a)
    order_a = sorted(range(n), key=lambda i: -scores_a[i])
    order_b = sorted(range(n), key=lambda i: -scores_b[i])
    curve = []
    for k in range(n + 1):
        gain_ab = sum(scores_b[i] for i in order_a[:k])
        gain_ba = sum(scores_a[i] for i in order_b[:k])
        curve.append((gain_ab + gain_ba) / 2)
    return curve


def test_cross_fitted_gain_sums_check_half_down_ranking():
    rank = np.array([0.3, 0.9, -0.1, 0.5])
    check = np.array([1.0, 2.0, 4.0, 8.0])

    # Ranking order: 1, 3, 0, 2, so the running sums of check are 2, 10, 11, 15.
    assert cross_fitted_gain(rank, check).tolist() == [0.0, 2.0, 10.0, 11.0, 15.0]


def test_validated_rule_maximises_hand_computed_gain():
    scores_a = np.array([0.9, 0.4, -0.3, 0.7, 0.2, -0.8, 0.6, 0.1, -0.2, 0.3])
    scores_b = np.array([0.5, -0.6, 0.2, 0.8, -0.4, -0.1, 0.7, -0.9, 0.3, 0.1])
    curve = _hand_curve(scores_a, scores_b)
    limit = math.floor(0.5 * 10)
    expected_k = max(range(limit + 1), key=lambda k: curve[k])

    k, computed, p_value = choose_validated_k(scores_a, scores_b, 0.5)

    assert np.allclose(computed, curve)
    assert k == expected_k
    assert p_value is None


def test_validated_rule_drops_top_k_of_summed_scores():
    scores_a = np.array([0.9, 0.4, -0.3, 0.7, 0.2, -0.8, 0.6, 0.1, -0.2, 0.3])
    scores_b = np.array([0.5, -0.6, 0.2, 0.8, -0.4, -0.1, 0.7, -0.9, 0.3, 0.1])
    labels = np.zeros(10, dtype=int)
    curve = _hand_curve(scores_a, scores_b)
    k = max(range(6), key=lambda k: curve[k])
    total = scores_a + scores_b
    expected = sorted(i for i in sorted(range(10), key=lambda i: -total[i])[:k] if total[i] > 0)

    mask = select_drop(DropRule("validated", 0.5, class_cap=1.0), total, labels, scores_a, scores_b)

    assert k > 0
    assert np.flatnonzero(mask).tolist() == expected


def test_validated_rule_respects_max_fraction():
    scores = np.linspace(1.0, 0.1, 20)

    k, _, _ = choose_validated_k(scores, scores, 0.1)

    # Every sample raises the gain, so k is the limit, floor(0.1 * 20) = 2.
    assert k == 2


def test_validated_rule_drops_nothing_when_no_gain():
    scores_a = np.array([0.5, 0.4, 0.3, 0.2])
    scores_b = np.array([-0.5, -0.4, -0.3, -0.2])

    k, _, _ = choose_validated_k(scores_a, scores_b, 1.0)

    assert k == 0


def test_validated_rule_needs_both_halves():
    with pytest.raises(ValueError, match="influence_a and influence_b"):
        select_drop(DropRule("validated"), SCORES, LABELS)


def test_permutation_p_value_matches_hand_count():
    scores_a = np.array([0.9, 0.4, -0.3, 0.7, 0.2])
    scores_b = np.array([0.5, -0.6, 0.2, 0.8, -0.4])
    limit = 2
    observed = max(_hand_curve(scores_a, scores_b)[1:limit + 1])
    rng = np.random.default_rng(0)
    exceed = 0
    for _ in range(50):
        shuffled = scores_b[rng.permutation(5)]
        exceed += max(_hand_curve(scores_a, shuffled)[1:limit + 1]) >= observed

    p_value = permutation_p_value(scores_a, scores_b, limit, permutations=50, seed=0)

    assert p_value == pytest.approx((1 + exceed) / 51)


def test_permutation_test_keeps_a_strong_signal():
    rng = np.random.default_rng(1)
    signal = np.concatenate([np.full(20, 5.0), np.zeros(380)])
    scores_a = signal + rng.normal(0, 1, 400)
    scores_b = signal + rng.normal(0, 1, 400)

    k, _, p_value = choose_validated_k(scores_a, scores_b, 0.1, alpha=0.05)

    # The 20 signal samples raise the gain by about 5 each; the rest add noise around 0.
    assert p_value <= 1 / 201 + 1e-12
    assert k >= 20


def test_permutation_test_drops_nothing_on_pure_noise():
    # All-identical scores in one half: every ordering gives the same gain, so the p-value is 1.
    scores_a = np.random.default_rng(2).normal(0, 1, 100)
    scores_b = np.full(100, 0.5)

    k, _, p_value = choose_validated_k(scores_a, scores_b, 0.1, alpha=0.05)

    assert p_value == 1.0
    assert k == 0


def test_permutation_test_level_is_near_alpha_under_the_null():
    rejections = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        _, _, p_value = choose_validated_k(rng.normal(0, 1, 200), rng.normal(0, 1, 200), 0.1, alpha=0.05)
        rejections += p_value <= 0.05

    # Binomial(40, 0.05): at most 7 rejections has probability above 0.999.
    assert rejections <= 7


@pytest.mark.parametrize("name, value, message", [
    ("unknown", None, "unknown drop rule"),
    ("top_k", None, "needs a whole count"),
    ("top_k", float("inf"), "top_k needs a finite value, got inf"),
    ("threshold", float("nan"), "threshold needs a finite value, got nan"),
    ("threshold", float("inf"), "threshold needs a finite value, got inf"),
    ("top_k", 0.5, "needs a whole count >= 0, got 0.5; for a share of the data use top_fraction"),
    ("top_fraction", 1.5, "share in"),
    ("threshold", None, "threshold needs a value"),
])
def test_drop_rule_rejects_invalid_settings(name, value, message):
    with pytest.raises(ValueError, match=message):
        DropRule(name, value)


def test_drop_rule_rejects_invalid_alpha():
    with pytest.raises(ValueError, match="alpha"):
        DropRule("validated", 0.1, alpha=1.5)


def test_drop_rule_round_trips_through_dict():
    rule = DropRule("validated", 0.05, 0.25, alpha=0.05)

    assert DropRule.from_dict(rule.to_dict()) == rule


def test_drop_rule_default_is_tested_validated():
    rule = DropRule()

    assert (rule.name, rule.value, rule.alpha) == ("validated", 0.05, 0.05)
    assert DropRule.from_dict({"name": "validated", "value": 0.1, "class_cap": 0.5}).alpha == 0.05


def test_every_rule_has_a_description():
    for name, value in [("validated", 0.1), ("paper", 0.1), ("threshold", 0.1), ("top_k", 10), ("top_fraction", 0.1)]:
        assert DropRule(name, value).describe()
