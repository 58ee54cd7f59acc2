"""Shared by the benchmark scripts: synthetic bars from real returns, and what machine ran them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd


def bootstrap_bars(src: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n minute bars whose (log return, open/high/low offsets to close, volume) are drawn jointly
    from ``src``'s real bars, so ranges, gaps and fat tails stay realistic at any length."""
    c = src["close"].to_numpy(np.float64)
    r = np.log(c[1:] / c[:-1])
    offsets = np.log(src[["open", "high", "low"]].to_numpy(np.float64)[1:] / c[1:, None])
    volume = src["volume"].to_numpy(np.float64)[1:]
    pick = np.random.default_rng(seed).integers(0, r.size, size=n)
    close = c[0] * np.exp(np.cumsum(r[pick]))
    o, h, lo = (close * np.exp(offsets[pick, k]) for k in range(3))
    # the offsets keep low <= open, close <= high up to exp/log rounding: enforce it exactly
    h, lo = np.maximum.reduce([h, o, close]), np.minimum.reduce([lo, o, close])
    index = pd.date_range("2000-01-03", periods=n, freq="min", name="datetime")
    df = pd.DataFrame({"open": o, "high": h, "low": lo, "close": close, "volume": volume[pick]}, index=index)
    df.attrs["source"] = f"bootstrap of {src.attrs.get('source', 'real bars')} n={n} seed={seed}"
    return df


def machine_info(*modules) -> str:
    """CPU model, cores this process may use, Python and the versions of ``modules``."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{m.__name__} {getattr(m, '__version__', '?')}" for m in modules)
    return (f"cpu: {model}; logical cores: {os.cpu_count()} (usable: {usable}); "
            f"python {platform.python_version()}" + (f", {versions}" if versions else ""))


def load_avg() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else "load average n/a"


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
