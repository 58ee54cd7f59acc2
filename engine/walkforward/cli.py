"""Walk-forward command line: the argument parser, its mapping onto WalkForwardConfig, and ``main``.

Light imports only: ``--help`` and usage errors answer before torch, optuna or pandas are loaded;
``main`` imports the orchestration (:mod:`engine.walkforward.run`) once the arguments are good.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from agents.training.config import field_defaults
from datafeeds.cli import ArgumentParser, UsageError, run_command
from datafeeds.errors import escape
from engine.walkforward import space
from engine.config import ENGINES
from datafeeds.errors import did_you_mean
from engine.walkforward.config import OBJECTIVES, WalkForwardConfig, base_defaults
from labeling.rules import SIZINGS


def _choice(name: str, options):
    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown {name} {text!r};{did_you_mean(text, options)} "
                                             f"choose from {', '.join(options)}")
        return text
    return parse


def _search_arg(text: str) -> tuple[str, ...]:
    try:
        return space.parse_groups(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--search: ")) from None


def cpcv_arg(text: str) -> tuple[int, int]:
    """argparse type of ``--cpcv N,K``: two integers (checked by ``check_cpcv``)."""
    try:
        n, k = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give N,K, e.g. 6,2 (N groups, K of them tested)") from None
    return n, k


def build_parser() -> argparse.ArgumentParser:
    d, b = field_defaults(WalkForwardConfig), base_defaults()
    p = ArgumentParser(
        prog="python -m engine.walkforward", allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Walk-forward tuning: per fold, Optuna picks hyperparameters on train/validation, the best "
        "is retrained on train+validation and traded on the next unseen test block; the chained test blocks "
        "are the out-of-sample result. Rerun the same command to resume; start it on several machines with "
        "one --storage URL to share the work.",
        epilog="Example: python -m engine.walkforward --folds 3 --trials 5   "
        "(bundled S&P 500, a few minutes on 2 cores). "
        "Outputs in --out: report.json, stitched_equity.png/.csv, fold<k>.onnx/.json, fold<k>_history.png, "
        "fold<k>_importance.png.",
    )
    g = p.add_argument_group("data and folds")
    g.add_argument("--data", default=d.data,
                   help="bundled sample name (sp500, nasdaq, eurusd_1h, ...) or a CSV/Parquet path; or a universe (a "
                   "bundled one such as us_daily, a folder, a glob or a comma list): one calendar of folds for all its "
                   "instruments, pooled training, validation and test traded as portfolios")
    g.add_argument("--normalise", type=_choice("normalisation", ("pooled", "per-symbol")), default=d.normalise,
                   help="a universe: normalise features with statistics pooled over its training bars, or per "
                   "instrument")
    g.add_argument("--max-positions", type=int, default=None,
                   help="a universe: positions held at once by its portfolio, shared cash, equity / N per entry "
                   "(default: one per instrument)")
    g.add_argument("--start", default=None, help="first date used, e.g. 2005-01-01")
    g.add_argument("--end", default=None, help="last date used")
    g.add_argument("--folds", type=int, default=d.folds, help="number of walk-forward folds (test blocks)")
    g.add_argument("--scheme", type=_choice("scheme", ("rolling", "anchored")), default=d.scheme,
                   help="rolling: fixed-length train window; anchored: train always starts at the first bar")
    g.add_argument("--test-frac", type=float, default=d.test_frac,
                   help="last fraction of the bars split into the test blocks")
    g.add_argument("--embargo", type=int, default=d.embargo,
                   help="bars left out after each test block. No fold trains on later data, so this only drops "
                   "out-of-sample bars: the stitched curve joins across each gap and its CAGR, which counts the "
                   "gaps' calendar time, then understates")
    g.add_argument("--cpcv", type=cpcv_arg, default=None, metavar="N,K",
                   help="also retrain the latest fold's selected configuration on every combinatorial purged "
                   "cross-validation split (N groups, K tested, e.g. 6,2: 15 trainings) and report the "
                   "Sharpe ratios of its C(N-1,K-1) paths (default: off)")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=d.trials, help="trials per fold, in total over all workers")
    g.add_argument("--timeout", type=float, default=None,
                   help="seconds of search per fold (and process); then the fold is finalised with the trials it has")
    g.add_argument("--objective", type=_choice("objective", tuple(OBJECTIVES)), default=d.objective,
                   help="val_loss: validation focal loss / that of the best constant prediction under the trial's own "
                   "loss (minimised; 1 = no skill); val_auc: validation AUC; "
                   "val_sharpe: Sharpe of a backtest on the validation block")
    g.add_argument("--search", type=_search_arg, default=d.search, metavar="GROUPS",
                   help="comma list of: model (d_model, layers, heads, dropout, lr, seq_len, focal alpha/gamma), "
                   "labels (pt, sl, horizon), strategy (threshold as a training signal rate, pt/sl at execution, "
                   "--size-step when sizing by probability; needs --objective val_sharpe; alone, the fold's model is "
                   "trained once and trials are scored in sweeps of 16), primary (the parameters of the --primary "
                   "rule: momentum lookback 5..60, smacross fast 3..15 and slow 20..80; its meta-labels and sides "
                   "follow)")
    g.add_argument("--epochs", type=int, default=d.epochs,
                   help="epochs per trial (the refit uses the best trial's best epoch)")
    g.add_argument("--seed", type=int, default=d.seed, help="sampler and model seed")
    g.add_argument("--n-jobs", type=int, default=d.n_jobs, help="trials in parallel threads in this process")
    g = p.add_argument_group("storage and output")
    g.add_argument("--study", default=None,
                   help="study name (default: wf_<data>); fold k's Optuna study is <study>_fold<k>")
    g.add_argument("--storage", default=None, help="Optuna RDB URL shared by all workers, e.g. "
                   "postgresql+psycopg2://user:pw@host/db (default: sqlite:///<out>/optuna.db)")
    g.add_argument("--out", default=None, help="output folder (default: reports/<study>)")
    g.add_argument("--heartbeat", type=int, default=d.heartbeat, help="seconds between worker heartbeats; "
                   "a trial silent for 3 heartbeats (killed worker) is failed and retried")
    g = p.add_argument_group("trading costs")
    g.add_argument("--cash", type=float, default=d.cash)
    g.add_argument("--commission", type=float, default=d.commission, help="fraction of traded value per side")
    g.add_argument("--slippage", type=float, default=d.slippage, help="fraction of price, against the trade")
    g.add_argument("--engine", type=_choice("engine", ENGINES), default=d.engine,
                   help="engine of each fold's test backtest (backtrader: the reference; fast: engine.fastsim); "
                   "trials' validation backtests always use fast")
    g.add_argument("--sizing", type=_choice("sizing", SIZINGS), default=None,
                   help="fixed: every entry the whole equity; probability: AFML sizes from the agent's probability, "
                   "averaged over the bets of the last horizon (None = probability with --primary, else fixed)")
    g.add_argument("--size-step", type=float, default=d.size_step,
                   help="round probability sizes to multiples of this, [0, 1) (0 = not rounded)")
    g = p.add_argument_group("base model and labels (used for everything not searched; an option of a "
                             "searched group is refused)")
    g.add_argument("--seq-len", type=int, default=b.seq_len)
    g.add_argument("--d-model", type=int, default=b.d_model)
    g.add_argument("--n-heads", type=int, default=b.n_heads)
    g.add_argument("--n-layers", type=int, default=b.n_layers)
    g.add_argument("--lr", type=float, default=b.lr)
    g.add_argument("--batch-size", type=int, default=b.batch_size)
    g.add_argument("--pt", type=float, default=b.pt, help="take-profit barrier in ATRs")
    g.add_argument("--sl", type=float, default=b.sl, help="stop-loss barrier in ATRs")
    g.add_argument("--horizon", type=int, default=b.horizon, help="vertical barrier in bars")
    g.add_argument("--primary", default=b.primary, metavar="SPEC",
                   help="meta-labeling: a primary rule whose bets become the events, labelled 1 when the bet's "
                   "profit-taker came first, and whose sides every backtest trades: smacross[:fast=10,slow=30] or "
                   "momentum[:lookback=20] (None = every bar, long); with --search primary, the rule whose "
                   "parameters are searched")
    g.add_argument("--quiet", action="store_true", help="only the summary")
    return p


def config_from_args(args: argparse.Namespace) -> WalkForwardConfig:
    base = dataclasses.replace(
        WalkForwardConfig().base, seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads,
        n_layers=args.n_layers, lr=args.lr, batch_size=args.batch_size, pt=args.pt, sl=args.sl, horizon=args.horizon,
        primary=args.primary,
    )
    return WalkForwardConfig(
        data=args.data, start=args.start, end=args.end, folds=args.folds, scheme=args.scheme,
        test_frac=args.test_frac, embargo=args.embargo, trials=args.trials, timeout=args.timeout,
        storage=args.storage, study=args.study, n_jobs=args.n_jobs, seed=args.seed, objective=args.objective,
        search=tuple(args.search), epochs=args.epochs, out=args.out, cash=args.cash, commission=args.commission,
        slippage=args.slippage, engine=args.engine, heartbeat=args.heartbeat, base=base, cpcv=args.cpcv,
        sizing=args.sizing, size_step=args.size_step, normalise=args.normalise, max_positions=args.max_positions,
    )


def main(argv: list[str] | None = None) -> int:
    """The command: parse, check, run (or resume) the walk-forward, print its summary; the exit status (2: a usage
    or input error; 1: the storage or disk failed, or a fold could not finish; 130: interrupted)."""
    return run_command(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m engine.walkforward" + ("" if not argv else " " + shlex.join(argv))
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    from agents import HardwareError
    from datafeeds import DataError
    from engine.walkforward.console import console_logging
    from engine.walkforward.report import summary_lines
    from engine.walkforward.run import run_walk_forward

    import optuna

    from engine.walkforward.storage import disk_full, redact

    resume = "rerun the same command to resume (finished trials and folds are kept)"
    try:
        with console_logging(quiet=args.quiet):
            report = run_walk_forward(cfg, command=command, progress=not args.quiet)
    except (DataError, ValueError, HardwareError) as exc:  # HardwareError: the container is too small
        raise UsageError(str(exc)) from None
    except optuna.exceptions.StorageInternalError as exc:  # the database failed (full, gone) after retries
        cause = str(exc.__cause__ or exc).splitlines()[0]
        print(f"error: the study storage {redact(cfg.storage_url)} failed: {cause}; "
              f"{'free space, then ' if disk_full(exc) else ''}{resume}", file=sys.stderr)
        return 1
    except OSError as exc:
        if disk_full(exc):
            print(f"error: cannot write {exc.filename or cfg.out_dir}: {exc.strerror}; free space, then {resume}",
                  file=sys.stderr)
            return 1
        # output folder or storage path not writable
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # CPython quirk: when the interrupt landed in code compiled from a string (exec/eval, as inside
        # dataclasses or SQLAlchemy), `python -m` dies by SIGINT at exit even though it was caught here;
        # a string exec clears that flag, so the exit status is 130 as printed
        exec("")
        print("\ninterrupted; finished trials are kept: rerun the same command to resume", file=sys.stderr)
        return 130
    for f in report["folds"]:
        if f["this_run"].startswith("skipped"):
            print(f"fold {f['fold']}: already finished ({f['trials']['complete'] + f['trials']['pruned']} trials), "
                  "resumed from the study: nothing recomputed")
    print("\n".join(summary_lines(report)))
    return 0
