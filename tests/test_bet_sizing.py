"""Bet sizing (labeling.bet_sizing, AFML ch. 10): the formula by hand, its symmetries, discretisation, and the
average of the bets open at each bar."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from labeling import average_active, bet_size

IDX = pd.date_range("2024-01-01", periods=6, freq="D")


def test_sizes_by_hand():
    # p = 0.6: z = 0.1 / sqrt(0.24) = 0.204124, Phi(z) = 0.580872, size = 2 Phi - 1 = 0.161744
    # p = 0.75: z = 0.25 / sqrt(0.1875) = 0.577350, Phi = 0.718149, size 0.436297
    prob = pd.Series([0.5, 0.6, 0.75, 0.4, 1.0, 0.0], index=IDX)
    size = bet_size(prob)
    np.testing.assert_allclose(size, [0.0, 0.161744, 0.436297, -0.161744, 1.0, -1.0], atol=1e-6)
    assert size.index.equals(IDX) and size.name == "size"


def test_the_formula_is_snippet_10_1_for_two_outcomes():
    p = np.linspace(0.01, 0.99, 99)
    z = (p - 0.5) / np.sqrt(p * (1 - p))
    np.testing.assert_allclose(bet_size(pd.Series(p)), 2 * norm.cdf(z) - 1, rtol=0, atol=1e-12)


def test_a_short_is_the_mirror_and_a_side_series_is_per_bet():
    prob = pd.Series([0.6, 0.7, np.nan], index=IDX[:3])
    np.testing.assert_allclose(bet_size(prob, -1), -bet_size(prob))
    mixed = bet_size(prob, pd.Series([1, -1, 1], index=IDX[:3]))
    assert mixed.iloc[0] > 0 > mixed.iloc[1] and math.isnan(mixed.iloc[2])


def test_discretised_to_the_step():
    prob = pd.Series([0.6, 0.75, 0.52, 0.99], index=IDX[:4])
    # 0.1617 -> 0.2, 0.4363 -> 0.4, 0.04 -> 0.0, 0.99: 0.999... -> 1.0
    np.testing.assert_allclose(bet_size(prob, step=0.2), [0.2, 0.4, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(bet_size(prob, step=0.1), [0.2, 0.4, 0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prob=pd.Series([0.5, 1.2], index=IDX[:2])), "prob at 2024-01-02 00:00:00 is 1.2"),
    (dict(prob=[0.5]), "pandas Series"),
    (dict(prob=pd.Series([0.5], index=IDX[:1]), side=0), "side at 2024-01-01 00:00:00 is 0"),
    (dict(prob=pd.Series([0.5], index=IDX[:1]), step=1.0), r"step must be in \[0, 1\)"),
])
def test_bad_input_is_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bet_size(**kwargs)


def test_the_bets_open_at_each_bar_are_averaged():
    # bet a: bars 0..2 (exit at 3) size 0.5; bet b: bars 1..1 (exit at 2) size -0.25; bet c: bars 4.. (exit at 5) 1.0
    sizes = pd.Series([0.5, -0.25, 1.0, np.nan], index=IDX[[0, 1, 4, 2]])
    t1 = pd.Series(IDX[[3, 2, 5, 5]], index=sizes.index)
    out = average_active(sizes, t1, IDX)
    np.testing.assert_allclose(out, [0.5, 0.125, 0.5, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="before it starts"):
        average_active(pd.Series([0.5], index=IDX[2:3]), pd.Series([IDX[1]], index=IDX[2:3]), IDX)
    with pytest.raises(ValueError, match="not a bar of the index"):
        average_active(sizes.iloc[:1], pd.Series([pd.Timestamp("2030-01-01")], index=IDX[:1]), IDX)
