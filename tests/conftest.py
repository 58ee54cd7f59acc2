"""Shared fixtures: one tiny agent trained on a slice of real sp500 data, reused by the slow tests."""

from __future__ import annotations

import pytest

from agents.config import TrainConfig
from agents.train import train

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
    result = train(TrainConfig(**TINY), out, checkpoint_dir=folder / "ckpt", command="pytest tiny agent", progress=False)
    return out, result
