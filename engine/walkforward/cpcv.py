"""The selected configuration under combinatorial purged cross-validation (AFML ch. 12).

Walk-forward gives one out-of-sample path. ``--cpcv N,K`` also retrains the latest fold's selected
configuration on each of the C(N, K) splits of the data into N contiguous groups (K of them tested,
the rest trained on, less ``horizon`` bars purged before each test group and the agent's warm-up
embargoed after it, so no training input or label holds a test bar), backtests each test group with
the fast engine, and assembles the C(N-1, K-1) paths that cover every group once. The report gives
the distribution of the paths' Sharpe ratios instead of one number. A universe's groups are cut on its
calendar, each split trains one pooled model and each test group is traded as a portfolio; the embargo
also counts in each member's own bars (a member with gaps spans more calendar bars per window).

The configuration was chosen on the walk-forward folds' validation blocks, which CPCV also tests on:
the distribution measures how the configuration holds up across periods, not a clean out-of-sample.
The embargo covers every feature's warm-up and the window, and a primary rule's look-back (its sides
read it); recursive features (EWMs, Wilder's ATR)
still carry a decaying trace of a test group past it.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pandas as pd

from agents.data.prepare import full_window_ends, prepare_blocks
from agents.training.trainer import fit
from engine.runner import run_backtest
from engine.walkforward import space, universe
from engine.walkforward.console import check_stop
from engine.walkforward.predict import logits, sigmoid
from labeling import cpcv_paths, cpcv_splits

log = logging.getLogger("engine.walkforward")


def evaluate_cpcv(cfg, df: pd.DataFrame, params: dict, best_epoch: int, ppy: float, *, stop=None,
                  members=None) -> dict:
    """Train ``params`` (a trial's, rebuilt on ``cfg.base``) for ``best_epoch`` epochs on every CPCV split
    of ``df`` (``cfg.cpcv`` = (groups, test groups)); the paths' Sharpe ratios and what made them.
    ``members``: a universe (``engine.walkforward.universe.Universe``; ``df`` its calendar): the groups are cut on
    the calendar, training is pooled and each test group is traded as a portfolio."""
    n_groups, k_test = cfg.cpcv
    tcfg, execution = space.from_params(params, cfg.base, cfg.execution)
    tcfg = dataclasses.replace(tcfg, epochs=best_epoch, patience=best_epoch)
    purge = tcfg.horizon
    # after a test group: a window of features, and the primary rule's bars before a bet's side (both read it)
    embargo = max(tcfg.feature_spec.pinned(df.columns).warmup + tcfg.seq_len - 1, space.primary_warmup((), tcfg))
    splits = cpcv_splits(len(df), n_groups, k_test, purge=purge, embargo=embargo)
    t0 = time.perf_counter()
    returns: dict[tuple[int, int], np.ndarray] = {}  # (group, split) -> per-bar returns of that test group
    trades = 0
    for sp in splits:
        if stop is not None:
            check_stop(stop)
        prep = prepare_blocks(tcfg, df, sp.train) if members is None else universe.prepare_blocks(members, tcfg, sp,
                                                                                                   embargo)
        res = fit(tcfg, prep, checkpoint_dir=None, progress=False,
                  on_epoch=(lambda record, state: check_stop(stop)) if stop is not None else None)
        model = res["model"]
        y_tr = prep.labels("train")
        z_tr = (logits(model, prep.x, tcfg.seq_len, prep.train_ends) if members is None
                else universe.window_logits(model, prep, "train"))
        rules = execution.rules(tcfg, execution.threshold(sigmoid(z_tr), float(y_tr.mean())))
        for g, r in zip(sp.test_groups, sp.test):
            if members is None:
                bt = _backtest_group(cfg, df, tcfg, model, prep, r, rules, ppy)
            else:  # the group traded as a portfolio, each member from its own history
                signals = universe.block_signals(members, model, prep, r, tcfg.seq_len)
                bt = universe.portfolio(members, cfg, tcfg, signals, r, rules=rules,
                                        run=cfg.run_config(engine="fast", periods_per_year=ppy, benchmark=False))
            returns[(g, sp.split)] = bt.equity.pct_change().dropna().to_numpy()
            trades += int(bt.stats["n_trades"])
        log.info("cpcv split %d/%d (test groups %s) done", sp.split + 1, len(splits), sp.test_groups)
    sharpes = []
    for path in cpcv_paths(splits, n_groups):
        r = np.concatenate([returns[key] for key in path])
        std = float(np.std(r, ddof=1))
        sharpes.append(float(np.mean(r)) / std * float(np.sqrt(ppy)) if std > 0 else 0.0)
    q = np.quantile(sharpes, [0.05, 0.5, 0.95])
    return {
        "n_groups": n_groups, "k_test": k_test, "n_splits": len(splits), "n_paths": len(sharpes),
        "purge": purge, "embargo": embargo, "params": params, "epochs": best_epoch,
        "path_sharpes": sharpes, "sharpe_median": float(q[1]), "sharpe_p05": float(q[0]), "sharpe_p95": float(q[2]),
        "share_positive": float(np.mean(np.array(sharpes) > 0)), "test_trades": trades,
        "seconds": time.perf_counter() - t0,
        "note": ("the latest fold's selected configuration retrained on every split; it was chosen on data these "
                 "splits also test on: a measure of stability across periods, not a clean out-of-sample"),
    }


def _backtest_group(cfg, df: pd.DataFrame, tcfg, model, prep, r: range, rules, ppy: float):
    """The fast-engine backtest of test group ``r``: the model's probability on its bars with a whole window
    (history before it for warm-up)."""
    part = df.iloc[: r.stop]
    prob = np.full(len(part), np.nan)
    ends = full_window_ends(prep.x, tcfg.seq_len, r)
    prob[ends] = sigmoid(logits(model, prep.x, tcfg.seq_len, ends))
    run = cfg.run_config(engine="fast", start=part.index[r.start], end=part.index[r.stop - 1], periods_per_year=ppy,
                         benchmark=False)
    signal, side = space.bets(tcfg, part, pd.Series(prob, index=part.index))
    return run_backtest(part, "agent", signal=signal, side=side, rules=rules, costs=cfg.costs, run=run)
