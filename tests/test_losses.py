import math

import numpy as np
import pytest
import torch

from agents.model.losses import FocalLoss, constant_prediction_loss, focal_loss

LOGITS = [-3.0, -0.5, 0.0, 0.7, 2.5, 4.0]
TARGETS = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def _numpy_focal(logits, targets, alpha, gamma):
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = 1.0 if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * np.log(p_t)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 2.0), (0.75, 0.5), (0.4, 0.0), (None, 5.0)])
def test_matches_hand_formula(alpha, gamma):
    want = _numpy_focal(LOGITS, TARGETS, alpha, gamma)
    got = FocalLoss(alpha, gamma, reduction="none")(torch.tensor(LOGITS), torch.tensor(TARGETS))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def test_single_value_by_hand():
    # z = 0, y = 1: p_t = 0.5, loss = 0.25 * 0.5**2 * ln 2
    got = focal_loss(torch.tensor([0.0]), torch.tensor([1.0]), reduction="sum")
    assert got.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    # same bar with y = 0 takes the other class weight, 1 - alpha
    got = focal_loss(torch.tensor([0.0]), torch.tensor([0.0]), reduction="sum")
    assert got.item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)


def test_gamma_zero_no_alpha_is_bce():
    torch.manual_seed(0)
    z = torch.randn(200) * 4
    y = (torch.rand(200) > 0.6).float()
    for reduction in ("mean", "sum", "none"):
        want = torch.nn.BCEWithLogitsLoss(reduction=reduction)(z, y)
        got = FocalLoss(alpha=None, gamma=0.0, reduction=reduction)(z, y)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_focusing_down_weights_easy_examples():
    z = torch.tensor([4.0, 0.2])  # both positives: one easy, one hard
    y = torch.ones(2)
    bce = FocalLoss(None, 0.0, "none")(z, y)
    focal = FocalLoss(None, 2.0, "none")(z, y)
    ratio = (focal / bce).numpy()
    assert ratio[0] < 1e-3 < ratio[1]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_stable_and_finite_gradients_at_large_logits(gamma):
    z = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss = FocalLoss(0.25, gamma, reduction="none")(z, y)
    assert torch.isfinite(loss).all()
    # Confidently wrong: -log p_t = 100, modulating factor ~1.
    assert loss[1].item() == pytest.approx(0.25 * 100, rel=1e-5)
    assert loss[2].item() == pytest.approx(0.75 * 100, rel=1e-5)
    assert loss[0].item() < 1e-30 and loss[3].item() < 1e-30  # confidently right
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad[1].item() == pytest.approx(-0.25, rel=1e-4)  # pushes the wrong logit up
    assert z.grad[2].item() == pytest.approx(0.75, rel=1e-4)


def test_reductions():
    z, y = torch.tensor(LOGITS), torch.tensor(TARGETS)
    none = FocalLoss(reduction="none")(z, y)
    assert none.shape == (6,)
    torch.testing.assert_close(FocalLoss(reduction="sum")(z, y), none.sum())
    torch.testing.assert_close(FocalLoss(reduction="mean")(z, y), none.mean())
    z2 = z.reshape(2, 3)
    assert FocalLoss(reduction="none")(z2, y.reshape(2, 3)).shape == (2, 3)


def test_integer_targets_accepted():
    z = torch.tensor(LOGITS)
    torch.testing.assert_close(FocalLoss()(z, torch.tensor(TARGETS).long()), FocalLoss()(z, torch.tensor(TARGETS)))


@pytest.mark.parametrize(
    "kw, match",
    [({"gamma": -1.0}, "gamma"), ({"gamma": float("nan")}, "gamma"), ({"alpha": 1.5}, "alpha"),
     ({"alpha": -0.1}, "alpha"), ({"reduction": "avg"}, "reduction")],
)
def test_invalid_args(kw, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kw)


def test_invalid_targets():
    with pytest.raises(ValueError, match="0 or 1"):
        FocalLoss()(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        FocalLoss()(torch.zeros(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="shape"):
        FocalLoss()(torch.zeros(3), torch.zeros(3, 1))


def test_constant_prediction_baseline():
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])  # base rate 0.25
    p = 0.25
    want = np.mean(_numpy_focal([math.log(p / (1 - p))] * 4, y.numpy(), 0.25, 2.0))
    assert constant_prediction_loss(p, y, 0.25, 2.0) == pytest.approx(want, rel=1e-6)
    assert FocalLoss().baseline(y) == pytest.approx(want, rel=1e-6)  # p defaults to the mean
    # With BCE the base rate is the best constant; its loss is the label entropy.
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert FocalLoss(None, 0.0).baseline(y) == pytest.approx(entropy, rel=1e-6)
    assert FocalLoss(None, 0.0).baseline(y, p=0.5) > entropy
    with pytest.raises(ValueError, match="base_rate"):
        FocalLoss().baseline(torch.zeros(4))


def test_best_constant_beats_the_base_rate_under_focal_loss_and_equals_it_under_log_loss():
    from agents.model.losses import best_constant_probability, constant_prediction_loss

    y = torch.tensor([1.0] * 40 + [0.0] * 60)
    grid = np.linspace(0.001, 0.999, 9981)
    losses = [constant_prediction_loss(float(p), y, 0.25, 2.0) for p in grid]
    p = best_constant_probability(y, 0.25, 2.0)
    assert p == pytest.approx(grid[int(np.argmin(losses))], abs=2e-4)
    assert constant_prediction_loss(p, y, 0.25, 2.0) < constant_prediction_loss(0.4, y, 0.25, 2.0)
    assert best_constant_probability(y, None, 0.0) == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(ValueError, match="single class"):
        best_constant_probability(torch.zeros(5))
