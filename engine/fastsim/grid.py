"""Parameter grids in one call: :func:`sweep`, the agent strategy on one signal for many rule sets
(one parallel numba call), each scored with the headline numbers a single fast run reports."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from os import PathLike

import numpy as np
import pandas as pd

import datafeeds
from engine.backtest_common import bet_inputs, day_numbers, prepare_inputs
from engine.config import RunConfig
from engine.fastsim.kernels import SWEEP_STATS, Signals, sweep_nb
from engine.fastsim.inputs import account, clock, on_period, period_bars, rule_grid
from labeling.bet_sizing import entry_sizes
from labeling.rules import BarrierRules, Costs

# the BarrierRules fields a grid may vary
SWEEP_PARAMS = ("threshold", "pt", "sl", "horizon", "size_frac", "sizing", "size_step")


def sweep(data: pd.DataFrame | str | PathLike, signal, grid, *, side=None, costs: Costs | None = None,
          run: RunConfig | None = None, rules: BarrierRules | None = None, equity: bool = False):
    """The agent strategy on one signal for many rule sets in one numba call (parallel over them).

    ``grid``: field of :class:`~labeling.BarrierRules` -> values (``SWEEP_PARAMS``; their Cartesian product), or
    a DataFrame of explicit rows with some of those columns. Fields not given take ``rules``' (default
    ``BarrierRules()``). ``side``: the bets' sides, as for :func:`engine.run_backtest`; the ATR is
    ``labeling.atr`` over ``rules.atr_period``. Returns one row per configuration: its parameters and the
    headline numbers ``run_backtest(run=RunConfig(engine="fast"))`` reports for it
    (``SWEEP_STATS``; NaN where that gives None).
    ``equity=True``: ``(that frame, equity curves)``, the curves a DataFrame on the period's bars with one column
    per configuration (8 bytes x bars x configurations: for short periods, e.g. validation blocks).
    """
    base, costs, run = rules or BarrierRules(), costs or Costs(), run or RunConfig()
    df = data if isinstance(data, pd.DataFrame) else datafeeds.load_ohlcv(data)
    _, confs = grid_configs(grid, base)
    sig, atr_full, period, ppy = prepare_inputs(df, signal, None, base.atr_period, run)
    sig_p, atr_p = (on_period(v, df, period) for v in (sig, atr_full))
    # one row of entry sizes per group of configurations sizing alike, on the full data like a single run's
    firsts, size_row = size_groups(confs)
    sides, _ = bet_inputs(df, sig, side, base)
    side_p = on_period(sides, df, period)
    sizes = np.array([on_period(entry_sizes(sig.to_numpy(np.float64), sides, c), df, period) for c in firsts])
    signals = Signals(sig_p, atr_p, side_p, sizes[0], day_numbers(period.index))
    res = sweep_nb(period_bars(period), signals, sizes, rule_grid(confs, 1.0, size_row), account(run, costs),
                   clock(period.index, ppy, run.risk_free), bool(equity))
    params = {k: [getattr(c, k) for c in confs] for k in SWEEP_PARAMS}
    params["size_frac"] = [c.entry_fraction for c in confs]
    return sweep_result(params, res, period.index, equity)


def sweep_result(params: dict, res, index: pd.DatetimeIndex, equity: bool):
    """A sweep's answer from its kernel's :class:`~engine.fastsim.kernels.SweepOut`: one row per configuration, its
    ``params`` then the ``SWEEP_STATS`` (counts as integers); with ``equity`` also the curves on ``index``, a column
    per configuration."""
    out = pd.DataFrame(params)
    out["horizon"] = out["horizon"].astype(np.int64)
    for j, name in enumerate(SWEEP_STATS):
        out[name] = res.stats[:, j]
    out["n_trades"] = out["n_trades"].astype(np.int64)
    out["rejected_entries"] = out["rejected_entries"].astype(np.int64)
    if equity:
        return out, pd.DataFrame(res.curves.T, index=index, columns=range(len(out)))
    return out


def grid_configs(grid, base: BarrierRules, extra: tuple = ()) -> tuple[pd.DataFrame, list[BarrierRules]]:
    """The configurations of ``grid`` (``sweep``'s argument; ``extra``: more column names the caller reads itself):
    its rows and each as ``base`` with its rule columns changed, checked as a single run checks them (ValueError
    naming the row)."""
    rows = _grid_rows(grid, SWEEP_PARAMS + tuple(extra))
    confs = []
    for i, row in enumerate(rows.drop(columns=list(extra), errors="ignore").to_dict("records")):
        if "size_frac" in row and row["size_frac"] is not None and np.isnan(row["size_frac"]):
            row["size_frac"] = None  # None in a column of fractions: pandas stores it as NaN
        try:
            confs.append(dataclasses.replace(base, **row))
        except ValueError as exc:
            raise ValueError(f"sweep: configuration {i}: {exc}") from None
    return rows, confs


def size_groups(confs: list[BarrierRules]) -> tuple[list[BarrierRules], np.ndarray]:
    """Configurations that share their entry sizes (one sizing, horizon where it matters, size_step): the first
    of each group, in first-seen order, and each configuration's group (its row of the sizes matrix)."""
    keys = [(c.sizing, c.horizon if c.sizing != "fixed" else 0, c.size_step) for c in confs]
    distinct = list(dict.fromkeys(keys))
    return [confs[keys.index(k)] for k in distinct], np.array([distinct.index(k) for k in keys], dtype=np.int64)


def _grid_rows(grid, names: tuple = SWEEP_PARAMS) -> pd.DataFrame:
    """The configurations of ``grid`` (a dict of value lists: their product; or a DataFrame), names checked."""
    if isinstance(grid, pd.DataFrame):
        rows = grid
    elif isinstance(grid, dict):
        values = [np.atleast_1d(np.asarray(grid[k])) for k in grid]
        rows = pd.DataFrame(list(itertools.product(*values)), columns=list(grid))
    else:
        raise TypeError(f"grid must be a dict of parameter -> values or a DataFrame, got {type(grid).__name__}")
    unknown = [k for k in rows.columns if k not in names]
    if unknown:
        hint = difflib.get_close_matches(str(unknown[0]), names, n=1)
        raise ValueError(f"sweep: unknown parameter {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; the parameters are {', '.join(names)}")
    if not len(rows):
        raise ValueError("sweep: the grid is empty")
    if "horizon" in rows and rows["horizon"].dtype.kind == "f":  # a float frame (np.array of a product) holds 20.0
        whole = rows["horizon"].to_numpy()
        if np.all(np.isfinite(whole) & (whole == np.round(whole))):
            rows = rows.assign(horizon=whole.astype(np.int64))
    return rows
