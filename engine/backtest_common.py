"""What both backtest engines share: input preparation, the run facts of a result's config and the trades
frame (the result types are in :mod:`engine.results`).

:mod:`engine.runner` (backtrader, the reference) and :mod:`engine.fastsim` (numba) both build on this
module, so neither imports the other's internals.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

import labeling
from engine.config import RunConfig
from engine.jsonable import jsonable
from engine.metrics import infer_periods_per_year, periods_per_year_rule
from labeling.rules import BarrierRules, Costs
from strategies import TRADE_FIELDS


class Instrument(NamedTuple):
    """One portfolio instrument's inputs over the period, float64 arrays on its bars (``engine.portfolio.inputs``)."""

    period: pd.DataFrame
    signal: np.ndarray
    atr: np.ndarray
    side: np.ndarray  # +1 long, -1 short, 0 no bet
    size: np.ndarray  # entry size multiple (labeling.entry_sizes)


def prepare_inputs(df, signal, atr, atr_period: int, run: RunConfig):
    """Both engines' inputs: the signal (None if not given) and ATR aligned to the full data and
    checked, the period ``run`` trades, and periods per year (given, else inferred from the full data)."""
    start, end = run.start, run.end
    sig = _align(signal, df, "signal") if signal is not None else None
    if sig is not None and _outside_unit(sig.to_numpy()):
        raise ValueError("signal holds values outside [0, 1]: pass probabilities (NaN = no signal)")
    atr_full = (
        _align(atr, df, "atr") if atr is not None
        else pd.Series(labeling.atr(df["high"], df["low"], df["close"], atr_period), index=df.index)
    )
    period = df.loc[start:end]
    if len(period) < 2:
        raise ValueError(f"start={start!r}, end={end!r} leave {len(period)} bar(s) of {len(df)}: need >= 2")
    ppy = float(run.periods_per_year) if run.periods_per_year else infer_periods_per_year(df.index)
    return sig, atr_full, period, ppy


def bet_inputs(df: pd.DataFrame, sig: pd.Series | None, side, rules: BarrierRules) -> tuple[np.ndarray, np.ndarray]:
    """Both engines' sides and entry sizes on the full data (float64, so sizes average bets before the period):
    ``side`` as ``labeling.event_sides`` reads it (None: long at every bar) and ``rules``' sizing of ``sig``."""
    try:
        sides = labeling.event_sides(side, df.index).astype(np.float64)
    except ValueError as exc:
        raise ValueError(f"side: {exc}") from None
    if rules.sizing != "fixed" and sig is None:
        raise ValueError(f"sizing={rules.sizing!r} sizes entries from the probabilities: pass a batch signal=")
    prob = sig.to_numpy(np.float64) if sig is not None else np.full(len(df), np.nan)
    return sides, labeling.entry_sizes(prob, sides, rules)


def day_numbers(index: pd.DatetimeIndex) -> np.ndarray:
    """Each bar's calendar day as backtrader dates it (UTC), in days since 1970-01-01: what a short's borrow counts."""
    idx = pd.DatetimeIndex(index)  # asi8 counts from the epoch (UTC if tz-aware); // floors before 1970 too
    per_day = 86_400 * {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[idx.unit]
    return idx.asi8 // per_day


def run_facts(df, period, atr, rules: BarrierRules, costs: Costs, run: RunConfig, ppy: float) -> dict:
    """The part of a result's config both engines share: data, period, costs and conventions."""
    return {
        "data_source": str(df.attrs.get("source", "DataFrame")),
        "data_sha256": df.attrs.get("sha256"),
        "start": str(period.index[0]),
        "end": str(period.index[-1]),
        "n_bars": int(len(period)),
        "cash": run.cash,
        "commission": costs.commission,
        "commission_model": "fraction of traded value per side (COMM_PERC, percabs)",
        "slippage": costs.slippage,
        "slippage_model": "set_slippage_perc: buys up, sells down, capped at high/low, incl. opens",
        "borrow": costs.borrow,  # annual, on a short's entry value per calendar day held
        "margin": run.margin,  # cash tied up per unit of a position's value
        "atr": "override" if atr is not None else f"labeling.atr(period={rules.atr_period}) on the full data",
        "periods_per_year": ppy,
        "periods_per_year_rule": "given" if run.periods_per_year else f"full data: {periods_per_year_rule(df.index)}",
        "risk_free": run.risk_free,  # annual rate for Sharpe and Sortino
    }


def agent_params(rules: BarrierRules, live: bool) -> dict:
    """The agent strategy's parameters in effect, as a result's config records them (one instrument)."""
    return {k: jsonable(v) for k, v in (("size_frac", rules.entry_fraction), ("threshold", rules.threshold),
                                         ("pt", rules.pt), ("sl", rules.sl), ("horizon", rules.horizon),
                                         ("sizing", rules.sizing), ("size_step", rules.size_step),
                                         ("live", live))}



def _outside_unit(values: np.ndarray) -> bool:
    """Any value below 0 or above 1 (NaN is neither)."""
    with np.errstate(invalid="ignore"):
        return bool(np.any(values < 0.0) or np.any(values > 1.0))


def _align(values, df: pd.DataFrame, name: str) -> pd.Series:
    """A float Series on ``df.index`` from an array of len(df) or a Series indexed by df's timestamps."""
    if isinstance(values, pd.Series):
        if values.index.equals(df.index):
            return values.astype(np.float64)
        extra = values.index.difference(df.index)
        if len(extra):
            raise ValueError(
                f"{name} has {len(extra)} timestamp(s) not in the data, first {extra[0]}: "
                f"compute it from the same data frame"
            )
        return values.astype(np.float64).reindex(df.index)
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (len(df),):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({len(df)},) like the data")
    return pd.Series(arr, index=df.index)


def trades_frame(log_rows: list[dict], index: pd.DatetimeIndex) -> pd.DataFrame:
    trades = pd.DataFrame(log_rows, columns=list(TRADE_FIELDS))
    if len(trades):
        # Timestamps from the frame's own index (backtrader's float dates can round microseconds).
        trades["entry_time"] = index[trades["entry_bar"].to_numpy(dtype=np.int64)]
        trades["exit_time"] = index[trades["exit_bar"].to_numpy(dtype=np.int64)]
    for col in ("entry_bar", "exit_bar", "bars_held"):
        trades[col] = trades[col].astype(np.int64)
    return trades
