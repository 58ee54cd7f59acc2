"""A one-line verdict on an agent's validation numbers, with the test that decides it stated.

The model card lists losses and AUCs; this module says what they add up to. Ranking skill is
decided by the one-sided Mann-Whitney test of validation ROC AUC > 0.5 (AUC = U / (n_pos * n_neg)),
normal approximation without ties, at level ``ALPHA``; calibration by comparing the validation
log-loss with always predicting the training base rate.

Caveat: Triple Barrier labels of neighbouring bars share most of their future window, so validation
events are not independent and the p-value is optimistic (too small); a "no evidence" verdict is
safe, an "evidence" verdict is an upper bound on the evidence.

Pure Python (math only): it runs where only onnxruntime is loaded (``agents.inspect``).
"""

from __future__ import annotations

import math

__all__ = ["ALPHA", "CAVEAT", "auc_p_value", "verdict"]

ALPHA = 0.05  # one-sided significance level for "AUC > 0.5"
CAVEAT = ("overlapping Triple Barrier labels make neighbouring events dependent, "
          "so the p-value is optimistic")
_TEST = "one-sided Mann-Whitney vs 0.5"


def auc_p_value(auc: float, n_pos: int, n_neg: int) -> float:
    """One-sided p-value of ROC AUC > 0.5 from ``n_pos`` positive and ``n_neg`` negative events.

    Mann-Whitney U = auc * n_pos * n_neg; under H0 (no skill, no ties) U has mean n_pos*n_neg/2 and
    variance n_pos*n_neg*(n_pos+n_neg+1)/12; p = P(Z >= z) by the normal approximation, without
    continuity correction (as scipy's ``mannwhitneyu(method="asymptotic", use_continuity=False)``).
    """
    if isinstance(auc, bool) or not isinstance(auc, (int, float)) or not 0.0 <= auc <= 1.0:
        raise ValueError(f"auc must be a number in [0, 1], got {auc!r}")
    for name, n in (("n_pos", n_pos), ("n_neg", n_neg)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    product = n_pos * n_neg
    z = (auc * product - product / 2.0) / math.sqrt(product * (n_pos + n_neg + 1) / 12.0)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _p_text(p: float) -> str:
    if p < 1e-4:
        return "p<0.0001"
    return f"p={p:.2f}" if p >= 0.01 else f"p={p:.4f}"


def _number(x) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def verdict(metrics: dict) -> str:
    """One line: does the validation data show ranking skill (AUC test) and calibration (log-loss
    vs the base rate)? "no verdict: ..." when the card has no usable validation numbers; never raises.

    Reads metrics["val_auc"], ["label_balance"]["val_events"] and ["val_positive_rate"],
    ["val_logloss"] and ["baseline_val_logloss"]. See the module docstring for the caveat.
    """
    m = metrics if isinstance(metrics, dict) else {}
    balance = m.get("label_balance") if isinstance(m.get("label_balance"), dict) else {}
    events, rate, auc = balance.get("val_events"), _number(balance.get("val_positive_rate")), _number(m.get("val_auc"))
    if events is None or events == 0:
        return "no verdict: no validation events (e.g. a refit on train + validation)"
    if isinstance(events, bool) or not isinstance(events, int) or events < 0 or rate is None or not 0 <= rate <= 1:
        return f"no verdict: validation event counts unusable (events {events!r}, positive rate {rate!r})"
    n_pos = round(rate * events)
    n_neg = events - n_pos
    if n_pos == 0 or n_neg == 0:
        return f"no verdict: all {events} validation events have the same label"
    if auc is None or not 0 <= auc <= 1:
        return f"no verdict: validation AUC unavailable ({m.get('val_auc')!r})"
    p = auc_p_value(auc, n_pos, n_neg)
    ranks = p < ALPHA
    auc_text = f"validation AUC {auc:.3f} ({_p_text(p)}, {_TEST}, {events} events)"

    logloss, base = _number(m.get("val_logloss")), _number(m.get("baseline_val_logloss"))
    if logloss is None or base is None:
        calibration, calibrated = "log-loss not recorded", True
    else:
        relation = "better than" if logloss < base else "no better than" if logloss == base else "worse than"
        calibration, calibrated = f"log-loss {logloss:.3f} {relation} the base rate's {base:.3f}", logloss < base
    if not ranks:
        head = "no evidence of skill"
    elif calibrated:
        head = "evidence of ranking skill"
    else:
        head = "ranks better than chance but miscalibrated"
    return f"{head}: {auc_text}; {calibration}"
