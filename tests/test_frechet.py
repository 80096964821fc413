"""The Frechet distance against closed forms and scipy, and its stability on near-singular covariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from imm.metrics import feature_statistics, frechet_distance


def test_diagonal_gaussians_have_the_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    expected = 1 + 4 + 0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # ||dmu||^2 + sum (sqrt a - sqrt b)^2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_and_identity():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    s1, s2 = q @ np.diag([1.0, 2, 3, 4, 5]) @ q.T, q @ np.diag([4.0, 2, 1, 9, 5]) @ q.T
    expected = np.sum((np.sqrt([1.0, 2, 3, 4, 5]) - np.sqrt([4.0, 2, 1, 9, 5])) ** 2)
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(np.ones(5), s1, np.ones(5), s1) == pytest.approx(0.0, abs=1e-10)


def test_matches_scipy_sqrtm_on_random_features():
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(400, 16)), 0.5 + 1.3 * rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) / 4
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_near_singular_covariances_stay_finite_and_non_negative():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))  # rank <= 11 of 64: singular
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(mu1, s1, mu2[:3], s2)
