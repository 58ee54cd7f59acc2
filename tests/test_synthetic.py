"""The planted-signal generators: the latent signal is what the docstrings say, computed from the bars
alone (so it is known at the bar's close), and the nonlinear ones hide from every single lag."""

import numpy as np
import pytest

from datafeeds import synthetic


def _returns(df):
    return np.diff(np.log(df["close"].to_numpy()), prepend=np.log(100.0))  # the first bar opens at 100


def _latent_from_signs(s, k):
    """sum over a < k of (k - a) * s[t - a], written out."""
    out = np.zeros(len(s))
    for t in range(len(s)):
        out[t] = sum((k - a) * s[t - a] for a in range(k) if t - a >= 0)
    return out


def test_sign_interaction_latent_is_the_product_of_two_lagged_signs():
    df, latent = synthetic.sign_interaction(600, seed=3, lags=(0, 2), mu=0.5, k=4)
    s = _signs("sign_interaction", np.sign(_returns(df)))
    np.testing.assert_allclose(latent, _latent_from_signs(s, 4), atol=1e-9)


def test_motif_latent_follows_the_pattern_its_mirror_and_their_flips():
    df, latent = synthetic.motif(800, seed=5, pattern="+-+", mu=0.8, k=3)
    s = _signs("motif", np.sign(_returns(df)))
    np.testing.assert_allclose(latent, _latent_from_signs(s, 3), atol=1e-9)


def _signs(gen, r):
    """The sign each bar sets, recomputed from the return signs ``r`` (sign_interaction with lags (0, 2),
    motif with pattern "+-+")."""
    s = np.zeros(len(r))
    if gen == "sign_interaction":
        s[2:] = r[2:] * r[:-2]
    else:
        for t in range(2, len(r)):
            s[t] = {(1, -1, 1): 1, (-1, 1, -1): 1, (1, -1, -1): -1, (-1, 1, 1): -1}.get(tuple(r[t - 2:t + 1]), 0)
    return s


def test_volume_momentum_latent_and_volume_regimes():
    df, latent = synthetic.volume_momentum(3000, seed=7, mu=0.5, k=2, heavy=1.0, stay=0.95)
    r = _returns(df)
    heavy = np.log(df["volume"].to_numpy()) > 10.5  # regimes at log volume 10 and 11, noise sd 0.3
    assert 0.2 < heavy.mean() < 0.8
    # the sign each bar sets: its return's on heavy volume, the opposite on light volume
    s = np.sign(r) * np.where(heavy, 1.0, -1.0)
    agree = np.mean(_latent_from_signs(s, 2) == latent)
    assert agree > 0.85  # the volume threshold misreads a few bars' regime; nothing else differs


@pytest.mark.parametrize("gen,kw", [
    ("sign_interaction", {"lags": (0, 2), "mu": 0.5, "k": 10}),
    ("motif", {"pattern": "+-+", "mu": 1.0, "k": 10}),
])
def test_nonlinear_signals_hide_from_each_single_bar(gen, kw):
    """The sign each bar sets is uncorrelated with any one recent return's sign (a linear model on one
    lag has nothing to read from it), yet it is the latent signal's newest term."""
    df, latent = getattr(synthetic, gen)(40_000, seed=11, **kw)
    r = np.sign(_returns(df))
    s = _signs(gen, r)
    np.testing.assert_allclose(latent, _latent_from_signs(s, kw["k"]), atol=1e-9)
    for lag in range(3):  # the bars the sign is made of
        c = np.corrcoef(s[lag:], r[: len(r) - lag])[0, 1]
        assert abs(c) < 0.03, (lag, c)


def test_generators_refuse_bad_parameters():
    with pytest.raises(ValueError, match="lags"):
        synthetic.sign_interaction(100, lags=(1, 1))
    with pytest.raises(ValueError, match="mu"):
        synthetic.volume_momentum(100, mu=0.0)
    with pytest.raises(ValueError, match="pattern"):
        synthetic.motif(100, pattern="+x")
    with pytest.raises(ValueError, match="k must"):
        synthetic.motif(100, k=0)


def test_regime_momentum_pays_the_momentum_rule_on_heavy_volume_only():
    """Each bar drifts mu * sigma along the momentum rule's side of the bar before on heavy volume, and
    revert * mu * sigma against it on light volume; the latent regime is the volume's."""
    from labeling import parse_primary, primary_side

    df, latent = synthetic.regime_momentum(40_000, seed=4, lookback=10, mu=0.25, revert=0.5)
    side = primary_side(df, parse_primary("momentum:lookback=10")).reindex(df.index, fill_value=0).to_numpy()
    r = _returns(df)
    edge = r[1:] * side[:-1]  # bar t's return on the bet the rule took at t - 1
    loud = latent[1:] == 1.0
    assert set(np.unique(latent)) == {0.0, 1.0} and 0.3 < loud.mean() < 0.7
    assert side[:10].tolist() == [0] * 10 and (side[11:] != 0).all()
    np.testing.assert_allclose(edge[loud].mean(), 0.25 * 0.01, atol=3e-4)
    np.testing.assert_allclose(edge[~loud].mean(), -0.5 * 0.25 * 0.01, atol=3e-4)
    log_volume = np.log(df["volume"].to_numpy())
    np.testing.assert_allclose(log_volume[latent == 1.0].mean() - log_volume[latent == 0.0].mean(), 0.6, atol=0.02)
    with pytest.raises(ValueError, match="revert"):
        synthetic.regime_momentum(100, revert=-1.0)
    with pytest.raises(ValueError, match="lookback"):
        synthetic.regime_momentum(100, lookback=0)
