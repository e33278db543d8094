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


def _normals(rng, n, shift, noise=0.0, shared=None):
    """ID ~ N(0, 1), OOD ~ N(shift, 1), each observed through `noise` (std) of its own."""
    return rng.normal(0, 1, n) + rng.normal(0, noise, n), rng.normal(shift, 1, n) + rng.normal(0, noise, n)


def test_the_auroc_interval_covers_the_true_value_and_a_narrow_one_does_not():
    from scipy.stats import norm

    from diffood.metrics import auroc_interval

    shift, truth = 1.5, norm.cdf(1.5 / np.sqrt(2))  # AUROC of N(shift, 1) against N(0, 1)
    rng = np.random.default_rng(0)
    covered = narrow = 0
    for _ in range(200):
        a, b = _normals(rng, 300, shift)
        lo, hi = auroc_interval(a, b)
        covered += lo <= truth <= hi
        point = auroc(a, b)  # an "interval" with no resampling: the point alone
        narrow += point - 1e-4 <= truth <= point + 1e-4
    assert covered / 200 >= 0.90 and narrow / 200 < 0.90


def test_the_bootstrap_intervals_cover_fpr95_and_aupr():
    from scipy.stats import norm

    from diffood.metrics import bootstrap_rates

    shift = 1.5
    truth = {"fpr95": norm.cdf(norm.ppf(0.95) - shift)}  # OOD accepted below ID's 95th percentile
    big = np.random.default_rng(99)
    a, b = _normals(big, 400_000, shift)
    truth["aupr_out"], truth["aupr_in"] = aupr_out(a, b), aupr_in(a, b)  # by a very large sample
    rng = np.random.default_rng(1)
    covered = {k: 0 for k in truth}
    for i in range(200):
        a, b = _normals(rng, 300, shift)
        found = bootstrap_rates(a, b, seed=i)
        for k in truth:
            covered[k] += found[k][0] <= truth[k] <= found[k][1]
    assert all(c / 200 >= 0.88 for c in covered.values()), covered
    one = bootstrap_rates(a, b, resamples=1, seed=0)  # no resampling to speak of: a point, not an interval
    assert one["fpr95"][1] - one["fpr95"][0] == 0


def test_the_bootstrap_reproduces_the_point_rates_on_the_sample_itself():
    """Counts of ones are the sample: the four rates computed from counts equal scikit-learn's, ties included."""
    from diffood.metrics import _rates_from_counts

    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 500).round(1), rng.normal(1, 1, 400).round(1)  # many ties
    values, group = np.unique(np.r_[a, b], return_inverse=True)
    neg = np.bincount(group[:500], minlength=len(values))[None].astype(float)
    pos = np.bincount(group[500:], minlength=len(values))[None].astype(float)
    got = {k: v[0] for k, v in _rates_from_counts(neg, pos).items()}
    want = {"auroc": auroc(a, b), "fpr95": fpr_at_95_tpr(a, b), "aupr_in": aupr_in(a, b), "aupr_out": aupr_out(a, b)}
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_a_paired_difference_of_a_score_with_itself_is_zero_and_covers_the_true_difference():
    from scipy.stats import norm

    from diffood.metrics import paired_auroc_difference

    rng = np.random.default_rng(3)
    a, b = _normals(rng, 300, 1.5)
    assert paired_auroc_difference(a, b, a, b) == (0.0, 0.0, 0.0)
    # two views of the same images, one noisier: AUROC = Φ(shift / sqrt(2 (1 + noise²)))
    shift, noise = 1.5, 1.0
    truth = norm.cdf(shift / np.sqrt(2)) - norm.cdf(shift / np.sqrt(2 * (1 + noise ** 2)))
    covered = 0
    for _ in range(200):
        ida, oda = rng.normal(0, 1, 300), rng.normal(shift, 1, 300)
        idb, odb = ida + rng.normal(0, noise, 300), oda + rng.normal(0, noise, 300)
        diff, lo, hi = paired_auroc_difference(ida, oda, idb, odb)
        covered += lo <= truth <= hi
        assert lo <= diff <= hi
    assert covered / 200 >= 0.90


def test_the_paired_mean_difference_over_sets_sharing_their_id_images_covers_the_truth():
    """The selection's interval: the mean over OOD sets of AUROC(a) - AUROC(b), the ID images shared. One set: the
    paired difference itself; a score against itself: [0, 0]; its interval covers the true mean difference in
    at least 90 % of 200 draws."""
    from scipy.stats import norm

    from diffood.metrics import paired_auroc_difference, paired_mean_auroc_difference

    rng = np.random.default_rng(5)
    ida, oda = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    idb, odb = ida + rng.normal(0, 1, 200), oda + rng.normal(0, 1, 150)
    assert paired_mean_auroc_difference(ida, [oda], idb, [odb]) == pytest.approx(paired_auroc_difference(ida, oda, idb, odb))
    assert paired_mean_auroc_difference(ida, [oda, odb], ida, [oda, odb]) == (0.0, 0.0, 0.0)
    shifts, noise = (1.0, 2.0), 1.0
    truth = np.mean([norm.cdf(s / np.sqrt(2)) - norm.cdf(s / np.sqrt(2 * (1 + noise ** 2))) for s in shifts])
    covered = 0
    for _ in range(200):
        ida = rng.normal(0, 1, 300)
        idb = ida + rng.normal(0, noise, 300)
        oods_a = [rng.normal(s, 1, 300) for s in shifts]
        oods_b = [o + rng.normal(0, noise, 300) for o in oods_a]
        diff, lo, hi = paired_mean_auroc_difference(ida, oods_a, idb, oods_b)
        covered += lo <= truth <= hi
        assert lo <= diff <= hi
    assert covered / 200 >= 0.90


def test_intervals_are_remembered_for_the_same_scores_and_only_for_them():
    """A page redrawn while other t land asks for the same scores' intervals again: the bootstrap is not rerun;
    other scores (or another seed) are not answered from memory."""
    from diffood.metrics import _intervals, intervals

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.normal(1.0, size=300)
    first = intervals(a, b)
    hits = _intervals.cache_info().hits
    assert intervals(a.copy(), b.copy()) == first and _intervals.cache_info().hits > hits
    shifted = intervals(a, b + 1.0)
    assert shifted["auroc"][0] > first["auroc"][1] and shifted != first
    assert intervals(a, b, seed=1)["fpr95"] != first["fpr95"]
