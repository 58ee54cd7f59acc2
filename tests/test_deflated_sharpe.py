"""Deflated Sharpe Ratio: the paper's worked example, hand-computed cases and input checks."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from engine.deflated_sharpe import (
    EULER_GAMMA,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    mean_within_group_variance,
    moments,
    probabilistic_sharpe_ratio,
    sharpe_ratio,
)


def test_paper_worked_example():
    # Bailey & Lopez de Prado (2014), numerical example: N=100 trials, V[SR]=1/2 (annualised),
    # SR=2.5 annualised, T=1250 daily returns, skew=-3, kurtosis=10 -> SR0=0.1132, DSR=0.9004 (daily)
    sr = 2.5 / math.sqrt(250)
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    assert probabilistic_sharpe_ratio(sr, sr0, 1250, -3.0, 10.0) == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_by_hand():
    # N=10, V=0.04: sqrt(V)=0.2; Phi^-1(0.9)=1.2815516, Phi^-1(1-1/(10e))=Phi^-1(0.9632121)=1.7897...
    z1 = NormalDist().inv_cdf(0.9)
    z2 = NormalDist().inv_cdf(1 - 1 / (10 * math.e))
    assert z1 == pytest.approx(1.2815516, abs=1e-6)
    expected = 0.2 * ((1 - EULER_GAMMA) * z1 + EULER_GAMMA * z2)
    assert expected_max_sharpe(10, 0.04) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2 * (0.4227843 * 1.2815516 + 0.5772157 * z2), rel=1e-6)


def test_no_selection_means_benchmark_zero():
    assert expected_max_sharpe(1, 0.3) == 0.0
    assert expected_max_sharpe(50, 0.0) == 0.0
    # more trials -> higher bar to clear
    assert expected_max_sharpe(2, 0.01) < expected_max_sharpe(10, 0.01) < expected_max_sharpe(1000, 0.01)


def test_psr_of_normal_returns_against_zero():
    # skew 0, kurt 3: denominator sqrt(1 + SR^2 / 2); SR=0.1, T=101 -> z = 0.1 * 10 / sqrt(1.005)
    z = 0.1 * 10 / math.sqrt(1.005)
    assert probabilistic_sharpe_ratio(0.1, 0.0, 101, 0.0, 3.0) == pytest.approx(NormalDist().cdf(z), rel=1e-12)
    assert probabilistic_sharpe_ratio(0.1, 0.1, 101, 0.0, 3.0) == pytest.approx(0.5)


def test_sharpe_and_moments_of_a_tiny_series():
    r = [0.01, -0.02, 0.03, 0.0]
    mean, std = 0.005, math.sqrt(((0.005) ** 2 + 0.025**2 + 0.025**2 + 0.005**2) / 3)
    assert sharpe_ratio(r) == pytest.approx(mean / std, rel=1e-12)
    # symmetric deviations (+-0.005, +-0.025) -> skew 0; kurtosis m4/m2^2 by hand
    m2 = (2 * 0.005**2 + 2 * 0.025**2) / 4
    m4 = (2 * 0.005**4 + 2 * 0.025**4) / 4
    skew, kurt = moments(r)
    assert skew == pytest.approx(0.0, abs=1e-12)
    assert kurt == pytest.approx(m4 / m2**2, rel=1e-12)
    assert sharpe_ratio([0.01, 0.01, 0.01]) is None


def test_deflated_sharpe_ratio_from_returns_by_the_formula_written_out():
    from statistics import NormalDist

    from scipy import stats

    rng = np.random.default_rng(0)
    r = rng.normal(0.001, 0.01, 500)
    trial_srs = [0.05, 0.1, -0.02, 0.08, None]  # None: a pruned trial, counted in N only
    out = deflated_sharpe_ratio(r, trial_srs, n_trials=5)
    # by hand: V from the four Sharpes, SR0 from N = 5, PSR with scipy's population skew and Pearson kurtosis
    var = float(np.var([0.05, 0.1, -0.02, 0.08], ddof=1))
    phi, g = NormalDist(), 0.5772156649015329
    sr0 = np.sqrt(var) * ((1 - g) * phi.inv_cdf(1 - 1 / 5) + g * phi.inv_cdf(1 - 1 / (5 * np.e)))
    sr = r.mean() / r.std(ddof=1)
    skew, kurt = stats.skew(r), stats.kurtosis(r, fisher=False)
    dsr = phi.cdf((sr - sr0) * np.sqrt(499) / np.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert out["var_trial_sharpe"] == pytest.approx(var, rel=1e-12)
    assert out["sr0"] == pytest.approx(sr0, rel=1e-12)
    assert out["dsr"] == pytest.approx(dsr, rel=1e-9)
    assert out["n_obs"] == 500 and out["n_trials"] == 5
    # a bigger search for the same result deflates it more
    assert deflated_sharpe_ratio(r, trial_srs, n_trials=500)["dsr"] < out["dsr"]


def test_within_fold_variance_ignores_the_spread_between_folds():
    # the reviewer's tiny run: two folds whose validation periods differ in level
    folds = [[0.046, 0.054], [-0.076, -0.102]]
    var, per_fold = mean_within_group_variance(folds)
    # (0.004^2 * 2) / 1 = 3.2e-5 and (0.013^2 * 2) / 1 = 3.38e-4
    assert per_fold == pytest.approx([3.2e-5, 3.38e-4], rel=1e-9)
    assert var == pytest.approx(1.85e-4, rel=1e-9)
    pooled = float(np.var([s for f in folds for s in f], ddof=1))
    assert pooled == pytest.approx(6.563e-3, rel=1e-3) and pooled > 30 * var
    # shifting one fold's level changes the pooled variance, never the within-fold one
    assert mean_within_group_variance([[s + 1.0 for s in folds[0]], folds[1]])[0] == pytest.approx(var, rel=1e-9)


def test_within_fold_variance_skips_folds_below_two_trials():
    var, per_fold = mean_within_group_variance([[0.1, 0.3], [0.5], [], [0.2, None, float("nan"), 0.4]])
    assert per_fold == [pytest.approx(0.02), None, None, pytest.approx(0.02)]
    assert var == pytest.approx(0.02)
    assert mean_within_group_variance([[0.1], [0.2]]) == (0.0, [None, None])  # no selection within any fold


def test_given_trial_variance_replaces_the_pooled_one():
    rng = np.random.default_rng(1)
    r = rng.normal(0.001, 0.01, 300)
    srs = [0.046, 0.054, -0.076, -0.102]
    out = deflated_sharpe_ratio(r, srs, n_trials=6, var_trial_sharpe=1.85e-4)
    assert out["var_trial_sharpe"] == 1.85e-4 and out["n_trials"] == 6
    assert out["sr0"] == pytest.approx(expected_max_sharpe(6, 1.85e-4))
    pooled = deflated_sharpe_ratio(r, srs, n_trials=6)
    assert pooled["sr0"] > out["sr0"] and pooled["dsr"] < out["dsr"]  # regime spread would over-deflate
    with pytest.raises(ValueError, match="var_trial_sharpe"):
        deflated_sharpe_ratio(r, srs, var_trial_sharpe=float("nan"))


def test_flat_returns_have_no_dsr():
    out = deflated_sharpe_ratio([0.0, 0.0, 0.0], [0.1, 0.2])
    assert out["dsr"] is None and out["sharpe"] is None


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: expected_max_sharpe(0, 0.1), "n_trials"),
        (lambda: expected_max_sharpe(3, -1.0), "var_sharpe"),
        (lambda: probabilistic_sharpe_ratio(0.1, 0.0, 1, 0.0, 3.0), "n_obs"),
        (lambda: probabilistic_sharpe_ratio(0.1, 0.0, 10, 0.0, 0.5), "kurtosis"),
        (lambda: sharpe_ratio([0.1, float("nan")]), "NaN"),
        (lambda: deflated_sharpe_ratio([0.01, 0.02, 0.0], [0.1, 0.2, 0.3], n_trials=2), "below"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
