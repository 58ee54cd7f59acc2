"""Probability of Backtest Overfitting: a hand-worked case, noise (~0.5) and a dominant trial (~0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.overfitting import probability_of_backtest_overfitting as pbo


def test_two_blocks_by_hand():
    # 4 trials, 2 periods per block; per-block Sharpe (mean / std, ddof=1), worked out by hand:
    #             block A                    block B
    # trial 0  [.01, .03]  SR  1.414      [-.01, .01]  SR  0
    # trial 1  [.00, .02]  SR  0.707      [ .02, .04]  SR  2.121
    # trial 2  [-.02, .00] SR -0.707      [.005, .015] SR  1.414
    # trial 3  [-.03, -.01] SR -1.414     [-.02, .00]  SR -0.707
    # A in-sample: trial 0 is best; out of sample it ranks 2nd of 4 from the bottom: w = 2/5, logit < 0
    # B in-sample: trial 1 is best; out of sample it ranks 3rd of 4: w = 3/5, logit > 0  -> PBO = 1/2
    r = np.array([[.01, .00, -.02, -.03],
                  [.03, .02, .00, -.01],
                  [-.01, .02, .005, -.02],
                  [.01, .04, .015, .00]])
    out = pbo(r, n_blocks=2)
    assert out["pbo"] == 0.5 and out["n_splits"] == 2
    assert out["logit_median"] == pytest.approx(0.0, abs=1e-12)  # ln(0.4/0.6) and ln(0.6/0.4)


def test_pure_noise_trials_overfit_about_half_the_time():
    values = [pbo(np.random.default_rng(seed).normal(0, 0.01, (1000, 40)), n_blocks=10)["pbo"] for seed in range(6)]
    assert 0.35 < float(np.mean(values)) < 0.65
    assert all(0.1 < v < 0.9 for v in values)


def test_a_truly_better_trial_is_not_overfit():
    r = np.random.default_rng(0).normal(0, 0.01, (1000, 40))
    r[:, 7] += 0.004  # Sharpe 0.4 a period against 0 for the rest
    out = pbo(r, n_blocks=16)
    assert out["pbo"] < 0.02 and out["n_splits"] == math.comb(16, 8)


@pytest.mark.parametrize("args, needle", [
    ((np.zeros((40, 1)),), ">= 2 trials"),
    ((np.full((40, 3), np.nan),), "NaN"),
    ((np.zeros((40, 3)), 3), "even integer"),
    ((np.zeros((10, 3)), 8), "too few"),
])
def test_bad_input_is_refused_with_the_reason(args, needle):
    with pytest.raises(ValueError, match=needle):
        pbo(*args)


def test_a_fold_whose_trials_all_returned_the_same_has_no_pbo():
    from types import SimpleNamespace

    from engine.walkforward.report import fold_pbo

    flat = [SimpleNamespace(user_attrs={"val_returns": [0.0] * 100}) for _ in range(3)]
    assert fold_pbo(flat) == {"pbo": None, "why": "every completed trial has the same validation returns"}
    rng = np.random.default_rng(1)
    varied = [SimpleNamespace(user_attrs={"val_returns": rng.normal(0, 0.01, 100).tolist()}) for _ in range(3)]
    assert 0.0 <= fold_pbo(varied)["pbo"] <= 1.0 and fold_pbo(varied)["n_blocks"] == 10
