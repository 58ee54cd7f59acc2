"""Power benchmark: does the learner find a signal that really exists, and more than the baselines do?

Deterministic planted-signal datasets (``datafeeds.synthetic``; business-day bars, seeds fixed):

    random_walk          i.i.d. log returns: the control, nothing to find
    ar1_0.1, ar1_0.2     linear momentum, r[t] = phi r[t-1] + e[t] at two strengths
    vol_regime           two persistent regimes: calm with an upward drift, storm with 3x the volatility
                         and a downward drift
    sign_interaction     nonlinear: the drift of the next bars is the product of the signs of two
                         lagged returns (an XOR: neither lag alone says anything)
    volume_momentum      nonlinear: momentum on heavy volume, reversal on light volume
    motif                nonlinear: a drift after a pattern of return signs over several bars (down
                         after its mirror image)

On each, the default agent (``TrainConfig()``: the default architecture, features, labels, loss,
schedule and split: what ``python -m agents.train --data FILE`` trains) is trained, and its card's
baselines fitted on the same labels, split and sample weights: logistic regression on the last bar's
features and gradient boosting (LightGBM) on the last 16 bars' features. Printed per dataset: the
latent-signal AUC (the true planted signal against the same validation labels: the ceiling), the
logistic, gradient-boosting and agent validation AUCs, the agent's difference from the better
baseline with its 95% block-bootstrap interval, and the agent's out-of-sample Sharpe on the held-out
last 20% of bars (fast engine, the card's threshold and barriers) beside buy-and-hold's.

Exit 1 (a FAIL line each) when:
- the control's agent AUC exceeds ``CONTROL_MAX_AUC`` (the learner finds skill in noise);
- on a linear signal the agent falls more than ``LINEAR_TOLERANCE`` below the logistic baseline;
- on a nonlinear signal the agent falls more than ``GBM_TOLERANCE`` below gradient boosting, or is
  less than ``NONLINEAR_MARGIN`` above the logistic baseline.

    python benchmarks/bench_power.py [--bars 40000] [--epochs N] [--datasets ...] [--seed-offset K]

``--seed-offset`` draws every dataset anew (other seeds), to check that a result is not one draw's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

CONTROL_MAX_AUC = 0.53
LINEAR_TOLERANCE = 0.02  # agent >= logistic - this on a linear signal
GBM_TOLERANCE = 0.02  # agent >= gradient boosting - this on a nonlinear signal
NONLINEAR_MARGIN = 0.05  # agent >= logistic + this on a nonlinear signal
DATASETS = {  # name -> (generator, keyword arguments, seed, kind)
    "random_walk": ("random_walk", {}, 101, "control"),
    "ar1_0.1": ("ar1", {"phi": 0.1}, 102, "linear"),
    "ar1_0.2": ("ar1", {"phi": 0.2}, 103, "linear"),
    "vol_regime": ("vol_regime", {}, 104, "linear"),
    "sign_interaction": ("sign_interaction", {"lags": (0, 2), "mu": 0.5, "k": 10}, 105, "nonlinear"),
    "volume_momentum": ("volume_momentum", {"mu": 1.0, "k": 3, "stay": 0.5}, 106, "nonlinear"),
    "motif": ("motif", {"pattern": "+-+", "mu": 1.5, "k": 3}, 107, "nonlinear"),
}


def checks(row: dict) -> list[str]:
    """The FAIL lines of one dataset's row (empty when it passes)."""
    name, kind, agent, lin, gbm = row["data"], row["kind"], row["agent_auc"], row["logistic_auc"], row["gbm_auc"]
    out = []
    if kind == "control" and agent > CONTROL_MAX_AUC:
        out.append(f"control {name}: agent AUC {agent:.3f} > {CONTROL_MAX_AUC}")
    if kind == "linear" and agent < lin - LINEAR_TOLERANCE:
        out.append(f"{name}: agent AUC {agent:.3f} is more than {LINEAR_TOLERANCE} below logistic's {lin:.3f}")
    if kind == "nonlinear":
        if gbm is not None and agent < gbm - GBM_TOLERANCE:
            out.append(f"{name}: agent AUC {agent:.3f} is more than {GBM_TOLERANCE} below "
                       f"gradient boosting's {gbm:.3f}")
        if agent < lin + NONLINEAR_MARGIN:
            out.append(f"{name}: agent AUC {agent:.3f} is less than {NONLINEAR_MARGIN} above logistic's {lin:.3f}")
    return out


def best_baseline(metrics: dict) -> tuple[str, dict]:
    """The card's better baseline by validation AUC: its name and section."""
    lin, gbm = metrics["linear_baseline"], metrics.get("gbm_baseline") or {}
    if gbm.get("val_auc") is not None and gbm["val_auc"] > (lin.get("val_auc") or 0.0):
        return "gbm", gbm
    return "logistic", lin


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bars", type=int, default=40_000, help="bars per dataset")
    ap.add_argument("--epochs", type=int, default=None,
                    help="most epochs per training; default: TrainConfig's (early stopping may end sooner)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of: {', '.join(DATASETS)}")
    ap.add_argument("--seed-offset", type=int, default=0, help="added to every dataset's seed: other draws")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.datasets.split(",") if s.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    if args.bars < 2_000:
        ap.error(f"--bars must be at least 2000, got {args.bars}")
    if args.epochs is not None and args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")

    import numpy as np
    import pandas as pd
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info

    from agents.artifact.baseline import auc_of
    from agents import OnnxAgent, TrainConfig
    from agents.training.trainer import train
    from datafeeds import synthetic
    from engine import BarrierRules, RunConfig, run_backtest

    print(f"machine: {machine_info(np, pd, torch)}")
    epochs = {} if args.epochs is None else {"epochs": args.epochs}
    print(f"{args.bars:,} bars per dataset; the default agent{f', at most {args.epochs} epochs' if epochs else ''}; "
          f"holdout 20%; seeds +{args.seed_offset}", flush=True)
    rows, failures = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            gen, kwargs, seed, kind = DATASETS[name]
            t0 = time.perf_counter()
            df, latent = getattr(synthetic, gen)(args.bars, seed=seed + args.seed_offset, **kwargs)
            csv = Path(tmp) / f"{name}.csv"
            df.to_csv(csv)
            cfg = TrainConfig(data=str(csv), **epochs)
            res = train(cfg, Path(tmp) / f"{name}.onnx", checkpoint_dir=Path(tmp) / f"{name}_ckpt", progress=False)
            m, prep = res.card["metrics"], res.prep
            y_va = prep.labels("val")
            oracle = float(auc_of(y_va > 0.5, latent[prep.val_ends])[0]) if np.isfinite(latent).any() else None
            agent = OnnxAgent.load(Path(tmp) / f"{name}.onnx")
            bt = run_backtest(df, "agent", signal=agent.predict_proba(df),
                              rules=BarrierRules(threshold=agent.threshold, pt=agent.tbm.pt, sl=agent.tbm.sl,
                                                 horizon=agent.tbm.horizon),
                              run=RunConfig(engine="fast", start=prep.holdout_start))
            best, section = best_baseline(m)
            d = section.get("auc_difference") or {}
            row = {"data": name, "kind": kind, "agent_auc": m["val_auc"],
                   "logistic_auc": m["linear_baseline"]["val_auc"],
                   "gbm_auc": (m.get("gbm_baseline") or {}).get("val_auc"), "best": best, "diff": d.get("value"),
                   "diff_low": d.get("low"), "diff_high": d.get("high"), "oracle_auc": oracle,
                   "sharpe": bt.stats["sharpe"], "bh_sharpe": bt.benchmark_stats["sharpe"],
                   "trades": bt.stats["n_trades"], "epochs": m["epochs_run"], "seconds": time.perf_counter() - t0}
            rows.append(row)
            row_failures = checks(row)
            failures += row_failures
            print(f"  {name}: latent {_f(oracle)}, logistic {_f(row['logistic_auc'])}, gbm {_f(row['gbm_auc'])}, "
                  f"agent {_f(row['agent_auc'])}; {row['epochs']} epochs, {row['seconds']:.0f} s"
                  f"{'' if not row_failures else '  FAIL'}", flush=True)

    print()
    print("| data | kind | latent-signal AUC | logistic (last bar) | gradient boosting (16 bars) | agent | "
          "agent - best baseline, 95% CI | out-of-sample Sharpe (B&H) | trades | epochs | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['kind']} | {_f(r['oracle_auc'])} | {_f(r['logistic_auc'])} | {_f(r['gbm_auc'])} | "
              f"{_f(r['agent_auc'])} | {_f(r['diff'], '+.3f')} vs {r['best']} ({_f(r['diff_low'], '+.3f')}.."
              f"{_f(r['diff_high'], '+.3f')}) | {_f(r['sharpe'], '.2f')} ({_f(r['bh_sharpe'], '.2f')}) | "
              f"{r['trades']} | {r['epochs']} | {r['seconds']:.0f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if failures:
        for line in failures:
            print(f"FAIL: {line}", file=sys.stderr)
        return 1
    print(f"checks passed: control AUC <= {CONTROL_MAX_AUC}; linear signals within {LINEAR_TOLERANCE} of logistic; "
          f"nonlinear signals within {GBM_TOLERANCE} of gradient boosting and at least {NONLINEAR_MARGIN} above "
          "logistic")
    return 0


def _f(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


if __name__ == "__main__":
    sys.exit(main())
