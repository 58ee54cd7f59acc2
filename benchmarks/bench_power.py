"""Power benchmark: does the learner find a signal that really exists, and more than a linear model?

Deterministic planted-signal datasets (``datafeeds.synthetic``; business-day bars, seeds fixed):

    random_walk        i.i.d. log returns: the control, nothing to find
    ar1_0.1, ar1_0.2   momentum, r[t] = phi r[t-1] + e[t] at two strengths
    vol_regime         two persistent regimes: calm with an upward drift, storm with 3x the volatility
                       and a downward drift

On each, the default agent (``TrainConfig()``: the default architecture, features, labels, loss and
split; ``--epochs`` caps the epochs to keep the run short) is trained with its card's linear baseline
(logistic regression on the last bar's features, same labels, split and purge). Printed per dataset:
the agent's and the baseline's validation AUC, the latent-signal AUC (the true planted signal against the same
validation labels: the ceiling), and the agent's out-of-sample Sharpe on the held-out last 20% of bars
(fast engine, the card's threshold and barriers) beside buy-and-hold's.

Exit 1 (loudly) if the control's validation AUC exceeds 0.56 (the learner finds skill in noise) or if
the agent falls more than 0.02 below the linear baseline on any planted signal.

    python benchmarks/bench_power.py [--bars 20000] [--epochs 6] [--datasets ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

CONTROL_MAX_AUC = 0.56
MAX_BEHIND_BASELINE = 0.02
DATASETS = {  # name -> (generator, keyword arguments, seed)
    "random_walk": ("random_walk", {}, 101),
    "ar1_0.1": ("ar1", {"phi": 0.1}, 102),
    "ar1_0.2": ("ar1", {"phi": 0.2}, 103),
    "vol_regime": ("vol_regime", {}, 104),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bars", type=int, default=20_000, help="bars per dataset")
    ap.add_argument("--epochs", type=int, default=6, help="most epochs per training (early stopping may end sooner)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of: {', '.join(DATASETS)}")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.datasets.split(",") if s.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")

    import numpy as np
    import pandas as pd
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info

    from agents.baseline import auc_of
    from agents.config import TrainConfig
    from agents.runtime import OnnxAgent
    from agents.trainer import train
    from datafeeds import synthetic
    from engine import run_backtest

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {machine_info(np, pd, torch)}")
    print(f"{args.bars:,} bars per dataset; default agent, at most {args.epochs} epochs; holdout 20%")
    rows, failures = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            gen, kwargs, seed = DATASETS[name]
            t0 = time.perf_counter()
            df, latent = getattr(synthetic, gen)(args.bars, seed=seed, **kwargs)
            csv = Path(tmp) / f"{name}.csv"
            df.to_csv(csv)
            cfg = TrainConfig(data=str(csv), epochs=args.epochs, seed=0)
            res = train(cfg, Path(tmp) / f"{name}.onnx", checkpoint_dir=Path(tmp) / f"{name}_ckpt", progress=False)
            m, prep = res.card["metrics"], res.prep
            y_va = prep.labels("val")
            oracle = None
            if np.isfinite(latent).any():
                oracle = float(auc_of(y_va > 0.5, latent[prep.val_ends])[0])
            agent = OnnxAgent.load(Path(tmp) / f"{name}.onnx")
            start = prep.holdout_start
            bt = run_backtest(df, "agent", engine="fast", signal=agent.predict_proba(df), start=start,
                              threshold=agent.threshold, pt=agent.tbm.pt, sl=agent.tbm.sl, horizon=agent.tbm.horizon)
            lin = m["linear_baseline"]
            row = {"data": name, "agent_auc": m["val_auc"], "baseline_auc": lin["val_auc"],
                   "diff_low": lin["auc_difference"]["low"], "diff_high": lin["auc_difference"]["high"],
                   "oracle_auc": oracle, "sharpe": bt.stats["sharpe"], "bh_sharpe": bt.benchmark_stats["sharpe"],
                   "trades": bt.stats["n_trades"], "epochs": m["epochs_run"], "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"  {name}: agent AUC {row['agent_auc']:.3f}, baseline {row['baseline_auc']:.3f}, latent signal "
                  f"{'n/a' if oracle is None else f'{oracle:.3f}'}, {row['epochs']} epochs, {row['seconds']:.0f} s",
                  flush=True)
            if name == "random_walk" and row["agent_auc"] > CONTROL_MAX_AUC:
                failures.append(f"control {name}: validation AUC {row['agent_auc']:.3f} > {CONTROL_MAX_AUC}")
            if name != "random_walk" and row["agent_auc"] < row["baseline_auc"] - MAX_BEHIND_BASELINE:
                failures.append(f"{name}: agent AUC {row['agent_auc']:.3f} is more than {MAX_BEHIND_BASELINE} below "
                                f"the linear baseline's {row['baseline_auc']:.3f}")

    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    print()
    print("| data | agent val AUC | linear baseline val AUC | agent - baseline, 95% CI | latent-signal AUC | "
          "out-of-sample Sharpe (B&H) | trades | epochs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {f(r['agent_auc'])} | {f(r['baseline_auc'])} | "
              f"{f(r['agent_auc'] - r['baseline_auc'], '+.3f')} ({f(r['diff_low'], '+.3f')}..{f(r['diff_high'], '+.3f')}) | "
              f"{f(r['oracle_auc'])} | {f(r['sharpe'], '.2f')} ({f(r['bh_sharpe'], '.2f')}) | {r['trades']} | {r['epochs']} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if failures:
        for line in failures:
            print(f"FAIL: {line}", file=sys.stderr)
        return 1
    print(f"checks passed: control AUC <= {CONTROL_MAX_AUC}; agent within {MAX_BEHIND_BASELINE} of the baseline "
          "on every planted signal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
