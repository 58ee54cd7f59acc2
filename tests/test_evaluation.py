"""agents.evaluation: the adversarial AUC on cases with known answers, and where the threshold comes from."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from agents.config import TrainConfig
from agents.evaluation import adversarial_auc, evaluate
from conftest import TINY


def test_adversarial_auc_is_one_half_for_one_distribution_and_one_for_two_apart():
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    assert abs(adversarial_auc(train, val) - 0.5) < 0.04  # the same distribution: no classifier can tell
    assert adversarial_auc(train, val + 10.0) > 0.999  # ten standard deviations apart: every row tells


def _probabilities(model, prep, which):
    with torch.no_grad():
        z = torch.cat([model(xb) for xb, _ in prep.dataset(which, TINY["seq_len"]).iter_batches(256)])
    return torch.sigmoid(z.double()).numpy()


def test_the_threshold_comes_from_training_predictions_only(tiny_agent):
    _, result = tiny_agent
    prep, model, m = result.prep, result.model, result.card["metrics"]
    p_tr, y_tr = _probabilities(model, prep, "train"), prep.labels("train")
    # on the training windows the agent signals (p >= threshold) as often as positives occur there
    assert abs(np.mean(p_tr >= m["threshold"]) - np.mean(y_tr)) <= 1.5 / len(p_tr)
    # scramble everything validation holds (its feature rows, its labels): the threshold does not move
    rng = np.random.default_rng(1)
    first_val = int(prep.val_ends.min())  # no training window reaches this row
    x, y = prep.x.copy(), prep.y.copy()
    x[first_val:] = rng.normal(size=x[first_val:].shape).astype(np.float32)
    y[prep.val_ends] = 1.0 - y[prep.val_ends]
    scrambled = evaluate(TrainConfig(**TINY), dataclasses.replace(prep, x=x, y=y), model, 1, [])
    assert scrambled["threshold"] == m["threshold"]
    assert scrambled["val_auc"] != m["val_auc"]  # the scrambling reached validation
