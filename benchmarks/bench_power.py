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

``--meta`` runs the meta-labeling check instead (AFML 3.6 and ch. 10; no Transformer, seconds): does a
meta-model on a primary rule's bets, with bet sizing, beat the rule alone out of sample, where the rule is
right in an identifiable regime only, and not on a random walk? Per series: the rule's sides
(``labeling.primary_side``, ``momentum:lookback=20``), their meta-labels (``triple_barrier_labels(side=...)``,
the default barriers), causal features of each bar (``meta_features``: the side, volume and volatility
regimes, side-aligned returns, ATR/close), a purged chronological split (``labeling.purged_train_val_split``:
the last 40% of events out of sample, training events whose labels reach into it dropped, plus the horizon),
a meta-model fitted on the training events (the card's LightGBM baseline, ``fit_gbm``: weighted by average
uniqueness, early-stopped on the last 20% of its events; or ``--model logistic``), and three fast-engine
backtests of the out-of-sample bars with the same costs (``Costs()``) and barriers: the primary alone
(probability 1 at every bet, fixed size), the meta filter (bets whose probability reaches 0.5, fixed size)
and meta + sizing (the same bets sized by ``sizing="probability"``, ``labeling.entry_sizes``). Data:
``datafeeds.synthetic.regime_momentum`` (the rule's bets pay on heavy volume and lose, at half the
strength, on light volume) and the random-walk control, ``--seeds`` draws each, then the real series of
``--real`` (default ``sp500,us_daily``: each instrument its own model; printed, not checked).

Exit 1 (a FAIL line each) when, in annualised out-of-sample Sharpe of meta + sizing minus the primary alone:
- on the planted data the mean over seeds is below ``META_MARGIN``, or any seed's is not above 0;
- on the random walk the mean over seeds reaches ``META_MARGIN`` (there the meta-model can only trade less:
  fewer commissions, no skill).

    python benchmarks/bench_power.py --meta [--bars 40000] [--seeds 5] [--real sp500,us_daily] [--model gbm]
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
# --meta
META_PRIMARY = "momentum:lookback=20"  # the primary rule (labeling.parse_primary)
META_PLANTED = {"lookback": 20, "mu": 0.25, "revert": 0.5}  # datafeeds.synthetic.regime_momentum's parameters
META_SEEDS = {"planted": 201, "control": 301}  # each kind's first data seed; draw k adds k (and --seed-offset)
META_TEST = 0.4  # the last share of each series' events held out (labeling.purged_train_val_split)
# annualised Sharpe, meta + sizing minus the primary alone, mean over seeds: at least this on the planted data,
# less on the random walk; there the primary alone pays ~0.3 of Sharpe in commissions (Costs()) that a
# meta-model trading less avoids without skill, and one 40,000-bar draw's difference varies by ~0.2
META_MARGIN = 0.5
META_REAL = "sp500,us_daily"
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
    ap.add_argument("--datasets", default=None, help=f"comma list of: {', '.join(DATASETS)} (default: all)")
    ap.add_argument("--seed-offset", type=int, default=0, help="added to every dataset's seed: other draws")
    ap.add_argument("--meta", action="store_true",
                    help="run the meta-labeling check instead: meta-model + sizing against the primary rule alone")
    ap.add_argument("--seeds", type=int, default=None, help="--meta: draws of the planted data and of the control "
                                                            "(default 5)")
    ap.add_argument("--real", default=None, help=f"--meta: comma list of samples or universes run after the checks, "
                                                 f"printed only (default {META_REAL}; none: skip)")
    ap.add_argument("--model", choices=("gbm", "logistic"), default=None,
                    help="--meta: the meta-model, LightGBM (default) or logistic regression")
    args = ap.parse_args(argv)
    if args.bars < 2_000:
        ap.error(f"--bars must be at least 2000, got {args.bars}")
    if args.meta:
        if args.epochs is not None or args.datasets is not None:
            ap.error("--epochs and --datasets are the learner check's; --meta takes --bars, --seeds, --real, "
                     "--model and --seed-offset")
        if args.seeds is not None and args.seeds < 1:
            ap.error(f"--seeds must be >= 1, got {args.seeds}")
        return meta_main(args)
    for flag in ("seeds", "real", "model"):
        if getattr(args, flag) is not None:
            ap.error(f"--{flag} is an option of --meta")
    names = [s.strip() for s in (args.datasets or ",".join(DATASETS)).split(",") if s.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
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


def meta_features(df, side):
    """Causal features of each bar's bet (row t reads bars <= t; NaN in warm-up), a DataFrame on ``df``'s index:
    ``side`` (the primary's, 0 without a bet); ``volume_regime``, the mean log volume of the last 5 bars less
    that of the last 250, in the latter's standard deviations (0 where volume does not vary); ``vol_regime``,
    the standard deviation of the last 10 log returns over that of the last 100; ``ret_1``, ``ret_5``,
    ``ret_20``, the log return of the last 1, 5, 20 bars times the side, in 100-bar standard deviations scaled
    by the square root of the bars; ``atr_close``, ATR(14) over close."""
    import numpy as np
    import pandas as pd

    import labeling

    close = df["close"].to_numpy(np.float64)
    log_close = pd.Series(np.log(close))
    r = log_close.diff()
    sd = r.rolling(100).std().to_numpy()
    s = pd.Series(side).reindex(df.index, fill_value=0).to_numpy(np.float64)
    lv = pd.Series(np.log1p(df["volume"].to_numpy(np.float64)))
    lv_sd = lv.rolling(250).std().to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        vz = (lv.rolling(5).mean() - lv.rolling(250).mean()).to_numpy() / lv_sd
    vz[np.isfinite(lv_sd) & ~(lv_sd > 1e-12)] = 0.0  # constant volume (an index without it): no regime to read
    out = {"side": s, "volume_regime": vz, "vol_regime": (r.rolling(10).std() / r.rolling(100).std()).to_numpy()}
    for k in (1, 5, 20):
        out[f"ret_{k}"] = s * log_close.diff(k).to_numpy() / (sd * np.sqrt(k))
    out["atr_close"] = labeling.atr(df["high"], df["low"], df["close"], 14) / close
    return pd.DataFrame(out, index=df.index)


def meta_run(df, *, primary: str = META_PRIMARY, model: str = "gbm", seed: int = 0, latent=None, costs=None) -> dict:
    """One series through the meta-labeling pipeline (see the module docstring): the out-of-sample meta-label
    AUC (and ``latent``'s, the ceiling, where given), the annualised out-of-sample Sharpe of the primary alone,
    the meta filter and meta + sizing (0 for a run without trades), their trades, and the model's facts.
    ``costs``: the three backtests' (default ``Costs()``)."""
    import numpy as np
    import pandas as pd

    import labeling
    from agents.artifact.baseline import auc_of, fit_gbm, fit_logistic
    from engine import BarrierRules, Costs, RunConfig, run_backtest
    from labeling.weights import average_uniqueness

    t0 = time.perf_counter()
    sides = labeling.primary_side(df, labeling.parse_primary(primary))
    labels = labeling.triple_barrier_labels(df, side=sides)  # the default barriers: the rules' below too
    x = meta_features(df, sides)
    labels = labels[x.loc[labels.index].notna().all(axis=1).to_numpy()]  # events past the features' warm-up
    pos, t1 = df.index.get_indexer(labels.index), df.index.get_indexer(labels["t1"])
    # purged: no training label reaches the first test bar, and the horizon lies between them
    train, test = labeling.purged_train_val_split(pos, t1, val_fraction=META_TEST)
    v0 = int(test[0])
    rows = np.searchsorted(pos, train)
    x_tr, y_tr = x.to_numpy()[train], labels["label"].to_numpy()[rows] > 0
    x_oos = x.to_numpy()[v0:]
    bet = np.isfinite(x_oos).all(axis=1) & (x_oos[:, 0] != 0)  # bars from the first test event on
    if model == "gbm":
        fitted = fit_gbm(x_tr, y_tr, weight=average_uniqueness(train, t1[rows], len(df)),
                         n_stop=int(round(len(y_tr) * 0.2)), seed=seed)
        p = fitted.predict_proba(x_oos[bet].astype(np.float32))[:, 1]
        trees = int(fitted.best_iteration_ or fitted.booster_.current_iteration())
    else:
        mean, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
        sd[sd == 0] = 1.0
        fitted = fit_logistic((x_tr - mean) / sd, y_tr, seed=seed)
        p = fitted.predict_proba((x_oos[bet] - mean) / sd)[:, 1]
        trees = None
    prob = np.full(len(df), np.nan)
    prob[v0:][bet] = p
    prob = pd.Series(prob, index=df.index)
    y_te = labels["label"].to_numpy()[np.searchsorted(pos, test)] > 0
    auc = float(auc_of(y_te, prob.to_numpy()[test])[0])
    latent_auc = None if latent is None else float(auc_of(y_te, np.asarray(latent)[test])[0])

    run = RunConfig(engine="fast", start=df.index[v0])
    costs = Costs() if costs is None else costs
    out = {"bars": len(df), "train_events": int(len(train)), "test_events": int(len(test)),
           "train_rate": float(y_tr.mean()), "auc": auc, "latent_auc": latent_auc, "trees": trees,
           "oos_start": str(df.index[v0].date())}
    for name, signal, sizing in (("primary", pd.Series(1.0, index=df.index), "fixed"), ("filter", prob, "fixed"),
                                 ("sized", prob, "probability")):
        res = run_backtest(df, "agent", signal=signal, side=sides, rules=BarrierRules(threshold=0.5, sizing=sizing),
                           costs=costs, run=run)
        sharpe = res.stats["sharpe"]
        out[name] = 0.0 if sharpe is None else float(sharpe)  # None: no trades, flat equity
        out[f"{name}_trades"] = int(res.stats["n_trades"])
    out["diff"] = out["sized"] - out["primary"]
    out["seconds"] = time.perf_counter() - t0
    return out


def meta_checks(rows: list[dict]) -> list[str]:
    """The FAIL lines of the meta-labeling check (empty when it passes): ``rows`` with ``kind`` planted,
    control or real (real rows are not checked), ``seed`` and ``diff`` (meta + sizing - primary, Sharpe)."""
    out = []
    for kind in ("planted", "control"):
        got = [r for r in rows if r["kind"] == kind]
        if not got:
            continue
        mean = sum(r["diff"] for r in got) / len(got)
        if kind == "planted":
            if mean < META_MARGIN:
                out.append(f"planted: meta + sizing beats the primary alone by {mean:+.2f} of Sharpe on average "
                           f"over {len(got)} draw(s), less than {META_MARGIN}")
            out += [f"planted seed {r['seed']}: meta + sizing {r['diff']:+.2f} of Sharpe against the primary "
                    "alone, not above it" for r in got if not r["diff"] > 0]
        elif mean >= META_MARGIN:
            out.append(f"control: on a random walk meta + sizing beats the primary alone by {mean:+.2f} of Sharpe "
                       f"on average over {len(got)} draw(s), at least {META_MARGIN}")
    return out


def meta_main(args) -> int:
    """``--meta``: the planted and control draws, the checks, then the real series; the exit status."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import load_avg, machine_info

    import datafeeds
    from datafeeds import synthetic
    from engine import Costs

    model = args.model or "gbm"
    seeds = 5 if args.seeds is None else args.seeds
    real = META_REAL if args.real is None else args.real
    sources = [] if real.strip().lower() in ("", "none") else [s.strip() for s in real.split(",") if s.strip()]
    series = {}  # symbol -> frame, in order, each once
    try:
        for src in sources:
            for symbol, frame in datafeeds.load_universe(src).items():
                series.setdefault(symbol, frame)
    except (datafeeds.DataError, ValueError) as exc:
        print(f"error: --real: {exc}", file=sys.stderr)
        return 2
    if model == "gbm":
        import lightgbm as learner
    else:
        import sklearn as learner
    print(f"machine: {machine_info(np, pd, learner)}; {load_avg()}")
    c = Costs()
    print(f"meta-labeling check: primary {META_PRIMARY}; meta-model {model}; {args.bars:,} bars per draw, "
          f"{seeds} draw(s) each (seeds +{args.seed_offset}); last {META_TEST:.0%} of events out of sample; "
          f"commission {c.commission:g} per side, slippage {c.slippage:g}; planted: regime_momentum "
          f"{META_PLANTED}", flush=True)
    rows = []
    t_all = time.perf_counter()
    for kind in ("planted", "control"):
        for k in range(seeds):
            seed = META_SEEDS[kind] + k + args.seed_offset
            if kind == "planted":
                df, latent = synthetic.regime_momentum(args.bars, seed=seed, **META_PLANTED)
            else:
                df, latent = synthetic.random_walk(args.bars, seed=seed)
                latent = None
            row = {"data": "regime_momentum" if kind == "planted" else "random_walk", "kind": kind, "seed": seed,
                   **meta_run(df, model=model, seed=seed, latent=latent)}
            rows.append(row)
            print(f"  {_meta_line(row)}", flush=True)
    failures = meta_checks(rows)
    for symbol, df in series.items():
        row = {"data": symbol, "kind": "real", "seed": None, **meta_run(df, model=model)}
        rows.append(row)
        print(f"  {_meta_line(row)}", flush=True)

    print()
    print("| data | kind | seed | bars | out of sample from | meta AUC (latent) | primary alone | meta filter | "
          "meta + sizing | meta + sizing - primary | trades (primary / filter / sizing) | trees | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['kind']} | {'-' if r['seed'] is None else r['seed']} | {r['bars']:,} | "
              f"{r['oos_start']} | {_f(r['auc'])} ({_f(r['latent_auc'])}) | {r['primary']:.2f} | {r['filter']:.2f} | "
              f"{r['sized']:.2f} | {r['diff']:+.2f} | {r['primary_trades']} / {r['filter_trades']} / "
              f"{r['sized_trades']} | {'-' if r['trees'] is None else r['trees']} | {r['seconds']:.1f} |")
    print("\nSharpe: annualised, out of sample, fast engine; 0.00 with no trades")
    for kind in ("planted", "control", "real"):
        got = [r["diff"] for r in rows if r["kind"] == kind]
        if got:
            print(f"{kind}: meta + sizing - primary alone, mean {sum(got) / len(got):+.2f} over {len(got)} "
                  f"(each: {', '.join(f'{d:+.2f}' for d in got)})")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if failures:
        for line in failures:
            print(f"FAIL: {line}", file=sys.stderr)
        return 1
    print(f"checks passed: meta + sizing beats the primary alone by at least {META_MARGIN} of Sharpe on average on "
          f"the planted data (every draw above 0), and by less than {META_MARGIN} on the random walk")
    return 0


def _meta_line(r: dict) -> str:
    seed = "" if r["seed"] is None else f" seed {r['seed']}"
    return (f"{r['data']}{seed}: AUC {_f(r['auc'])}; Sharpe primary {r['primary']:.2f}, filter {r['filter']:.2f}, "
            f"meta + sizing {r['sized']:.2f} ({r['diff']:+.2f}); {r['seconds']:.1f} s")


def _f(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


if __name__ == "__main__":
    sys.exit(main())
