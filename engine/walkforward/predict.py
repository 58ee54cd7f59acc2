"""A torch model's predictions over bar positions: logits of labelled windows, probabilities, whole windows."""

from __future__ import annotations

import numpy as np
import torch

from agents import LazySequenceDataset


def logits(model, x: np.ndarray, seq_len: int, ends: np.ndarray) -> np.ndarray:
    """The model's logit for the window of ``seq_len`` rows of ``x`` ending at each of ``ends``."""
    ds = LazySequenceDataset(x, np.zeros(len(x), dtype=np.float32), seq_len, index=ends)
    out = []
    model.eval()
    with torch.no_grad():
        for xb, _ in ds.iter_batches(1024):
            out.append(model(xb).float())
    return torch.cat(out).numpy().astype(np.float64) if out else np.array([], dtype=np.float64)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Probabilities from logits (tanh form: no overflow warnings)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))
