"""Wall time and peak RSS of a universe walk-forward: 50 instruments x 5,000 daily bars by default.

The universe is synthetic: instrument i's bars are bootstrapped from the real sp500 daily bars
(`_common.bootstrap_bars`: each drawn bar brings its close-to-close log return, its open/high/low
offsets from its close and its volume, jointly; seed ``seed * 1000 + i``) and put on a business-day
index from 2000-01-03, so that it looks like daily bars. So that the calendar of the folds (the union
of the members' bar times) is exercised, every 10th instrument from the 4th starts late (its first
20% of the days missing), every 10th from the 8th ends early (its last 15% missing), and every
instrument misses 1% of the days at random (its own holidays). The members are written as CSV files
(``SYN000.csv`` ...) into a temporary folder, which ``--data`` then names: the walk-forward reads
them as any universe folder (`datafeeds.load_universe`).

The walk-forward runs in a fresh child process (its peak RSS, VmHWM, is its own) as
``python -m engine.walkforward --data <folder>`` with small settings that still exercise every
step (defaults: ``--folds 2 --trials 2 --search labels --objective val_sharpe``, a tiny model
``--epochs 1 --seq-len 16 --d-model 16 --n-heads 2``, ``--quiet``): the feature store built from
the CSVs (into the temporary folder, ``TBM_CACHE``; a searched label setting builds its own),
pooled training per trial, each trial's validation block traded as one fast-engine portfolio, the
refit on train+validation, its ONNX export and the test block traded as a portfolio, the report.
``--search strategy`` trains each fold's model once and scores every trial's trading parameters on
it. The child calls the command's ``main`` in-process with timers wrapped around its steps (the
walk-forward's own functions, unchanged): universe load, feature store builds, trial training,
validation portfolios (and the portfolio backtests within them), search (all of a fold's trials),
refit training, ONNX export, the test signals (the exported agent on each member's history), the test
portfolio, finalise (refit, export, test signals and portfolio, plots) and report. Per-step peaks
come from resetting VmHWM (``/proc/self/clear_refs``) at the start of each top-level step (load,
search, finalise, report); "peak" is the largest of them and of the imports.

It prints the machine, the load average before and after, a table of the steps (seconds, calls,
peak RSS), the total wall time of the child, its peak RSS, the trades and the stitched
out-of-sample line of report.json; ``--json`` also prints the measurements as one JSON line.

    python benchmarks/bench_universe_wf.py [--instruments 50] [--bars 5000] [--folds 2] [--trials 2]
        [--epochs 1] [--search labels|strategy|...] [--seed 0] [--keep]

Training is most of the time (docs/PERFORMANCE.md): on 2 cores the defaults took ~10 minutes at the default
size; ``--trials 4 --epochs 2`` trains four times as much in the search.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _common import bootstrap_bars, load_avg, machine_info, reset_peak_rss  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from datafeeds.process import pid_alive  # noqa: E402

PER_PHASE = ("fit", "portfolio")  # timed apart by the top-level step that calls them: "fit (search)", ...
LATE_START, EARLY_END, MISSING = 0.20, 0.15, 0.01  # fractions of the calendar (see the docstring)
MODEL = ["--seq-len", "16", "--d-model", "16", "--n-heads", "2"]


def _status_kib() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


# ------------------------------------------------------------------------------------------ the data


def write_universe(folder: Path, n_instruments: int, n_bars: int, seed: int) -> dict:
    """Write the synthetic universe as ``folder/SYN<i>.csv``; what was written (bars, members cut)."""
    import numpy as np
    import pandas as pd

    from datafeeds import load_ohlcv

    src = load_ohlcv("sp500")
    calendar = pd.bdate_range("2000-01-03", periods=n_bars, name="datetime")
    folder.mkdir(parents=True, exist_ok=True)
    bars, late, early = 0, [], []
    for i in range(n_instruments):
        sym = f"SYN{i:03d}"
        df = bootstrap_bars(src, n_bars, seed * 1000 + i)
        df.index = calendar
        keep = np.random.default_rng(seed * 1000 + i).random(n_bars) >= MISSING
        keep[0] = keep[-1] = True
        if i % 10 == 3:
            keep[: int(n_bars * LATE_START)] = False
            late.append(sym)
        if i % 10 == 7:
            keep[n_bars - int(n_bars * EARLY_END):] = False
            early.append(sym)
        df = df[keep]
        df.to_csv(folder / f"{sym}.csv", float_format="%.6f")
        bars += len(df)
    return {"bars": bars, "calendar_days": n_bars, "late_start": late, "early_end": early,
            "first": str(calendar[0].date()), "last": str(calendar[-1].date())}


# --------------------------------------------------------------------------------------------- child


def run_child(result_path: str, wf_args: list[str]) -> int:
    """Run the walk-forward command in this process with timers around its steps; write the measurements."""
    t_start = time.perf_counter()
    import engine.walkforward.run as wfr
    from engine.walkforward import universe
    from engine.walkforward.cli import main
    from engine.walkforward.report import summary_lines

    out = {"imports_s": time.perf_counter() - t_start, "rss_imports": _status_kib()["VmRSS"],
           "peak_imports": _status_kib()["VmHWM"]}
    out["can_reset_peak"] = reset_peak_rss()
    steps: dict[str, dict] = {}  # name -> {"s", "calls", "peak"}
    current = ["other"]  # the top-level step running (the training of a trial and of the refit are told apart)

    def timed(name, fn, *, top=False, builds=None):
        def wrapper(*a, **kw):
            if builds is not None and builds(*a, **kw):  # a cached store is no build
                return fn(*a, **kw)
            key = f"{name} ({current[0]})" if name in PER_PHASE else name
            rec = steps.setdefault(key, {"s": 0.0, "calls": 0, "peak": 0})
            if top:
                current[0] = name
                reset_peak_rss()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                rec["s"] += time.perf_counter() - t0
                rec["calls"] += 1
                if top:
                    rec["peak"] = max(rec["peak"], _status_kib()["VmHWM"])
                    current[0] = "other"
        return wrapper

    def cached(u, tcfg):
        key = json.dumps([tcfg.feature_spec.to_dict(), tcfg.tbm.to_dict()], sort_keys=True)
        return key in u.stores

    wrapped = [(universe, "load", "load", dict(top=True)), (universe, "store", "store build", dict(builds=cached)),
               (wfr, "fit", "fit", {}), (wfr, "_validation_backtest", "validation portfolio", {}),
               (wfr, "_search", "search", dict(top=True)), (wfr, "export_agent", "onnx export", {}),
               (universe, "test_signals", "test signals", {}), (universe, "portfolio", "portfolio", {}),
               (wfr, "_finalise", "finalise", dict(top=True)), (wfr, "_report", "report", dict(top=True))]
    originals = [(module, attr, getattr(module, attr)) for module, attr, _, _ in wrapped]
    for module, attr, name, kw in wrapped:
        setattr(module, attr, timed(name, getattr(module, attr), **kw))
    t0 = time.perf_counter()
    try:
        rc = main(wf_args)
    finally:  # the walk-forward's own functions back (a caller in this process gets them unchanged)
        for module, attr, fn in originals:
            setattr(module, attr, fn)
    out["run_s"] = time.perf_counter() - t0
    out["wall_s"] = time.perf_counter() - t_start
    out["rc"] = rc
    out["steps"] = steps
    out["peak"] = (max([out["peak_imports"], *(r["peak"] for r in steps.values())]) if out["can_reset_peak"]
                   else _status_kib()["VmHWM"])
    if rc == 0:
        out_dir = Path(wf_args[wf_args.index("--out") + 1])
        report = json.loads((out_dir / "report.json").read_text())
        s = report["stitched"]["stats"]
        out["report"] = {"seconds": report["seconds"], "trades": s["n_trades"], "sharpe": s["sharpe"],
                         "total_return": s["total_return"], "calendar_bars": report["universe"]["calendar_bars"],
                         "trials": report["trials"],
                         "fold_trades": [f["stats"]["n_trades"] for f in report["folds"]],
                         "members_traded": [len(f.get("symbols") or []) for f in report["folds"]],
                         "lines": [ln for ln in summary_lines(report)
                                   if ln.startswith(("stitched out-of-sample", "buy and hold"))]}
    Path(result_path).write_text(json.dumps(out))
    return rc


# -------------------------------------------------------------------------------------------- parent


_PREFIX = "bench_universe_wf_"  # + pid + "_" + random: the data, output and feature stores of one run
ORDER = ["load", "store build", "fit (search)", "validation portfolio", "portfolio (search)", "search",
         "fit (finalise)", "onnx export", "test signals", "portfolio (finalise)", "finalise", "report"]
NOTES = {"store build": "feature store from the CSVs (in search)", "fit (search)": "trials' training (in search)",
         "validation portfolio": "trials' fast-engine portfolios (in search)",
         "search": "all trials: store, training, validation portfolio",
         "fit (finalise)": "refit on train+validation (in finalise)", "onnx export": "export + parity (in finalise)",
         "portfolio (search)": "of which the portfolio backtests",
         "test signals": "the ONNX agent on each member's history (in finalise)",
         "portfolio (finalise)": "the test block's portfolio backtest (in finalise)",
         "finalise": "refit, export, test portfolio, plots", "load": "read the CSVs, calendar union",
         "report": "stitch, DSR, PBO, report.json and plot"}


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the temporary folders of earlier runs whose process is gone (killed with -9: no finally)."""
    removed = []
    for path in folder.glob(f"{_PREFIX}*_*"):
        pid = path.name[len(_PREFIX):].split("_", 1)[0]
        if pid.isdigit() and path.is_dir() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def print_table(r: dict) -> None:
    mib = lambda kib: f"{kib / 1024:.0f}"  # noqa: E731
    rows = [["imports", f"{r['imports_s']:.1f}", "1", mib(r["peak_imports"]), "torch, pandas, optuna, ..."]]
    for name in ORDER + sorted(set(r["steps"]) - set(ORDER)):
        if name in r["steps"]:
            st = r["steps"][name]
            rows.append([name, f"{st['s']:.1f}", str(st["calls"]), mib(st["peak"]) if st["peak"] else "",
                         NOTES.get(name, "")])
    rows.append(["total (child)", f"{r['wall_s']:.1f}", "", mib(r["peak"]), "wall time; peak RSS (VmHWM)"])
    header = ["step", "seconds", "calls", "peak MiB", ""]
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(header)]
    for row in [header, None, *rows]:
        if row is None:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
            continue
        print("  ".join(v.ljust(w) if k in (0, 4) else v.rjust(w) for k, (v, w) in enumerate(zip(row, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=50,
                        help="instruments in the universe (default: %(default)s)")
    parser.add_argument("--bars", type=int, default=5000,
                        help="days of the calendar; a member has them all but the cut ones (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=2, help="walk-forward folds (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=2, help="trials per fold (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial (default: %(default)s)")
    parser.add_argument("--search", default="labels",
                        help="--search of the walk-forward: labels (each trial its own barriers, so its own feature "
                        "store and training), strategy (each fold's model trained once, every trial's trading "
                        "parameters scored on it), or another group list (default: %(default)s)")
    parser.add_argument("--objective", default="val_sharpe",
                        help="--objective of the walk-forward (strategy needs val_sharpe) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="bootstrap seed (instrument i draws with seed*1000+i) and the walk-forward's --seed "
                        "(default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (data/, out/ with report.json, cache/ with the feature "
                        "stores; its path is printed); by default it is removed at the end")
    parser.add_argument("--json", action="store_true", help="also print the measurements as one JSON line")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        raise SystemExit(run_child(args.child[0], args.child[1:]))
    if args.instruments < 1 or args.bars < 100:
        parser.error("need at least 1 instrument and 100 bars")

    import numpy as np
    import pandas as pd
    import torch

    print(machine_info(np, pd, torch))
    print(f"at start: {load_avg()}")
    sweep_stale(Path(tempfile.gettempdir()))
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a kill ends through the finally below, which removes the folder
        signal.signal(sig, _exit_on_signal)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}_"))
    try:
        t0 = time.perf_counter()
        data = write_universe(tmp / "data", args.instruments, args.bars, args.seed)
        print(f"universe: {args.instruments} instruments x {args.bars:,} business days {data['first']}..{data['last']} "
              f"({data['bars']:,} bars in all; late start {len(data['late_start'])}, early end "
              f"{len(data['early_end'])}, 1% of days missing per member), bootstrapped from sp500 daily bars, "
              f"seed {args.seed}; CSVs written in {time.perf_counter() - t0:.1f} s")
        wf_args = ["--data", str(tmp / "data"), "--out", str(tmp / "out"), "--folds", str(args.folds),
                   "--trials", str(args.trials), "--epochs", str(args.epochs), "--search", args.search,
                   "--objective", args.objective, "--seed", str(args.seed), *MODEL, "--quiet"]
        shown = [a if not a.startswith(str(tmp)) else a.replace(str(tmp), "$TMP") for a in wf_args]
        print("command: python -m engine.walkforward " + " ".join(shown) + "   (TBM_CACHE=$TMP/cache)\n", flush=True)
        env = {**os.environ, "TBM_CACHE": str(tmp / "cache")}
        result_path = tmp / "result.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(result_path), *wf_args],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        parent_wall = time.perf_counter() - t0
        if proc.returncode != 0 or not result_path.is_file():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"the walk-forward failed (exit {proc.returncode})")
        r = json.loads(result_path.read_text())
        r["parent_wall_s"] = parent_wall
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print_table(r)
    rep = r["report"]
    print(f"\nwall time {parent_wall:.1f} s (child process, start to exit; {r['run_s']:.1f} s in the command, "
          f"report.json seconds {rep['seconds']:.1f}); peak RSS {r['peak'] / 1024:.0f} MiB"
          + ("" if r["can_reset_peak"] else " (/proc/self/clear_refs refused: VmHWM at the end)"))
    print(f"calendar bars {rep['calendar_bars']:,}; trials {rep['trials']['complete']} complete, "
          f"{rep['trials']['pruned']} pruned, {rep['trials']['failed']} failed; test trades per fold "
          f"{rep['fold_trades']}, members traded per fold {rep['members_traded']}")
    for line in rep["lines"]:
        print(line)
    print(f"at end: {load_avg()}")
    if args.json:
        print(json.dumps({k: v for k, v in r.items()}))


if __name__ == "__main__":
    main()
