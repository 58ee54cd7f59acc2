"""Shared fixtures: one tiny agent trained on a slice of real sp500 data, reused by the slow tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agents.training.config import TrainConfig
from agents.training.trainer import train

# Small enough to train in seconds on 2 cores, big enough to exercise every step.
TINY = dict(
    data="sp500", start="2009-01-01", end="2016-12-31", holdout=0.25, seq_len=16, d_model=16,
    n_heads=2, n_layers=1, epochs=2, patience=5, batch_size=64, horizon=10,
)


@pytest.fixture(scope="session")
def tiny_agent(tmp_path_factory):
    """A TrainResult (card, torch model, prepared data) plus the path of its exported ONNX file."""
    folder = tmp_path_factory.mktemp("agent")
    out = folder / "tiny.onnx"
    result = train(TrainConfig(**TINY), out, checkpoint_dir=folder / "ckpt", command="pytest tiny agent",
                   progress=False)
    return out, result


def flat_bars(n=20, overrides=None, base=100.0):
    """n flat daily bars (o=c=base, h/l=base+-0.2) with some bars replaced by (o, h, l, c)."""
    rows = [[base, base + 0.2, base - 0.2, base] for _ in range(n)]
    for i, ohlc in (overrides or {}).items():
        rows[i] = list(ohlc)
    df = pd.DataFrame(rows, columns=["open", "high", "low", "close"],
                      index=pd.bdate_range("2021-01-04", periods=n, name="datetime"))
    df["volume"] = 1000.0
    return df


def signal_at(n, at, p=0.9):
    """A probability series of length n: ``p`` at the bars ``at``, NaN (no signal) elsewhere."""
    s = np.full(n, np.nan)
    s[np.atleast_1d(at)] = p
    return s
