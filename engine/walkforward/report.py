"""Walk-forward results: stitching the folds' test curves, the Deflated Sharpe, plots, the summary and
the report files (written atomically: workers share the output folder)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from datafeeds import write_atomic
from engine.deflated_sharpe import deflated_sharpe_ratio, mean_within_group_variance
from engine.jsonable import jsonable
from engine.metrics import compute_stats, drawdown
from engine.overfitting import probability_of_backtest_overfitting
from engine.plotting import auto_log_scale
from engine.walkforward.console import fmt, format_params

matplotlib.use("Agg")  # headless, as engine.plotting
from matplotlib import dates as mdates, ticker as mticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

# Parameter importances (optuna's fANOVA) are drawn only from this many completed trials of a fold on:
# a random forest fitted to a handful of points ranks parameters by noise, and a bar chart would look sure.
MIN_TRIALS_FOR_IMPORTANCE = 10
PBO_MIN_BLOCK = 10  # validation bars per CSCV block at least (up to 16 blocks)


def stitch_equity(curves: list[pd.Series], cash: float) -> pd.Series:
    """Chain the folds' test equity curves (each starting with ``cash``) into one curve from ``cash``:
    each fold's curve is rescaled to start where the previous one ended."""
    parts, level = [], float(cash)
    for eq in curves:
        part = eq.astype(np.float64) * (level / float(cash))
        parts.append(part)
        level = float(part.iloc[-1])
    out = pd.concat(parts)
    if not out.index.is_monotonic_increasing or out.index.has_duplicates:
        raise ValueError("fold test blocks overlap or are out of order; cannot stitch them")
    return out.rename("equity")


def stitched_result(results: list[dict], cash: float, ppy: float):
    """The folds' test blocks chained: (test curves, equity, benchmark equity, stats, benchmark stats)."""
    curves = [pd.Series(r["equity"], index=pd.DatetimeIndex(r["index"])) for r in results]
    bench = [pd.Series(r["benchmark_equity"], index=pd.DatetimeIndex(r["index"])) for r in results]
    equity, bench_equity = stitch_equity(curves, cash), stitch_equity(bench, cash)
    trades = pd.DataFrame([t for r in results for t in r["trades"]])
    if len(trades):
        for col in ("entry_time", "exit_time"):
            trades[col] = pd.to_datetime(trades[col])
    stats = compute_stats(equity, trades if len(trades) else None, periods_per_year=ppy)
    bench_stats = compute_stats(bench_equity, periods_per_year=ppy, exposure=1.0)
    return curves, equity, bench_equity, stats, bench_stats


def member_contributions(results: list[dict], cash: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A universe's members in the stitched out-of-sample run: per member its share of each fold's return (pnl /
    the fold's starting cash) and of the stitched return (pnl scaled as ``stitch_equity`` scales its fold, / cash:
    the members' overall shares add up to the stitched return), with trades and wins; and each member's
    cumulative overall share at each trade's exit (the picture's lines)."""
    level, rows, steps = float(cash), {}, []
    for r in results:
        scale = level / float(cash)
        for t in r["trades"]:
            row = rows.setdefault(t["symbol"], {"symbol": t["symbol"], "overall": 0.0, "trades": 0, "wins": 0})
            row["overall"] += t["pnl"] * scale / float(cash)
            row["trades"] += 1
            row["wins"] += int(t["pnl"] > 0)
            steps.append((pd.Timestamp(t["exit_time"]), t["symbol"], t["pnl"] * scale / float(cash)))
        for c in r.get("contribution") or []:
            row = rows.setdefault(c["symbol"], {"symbol": c["symbol"], "overall": 0.0, "trades": 0, "wins": 0})
            row[f"fold {r['fold']}"] = c["return_contribution"]
        level *= float(r["equity"][-1]) / float(cash)
    table = pd.DataFrame(list(rows.values()), columns=["symbol", *(f"fold {r['fold']}" for r in results), "overall",
                                                       "trades", "wins"]).set_index("symbol")
    table = table.sort_values("overall", ascending=False, kind="stable")
    if not steps:
        return table, pd.DataFrame(columns=table.index, dtype=np.float64)
    frame = pd.DataFrame(steps, columns=["time", "symbol", "share"]).sort_values("time", kind="stable")
    curves = frame.pivot_table(index="time", columns="symbol", values="share", aggfunc="sum").fillna(0.0).cumsum()
    return table, curves.reindex(columns=table.index, fill_value=0.0)


def deflated_sharpe(equity: pd.Series, results: list[dict], n_configs: int) -> dict:
    """DSR of the stitched test returns; N = ``n_configs``, V = mean within-fold variance of trial Sharpes."""
    groups = [[s for s in r["trial_val_sr"] if s is not None] for r in results]
    var, var_per_fold = mean_within_group_variance(groups)
    dsr = deflated_sharpe_ratio(equity.pct_change().dropna(), [s for g in groups for s in g], n_trials=n_configs,
                                var_trial_sharpe=var)
    pooled = [s for g in groups for s in g]
    dsr["var_method"] = (
        "mean over folds with >= 2 completed trials of the within-fold variance (ddof=1) of the trials' "
        "per-bar validation Sharpes (0 if no such fold); folds validate on different periods, so pooling "
        "them would measure regime differences, not search spread")
    dsr["var_per_fold"] = var_per_fold
    dsr["var_pooled_across_folds"] = float(np.var(pooled, ddof=1)) if len(pooled) >= 2 else None  # for reference
    dsr["note"] = ("N = all trials of all folds (complete + pruned): conservative, as each fold selects only "
                   "among its own trials; V as in var_method; SR, skew, kurtosis of the stitched test returns")
    return dsr


def fold_pbo(trials) -> dict:
    """The Probability of Backtest Overfitting of a fold's selection (CSCV over its completed trials'
    per-bar validation returns), or ``{"pbo": None, "why": ...}`` where it cannot be computed."""
    rows = [t.user_attrs.get("val_returns") for t in trials]
    rows = [r for r in rows if isinstance(r, list)]
    if len(rows) < 2:
        return {"pbo": None, "why": f"{len(rows)} completed trial(s) with validation returns; needs >= 2"}
    if len({len(r) for r in rows}) != 1:
        return {"pbo": None, "why": "trials' validation returns differ in length"}
    n_periods = len(rows[0])
    m = np.array(rows, dtype=np.float64).T
    if np.all(m == m[:, :1]):  # every trial the same returns (e.g. none traded): there is no selection to judge
        return {"pbo": None, "why": "every completed trial has the same validation returns"}
    n_blocks = min(16, n_periods // PBO_MIN_BLOCK) // 2 * 2
    if n_blocks < 2:
        return {"pbo": None, "why": f"{n_periods} validation bars: needs >= {2 * PBO_MIN_BLOCK} for 2 blocks"}
    return probability_of_backtest_overfitting(m, n_blocks)


def pbo_summary(results: list[dict]) -> dict:
    """Per-fold PBO and their mean (the report's entry beside the Deflated Sharpe Ratio)."""
    per_fold = [r.get("pbo", {}).get("pbo") if isinstance(r.get("pbo"), dict) else None for r in results]
    known = [v for v in per_fold if v is not None]
    return {"per_fold": per_fold, "mean": float(np.mean(known)) if known else None,
            "note": "CSCV over each fold's completed trials (pruned trials have no validation backtest): the "
                    "probability that picking the best validation Sharpe among them is overfit, whatever the "
                    "run's --objective; ~0.5 = luck, ~0 = one configuration is really better",
            "method": next((r["pbo"]["method"] for r in results if isinstance(r.get("pbo"), dict)
                            and r["pbo"].get("method")), None)}


def plot_study(study: optuna.Study, out: Path, k: int, save) -> dict:
    """Optimisation history and, from MIN_TRIALS_FOR_IMPORTANCE completed trials with varied parameters on,
    parameter importances of one fold; ``save(fig, path)`` writes each figure. Returns the paths written
    and, when no importance plot was drawn, why (``importance_note``)."""
    paths = {"history": str(out / f"fold{k}_history.png"), "importance": None, "importance_note": None}
    # optuna's plots switch the global matplotlib style: keep that inside this block
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
        ax.set_title(f"fold {k}: optimisation history ({study.direction.name.lower()} {ax.get_ylabel()})")
        ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))  # trials are numbered
        save(ax.figure, Path(paths["history"]))
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
            paths["importance_note"] = (
                f"not drawn: {len(done)} completed trial(s), fewer than {MIN_TRIALS_FOR_IMPORTANCE}; "
                "fANOVA importances from so few trials are noise")
            return paths
        varied = [p for p in done[0].params if len({repr(t.params.get(p)) for t in done}) > 1]
        if not varied:
            paths["importance_note"] = f"not drawn: no parameter varied across the {len(done)} completed trials"
            return paths
        try:
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            paths["importance_note"] = f"not computable: {exc}"
            return paths
        ax.set_title(f"fold {k}: hyperparameter importances\nfrom {len(done)} trials (fANOVA): indicative only",
                     loc="left")  # replaces optuna's
        save(ax.figure, Path(out / f"fold{k}_importance.png"))
        paths["importance"] = str(out / f"fold{k}_importance.png")
    return paths


# members drawn one by one in the contributions panel (the largest overall, either way); the rest as one line
MEMBER_LINES = 8


def plot_stitched(equity: pd.Series, bench: pd.Series, boundaries, path: Path, title: str, save,
                  members: pd.DataFrame | None = None) -> None:
    """Stitched equity (log scale past a 10x range, as the backtest plot) and drawdown % vs buy-and-hold,
    each fold's test block dashed off and named; ``save(fig, path)`` writes it. ``boundaries``: the first
    bars of the blocks after the first, which starts at ``equity.index[0]``. ``members`` (a universe: the
    cumulative contributions of ``member_contributions``): a third panel of each member's share of the
    stitched return."""
    panels = 2 if members is None else 3
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(12, 7 if members is None else 9.5),
                             gridspec_kw={"height_ratios": [3, 1, 1.6][:panels]})
    a1, a2 = axes[0], axes[1]
    a1.plot(equity.index, equity.to_numpy(), label="walk-forward out-of-sample", color="tab:blue")
    bench_label = "buy and hold" if members is None else "equal-weight buy and hold"
    a1.plot(bench.index, bench.to_numpy(), label=bench_label, color="tab:gray", alpha=0.8)
    a2.fill_between(equity.index, 100.0 * drawdown(equity).to_numpy(), 0, color="tab:blue", alpha=0.4,
                    lw=0, label="walk-forward out-of-sample")
    a2.plot(bench.index, 100.0 * drawdown(bench).to_numpy(), color="tab:gray", lw=0.8, label=bench_label)
    starts = [equity.index[0], *boundaries]
    if members is not None:
        _plot_members(axes[2], members, equity.index)
    for ax in axes:
        for b in boundaries:
            ax.axvline(b, color="k", lw=0.6, ls="--", alpha=0.5)
    for i, start in enumerate(starts):  # at the top of the equity panel, just right of each block's start
        a1.annotate(f"fold {i}", (mdates.date2num(start), 1.0), xycoords=a1.get_xaxis_transform(),
                    xytext=(3, -3), textcoords="offset points", ha="left", va="top", fontsize=9, color="0.25")
    auto_log_scale(a1, equity, bench)
    a1.set_title(title)
    a1.set_ylabel("equity")
    a2.set_ylabel("drawdown %")
    a1.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93))  # below the fold names
    # above the panel's top right, where it cannot hide a drawdown (as in the backtest plot)
    a2.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=2, frameon=False, borderaxespad=0.1)
    for ax in axes:
        ax.grid(alpha=0.3)
    save(fig, path)


def _plot_members(ax, members: pd.DataFrame, index: pd.DatetimeIndex) -> None:
    """Each member's cumulative share of the stitched return (% of the starting cash, realised at its trades'
    exits) as a step line; past ``MEMBER_LINES`` members, the smallest together as one line."""
    curves = members.reindex(members.index.union(index[[0, -1]])).ffill().fillna(0.0)
    final = curves.iloc[-1]
    shown = list(final.abs().sort_values(ascending=False, kind="stable").index[:MEMBER_LINES])
    rest = [c for c in curves.columns if c not in shown]
    colours = plt.get_cmap("tab10").colors
    for i, sym in enumerate(sorted(shown, key=lambda c: -final[c])):
        ax.step(curves.index, 100.0 * curves[sym].to_numpy(), where="post", lw=1.2, color=colours[i % 10],
                label=f"{sym} {100 * final[sym]:+.1f}%")
    if rest:
        other = curves[rest].sum(axis=1)
        ax.step(curves.index, 100.0 * other.to_numpy(), where="post", lw=1.0, ls=":", color="0.3",
                label=f"{len(rest)} others {100 * other.iloc[-1]:+.1f}%")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_ylabel("member share %")
    ax.set_title("members' contributions to the stitched return (realised at each exit, % of starting cash)",
                 fontsize=9, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def summary_lines(report: dict) -> list[str]:
    """The printed summary: per-fold table, stitched result vs buy-and-hold, search size and DSR."""
    lines = [f"study {report['study']}  storage {report['storage']}",
             f"{'fold':>4}  {'test period':<23} {'trials c/p':>10} {'best ' + report['objective']['name']:>16} "
             f"{'return':>8} {'sharpe':>7} {'trades':>6} {'B&H':>8}  this run"]
    for f in report["folds"]:
        s, b = f["stats"], f["benchmark_stats"]
        lines.append(f"{f['fold']:>4}  {f['test'][0][:10]}..{f['test'][1][:10]} "
                     f"{f['trials']['complete']:>6}/{f['trials']['pruned']:<3} {fmt(f['best_value']):>16} "
                     f"{_pct(s['total_return']):>8} {fmt(s['sharpe'], '.2f'):>7} {s['n_trades']:>6} "
                     f"{_pct(b['total_return']):>8}  {f['this_run']}")
    s, b, d = report["stitched"]["stats"], report["stitched"]["benchmark_stats"], report["deflated_sharpe"]
    lines += [
        f"stitched out-of-sample {s['start'][:10]}..{s['end'][:10]}: return {_pct(s['total_return'])}  "
        f"CAGR {_pct(s['cagr'])}  Sharpe {fmt(s['sharpe'], '.2f')}  max DD {_pct(s['max_drawdown'])}  "
        f"trades {s['n_trades']}",
        f"buy and hold, same bars:  return {_pct(b['total_return'])}  CAGR {_pct(b['cagr'])}  "
        f"Sharpe {fmt(b['sharpe'], '.2f')}  max DD {_pct(b['max_drawdown'])}",
        f"configurations tried: {report['configurations_tried']} (all folds: {report['trials']['complete']} complete, "
        f"{report['trials']['pruned']} pruned; {report['trials']['failed']} failed)",
        f"deflated Sharpe ratio: {fmt(d['dsr'], '.3f')}  (per-bar SR {fmt(d['sharpe'])} vs SR0 {fmt(d['sr0'])} "
        f"expected from the best of {d['n_trials']} skill-less trials, V {d['var_trial_sharpe']:.2e} within-fold; "
        "0.95+ = unlikely to be search luck)",
        *_trading_lines(report["folds"]),
        *_universe_lines(report),
        _pbo_line(report.get("pbo")),
        *_cpcv_lines(report.get("cpcv")),
        f"new trials this run: {report['new_trials_this_run']}",
        f"wrote {report['files']['report']} and {report['files']['stitched_equity_png']}",
    ]
    return lines


def _trading_lines(folds: list[dict]) -> list[str]:
    """What each fold's test block traded, when not the plain long agent with fixed sizes: its primary rule
    (the sides) and its sizing."""
    def sizing(f: dict) -> str:
        e = f.get("execution") or {}
        name = e.get("sizing", "fixed")  # folds recorded before sizing existed: fixed
        return f"{name} sizing" + (f" (step {e.get('size_step', 0.0):g})" if name == "probability" else "")

    if all(not f.get("primary") and sizing(f) == "fixed sizing" for f in folds):
        return []
    return ["traded: " + "; ".join(f"fold {f['fold']} {f.get('primary') or 'long'}, {sizing(f)}" for f in folds)]


def _universe_lines(report: dict) -> list[str]:
    """A universe run: its members, the portfolio's settings, each fold's selection and validation Sharpe."""
    u = report.get("universe")
    if not isinstance(u, dict):
        return []
    lines = [f"universe of {len(u['symbols'])}: {', '.join(u['symbols'])[:200]}; one calendar of folds; normalise "
             f"{u['normalise']}; validation and test blocks traded as one portfolio, at most {u['max_positions']} "
             "positions, shared cash; buy and hold = equal weight of the members"]
    for f in report["folds"]:
        params = format_params(f["params"]) or "base"
        lines.append(f"  fold {f['fold']}: trial {f['best_trial']} ({params}), validation Sharpe "
                     f"{fmt(f.get('val_sharpe'), '.2f')}, test Sharpe {fmt(f['stats']['sharpe'], '.2f')}, "
                     f"{len(f.get('symbols') or [])} members traded")
    rows = u.get("contribution") or []
    if rows:
        folds = [k for k in rows[0] if k.startswith("fold ")]
        lines.append("members' share of each fold's return and of the stitched return (pnl / starting cash):")
        lines.append(f"  {'member':<12}" + "".join(f"{k:>9}" for k in folds) + f"{'overall':>9}{'trades':>8}{'won':>6}")
        shown = rows if len(rows) <= 2 * MEMBER_LINES else rows[:MEMBER_LINES] + rows[-MEMBER_LINES:]
        for r in shown:
            if len(rows) > 2 * MEMBER_LINES and r is rows[-MEMBER_LINES]:
                lines.append(f"  ... {len(rows) - 2 * MEMBER_LINES} more in report.json")
            won = f"{r['wins'] / r['trades']:.0%}" if r["trades"] else "-"
            lines.append(f"  {r['symbol'][:12]:<12}"  # "-": not a member with bars in that fold's test block
                         + "".join(f"{_pct(r[k]) if r.get(k) is not None else '-':>9}" for k in folds)
                         + f"{_pct(r['overall']):>9}{r['trades']:>8}{won:>6}")
    return lines


def _cpcv_lines(c: dict | None) -> list[str]:
    if not isinstance(c, dict):
        return []
    return [f"CPCV of the latest selection ({c['n_groups']} groups, {c['k_test']} tested; {c['n_splits']} trainings, "
            f"{c['n_paths']} paths): path Sharpe median {c['sharpe_median']:.2f}, 5%..95% {c['sharpe_p05']:.2f}.."
            f"{c['sharpe_p95']:.2f}, {c['share_positive']:.0%} of paths positive"]


def _pbo_line(pbo: dict | None) -> str:
    if not isinstance(pbo, dict) or pbo.get("mean") is None:
        return "probability of backtest overfitting: n/a in every fold (each fold's reason is in report.json)"
    folds = ", ".join(f"fold {k} {fmt(v, '.2f')}" for k, v in enumerate(pbo["per_fold"]))
    return (f"probability of backtest overfitting (CSCV, best validation Sharpe among each fold's trials): "
            f"{pbo['mean']:.2f} mean over folds ({folds}); 0.5 = selection by luck, 0 = a really better configuration")


# ------------------------------------------------------------------------------------ the files
# written through this module's `write_atomic`: workers share the output folder
def save_figure(fig, path: Path) -> None:
    """PNG of ``fig`` written atomically (workers may write the same fold's plots); closes ``fig``."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False).encode())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv().encode())
