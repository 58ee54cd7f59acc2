"""A one-line verdict on an agent's validation numbers, with the test that decides it stated.

The model card lists losses and AUCs; this module says what they add up to. Ranking skill is
decided by the one-sided Mann-Whitney test of validation ROC AUC > 0.5 (AUC = U / (n_pos * n_neg)),
normal approximation without ties, at level ``ALPHA``; skill beyond the baselines by the 95%
block-bootstrap interval of the AUC difference to the better of them (:mod:`agents.artifact.baseline`: logistic
regression on the last bar, gradient boosting on the last bars; the higher validation AUC, ties to
gradient boosting), which must lie above 0; a validation AUC more than ``LOOKAHEAD_MARGIN``
above the price-and-volume-only baseline, with other data columns in use, is flagged as possible
look-ahead in those columns.

Caveat: Triple Barrier labels of neighbouring bars share most of their future window, so validation
events are not independent and the p-value is optimistic (too small); a "no evidence" verdict is
safe, an "evidence" verdict is an upper bound on the evidence.

Pure Python (math only): it runs where only onnxruntime is loaded (``agents.artifact.inspect``).
"""

from __future__ import annotations

import math

__all__ = ["ALPHA", "CAVEAT", "LOOKAHEAD_MARGIN", "auc_p_value", "verdict"]

ALPHA = 0.05  # one-sided significance level for "AUC > 0.5"
# agents.artifact.baseline.LOOKAHEAD_MARGIN, repeated: this module imports nothing of numpy (tested equal)
LOOKAHEAD_MARGIN = 0.10
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


def _baselines(m: dict) -> list[dict]:
    """The card's baselines as {"section", "name", "kind", "short", "auc", "interval"}: gradient boosting
    first (so it wins ties), then the linear one; absent sections left out, unusable numbers None."""
    out = []
    gbm = m.get("gbm_baseline")
    if isinstance(gbm, dict):
        k = gbm.get("lags")
        k = k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else None
        out.append({"section": gbm, "kind": "gradient boosting",
                    "name": f"gradient boosting (LightGBM, last {k} bars)" if k else "gradient boosting (LightGBM)",
                    "short": f"gradient boosting on the last {k} bars' features" if k else
                    "gradient boosting on the last bars' features"})
    lin = m.get("linear_baseline")
    if isinstance(lin, dict):
        out.append({"section": lin, "kind": "logistic regression", "name": "logistic regression (last bar)",
                    "short": "a linear model on the last bar's features"})
    for b in out:
        d = b["section"].get("auc_difference")
        d = d if isinstance(d, dict) else {}
        b["auc"] = _number(b["section"].get("val_auc"))
        interval = (_number(d.get("value")), _number(d.get("low")), _number(d.get("high")))
        b["interval"] = None if None in interval else (*interval, _number(d.get("level")) or 0.95)
    return out


def _against(baselines: list[dict]) -> tuple[dict | None, int, list[str]]:
    """The baseline the agent is judged against (the higher validation AUC among those with an interval),
    how many had one, and the verdict's text on the baselines."""
    usable = [b for b in baselines if b["auc"] is not None and b["interval"] is not None]
    if not usable:
        return None, 0, ["no baseline recorded"]
    best = max(usable, key=lambda b: b["auc"])
    diff, low, high, level = best["interval"]
    parts = [f"{'better baseline' if len(usable) > 1 else 'baseline'} {best['name']} AUC {best['auc']:.3f}, "
             f"difference {diff:+.3f} ({level:.0%} CI {low:+.3f}..{high:+.3f}, block bootstrap): "
             f"{'beats it' if low > 0 else 'does not beat it'}"]
    for b in baselines:
        if b is not best:
            parts.append(f"other baseline {b['name']} " + (f"AUC {b['auc']:.3f}" if b["auc"] is not None
                                                              else "not fitted"))
    return best, len(usable), parts


def verdict(metrics: dict) -> str:
    """One line: does the validation data show ranking skill (AUC test), and more than the better
    baseline's (bootstrap interval of the AUC difference)? "no verdict: ..." when the card has no
    usable validation numbers; never raises. Cards from before the gradient-boosting baseline are
    judged against the linear one.

    Reads metrics["val_auc"], ["label_balance"]["val_events"] and ["val_positive_rate"],
    ["linear_baseline"], ["gbm_baseline"], ["val_logloss"] and ["baseline_val_logloss"]. The log-loss is
    reported, not judged: focal-loss scores (an option) are not calibrated probabilities, so a skilled model can
    lose to the base rate there. See the module docstring for the caveat.
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
    parts = [f"validation AUC {auc:.3f} ({_p_text(p)}, {_TEST}, {events} events)"]

    best, n_usable, said = _against(_baselines(m))
    parts += said

    logloss, base = _number(m.get("val_logloss")), _number(m.get("baseline_val_logloss"))
    if logloss is not None and base is not None:
        parts.append(f"log-loss {logloss:.3f} vs the base rate's {base:.3f} (reported, not judged)")

    lin = m.get("linear_baseline") if isinstance(m.get("linear_baseline"), dict) else {}
    pv = lin.get("price_volume") if isinstance(lin.get("price_volume"), dict) else {}
    pv_auc = _number(pv.get("val_auc"))
    others = [str(c) for c in pv.get("other_columns", []) if isinstance(c, str)] if isinstance(
        pv.get("other_columns"), list) else []
    if pv_auc is not None and others and auc - pv_auc > LOOKAHEAD_MARGIN:
        head = (f"CHECK FOR LOOK-AHEAD in your data columns ({', '.join(others)}): validation AUC {auc:.3f} is "
                f"{auc - pv_auc:.2f} above a linear model on price and volume alone ({pv_auc:.3f})")
    elif not ranks:
        head = "no evidence of skill"
    elif best is None:
        head = "evidence of ranking skill"
    elif best["interval"][1] > 0:  # the interval's low end
        head = (f"evidence of skill beyond {best['short']}" if n_usable == 1 else
                f"evidence of skill beyond the best baseline ({best['kind']})")
    else:
        head = f"ranks better than chance, but no better than {best['short']}"
    return f"{head}: {'; '.join(parts)}"
