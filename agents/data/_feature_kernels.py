"""Numba kernels behind `agents.data.features`: pure functions over float64 arrays, NaN during warm-up.

Every kernel is causal: output[t] reads input[:t + 1] only. Recursive ones (RSI, EMA) also depend
on where the series starts, so a streaming caller must feed them the same history as the batch.
"""

import math

import numpy as np
from labeling.jit import njit_cached


@njit_cached
def rsi_centred_nb(close, period):
    """Wilder RSI mapped to [-1, 1] as (RSI - 50) / 50 = (gain - loss) / (gain + loss).

    Seeded like TA-Lib (simple means of the first `period` gains/losses, first value at index
    `period`), but a window with no movement at all is neutral (0), where TA-Lib reports RSI 0.
    """
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n <= period:
        return out
    gain = 0.0
    loss = 0.0
    for i in range(1, period + 1):
        diff = close[i] - close[i - 1]
        if diff > 0.0:
            gain += diff
        else:
            loss -= diff
    gain /= period
    loss /= period
    for i in range(period, n):
        if i > period:
            diff = close[i] - close[i - 1]
            up = diff if diff > 0.0 else 0.0
            down = -diff if diff < 0.0 else 0.0
            gain = (gain * (period - 1) + up) / period
            loss = (loss * (period - 1) + down) / period
        total = gain + loss
        out[i] = (gain - loss) / total if total != 0.0 else 0.0
    return out


@njit_cached
def ema_seeded_nb(x, period, first):
    """EMA with k = 2 / (period + 1), seeded at index `first` by the mean of x[first-period+1 : first+1].

    NaN before `first`; also all-NaN when the series is too short.
    """
    n = x.shape[0]
    out = np.full(n, np.nan)
    if first >= n or first - period + 1 < 0:
        return out
    k = 2.0 / (period + 1)
    value = 0.0
    for i in range(first - period + 1, first + 1):
        value += x[i]
    value /= period
    out[first] = value
    for i in range(first + 1, n):
        # TA-Lib's update form; k*x + (1-k)*prev rounds differently in the last bits.
        value = (x[i] - value) * k + value
        out[i] = value
    return out


@njit_cached
def macd_nb(close, fast, slow, signal):
    """MACD line, signal and histogram exactly as TA-Lib aligns them: first value at slow+signal-2.

    TA-Lib seeds the fast EMA with the mean of the `fast` closes ending at index slow-1 (not the
    first `fast` closes), so both EMAs start on the same bar; the signal EMA is seeded the same way.
    """
    n = close.shape[0]
    start = slow - 1
    fast_ema = ema_seeded_nb(close, fast, start)
    slow_ema = ema_seeded_nb(close, slow, start)
    line = fast_ema - slow_ema
    sig = ema_seeded_nb(line, signal, start + signal - 1)
    hist = line - sig
    warm = min(start + signal - 1, n)
    line[:warm] = np.nan
    return line, sig, hist


@njit_cached
def rolling_zscore_nb(x, window):
    """(x[t] - mean) / std (ddof=1) over x[t-window+1 : t+1]; 0 when the window is constant.

    Each window is summed afresh (no running sums), so a value depends on its window's bytes only.
    Because the window holds x[t], |z| <= (window - 1) / sqrt(window): no blow-up on near-flat data.
    """
    n = x.shape[0]
    out = np.full(n, np.nan)
    for t in range(window - 1, n):
        lo = t - window + 1
        mn = x[lo]
        mx = x[lo]
        total = 0.0
        for i in range(lo, t + 1):
            v = x[i]
            total += v
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        if mx == mn:
            out[t] = 0.0
            continue
        mean = total / window
        ss = 0.0
        for i in range(lo, t + 1):
            dev = x[i] - mean
            ss += dev * dev
        std = math.sqrt(ss / (window - 1))
        out[t] = (x[t] - mean) / std if std > 0.0 else 0.0
    return out


@njit_cached
def fracdiff_nb(x, weights):
    """Fixed-width fractional difference: y[t] = sum_k weights[k] * x[t-k], NaN for t < len(weights)-1."""
    n = x.shape[0]
    width = weights.shape[0]
    out = np.full(n, np.nan)
    for t in range(width - 1, n):
        acc = 0.0
        for k in range(width):
            acc += weights[k] * x[t - k]
        out[t] = acc
    return out


@njit_cached
def bvc_imbalance_nb(close, window):
    """Bulk-volume-classification imbalance 2*Phi(dP[t]/sigma) - 1 = erf(dP[t] / (sigma*sqrt 2)).

    dP is the close-to-close change and sigma its std (ddof=1) over the last `window` changes,
    this one included; a constant window (sigma 0) gives 0. First value at index `window`.
    """
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n < 2:
        return out
    dp = np.empty(n)
    dp[0] = np.nan
    for i in range(1, n):
        dp[i] = close[i] - close[i - 1]
    root2 = math.sqrt(2.0)
    for t in range(window, n):
        lo = t - window + 1
        mn = dp[lo]
        mx = dp[lo]
        total = 0.0
        for i in range(lo, t + 1):
            v = dp[i]
            total += v
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        if mx == mn:
            out[t] = 0.0
            continue
        mean = total / window
        ss = 0.0
        for i in range(lo, t + 1):
            dev = dp[i] - mean
            ss += dev * dev
        sigma = math.sqrt(ss / (window - 1))
        out[t] = math.erf(dp[t] / (sigma * root2)) if sigma > 0.0 else 0.0
    return out
