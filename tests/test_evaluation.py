"""agents.artifact.evaluation: the adversarial AUC on cases with known answers, and where the threshold comes from."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from agents.training.config import TrainConfig
from agents.artifact.evaluation import adversarial_auc, evaluate
from conftest import TINY


def test_adversarial_auc_is_one_half_for_one_distribution_and_one_for_two_apart():
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    assert abs(adversarial_auc(train, val) - 0.5) < 0.04  # the same distribution: no classifier can tell
    assert adversarial_auc(train, val + 10.0) > 0.999  # ten standard deviations apart: every row tells


def test_adversarial_auc_bounds_openmp_threads_to_the_usable_cpus(monkeypatch):
    # on a busy machine a thread per host core only waits (111 s instead of 10 s measured)
    import threadpoolctl
    from types import SimpleNamespace

    import agents.resources.hardware as hardware

    seen, real = [], threadpoolctl.threadpool_limits

    def spy(limits=None, user_api=None):
        seen.append((limits, user_api))
        return real(limits=limits, user_api=user_api)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", spy)
    monkeypatch.setattr(hardware, "detect", lambda: SimpleNamespace(effective_cpus=1))
    rng = np.random.default_rng(1)
    assert adversarial_auc(rng.normal(size=(500, 3)), rng.normal(size=(500, 3)) + 10.0) > 0.99
    assert seen == [(1, "openmp")]


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


def test_the_gbm_baseline_gets_the_agents_rows_labels_and_sample_weights(tiny_agent, monkeypatch):
    from agents.artifact import evaluation

    _, result = tiny_agent
    prep, cfg = result.prep, TrainConfig(**TINY)
    seen = {}

    def record(x_train, y_train, x_val, y_val, agent_val_score, **kw):
        seen.update(x=x_train, y=y_train, val=np.concatenate(list(x_val)), y_val=y_val, **kw)
        return {}

    monkeypatch.setattr(evaluation, "gbm_baseline", record)
    y_tr, y_va = prep.labels("train"), prep.labels("val")
    evaluation.gbm_baseline_of(cfg, prep, y_tr, y_va, np.zeros(len(y_va)))
    # every training window (fewer than the cap), in time order; the last 16 bars of each
    np.testing.assert_array_equal(seen["x"], prep.last_windows("train", 16))
    np.testing.assert_array_equal(seen["y"], y_tr)
    np.testing.assert_array_equal(seen["val"], prep.last_windows("val", 16))
    assert seen["x"].shape == (len(y_tr), 16 * len(prep.names)) and seen["lags"] == 16
    assert seen["block"] == cfg.horizon and seen["seed"] == cfg.seed
    u = prep.weights("train")
    np.testing.assert_allclose(seen["weight"], u / u.mean())  # uniqueness, mean 1
    evaluation.gbm_baseline_of(dataclasses.replace(cfg, sample_weights="none"), prep, y_tr, y_va, np.zeros(len(y_va)))
    assert seen["weight"] is None

