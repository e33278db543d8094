import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from diffood.metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, rates_at_threshold, roc_curve, threshold_at_tpr


def test_auroc_is_one_on_separable_and_half_on_identical_scores():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(0, 1, 500)
    assert auroc(id_scores, id_scores + 100) == 1.0
    assert auroc(id_scores + 100, id_scores) == 0.0
    assert auroc(id_scores, id_scores) == 0.5


def test_fpr95_follows_the_id_threshold():
    id_scores = np.arange(100.0)
    assert fpr_at_95_tpr(id_scores, id_scores + 1000) == 0.0
    assert fpr_at_95_tpr(id_scores, id_scores - 1000) == 1.0
    # identical distributions: accepting 95 % of ID accepts 95 % of OOD
    assert fpr_at_95_tpr(id_scores, id_scores) == pytest.approx(0.95, abs=0.011)


def test_roc_curve_and_threshold_rates():
    fpr, tpr, _ = roc_curve([0, 1, 2], [3, 4, 5])
    assert fpr[-1] == 1 and tpr[-1] == 1
    thr = threshold_at_tpr(np.arange(101.0), 0.95)
    assert thr == 95.0
    assert rates_at_threshold(np.arange(101.0), [200.0, 50.0], thr) == (pytest.approx(96 / 101), 0.5)


def test_empty_input_is_refused():
    with pytest.raises(ValueError):
        auroc([], [1.0])


def test_aupr_in_and_out_are_average_precision_with_each_class_positive():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(0, 1, 300), rng.normal(1, 1, 100)  # unbalanced: the two areas differ
    labels = np.r_[np.zeros(300), np.ones(100)]
    scores = np.r_[id_scores, ood_scores]
    assert aupr_out(id_scores, ood_scores) == pytest.approx(average_precision_score(labels, scores))
    assert aupr_in(id_scores, ood_scores) == pytest.approx(average_precision_score(1 - labels, -scores))
    assert aupr_in(id_scores, ood_scores) > 0.8 > 0.6 > aupr_out(id_scores, ood_scores) > 0.4
    assert aupr_out(id_scores, id_scores + 100) == aupr_in(id_scores, id_scores + 100) == 1.0
