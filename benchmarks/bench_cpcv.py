"""Real data, honestly: the default agent against logistic regression and LightGBM across CPCV paths.

For each instrument (a bundled sample, a file, or every member of a universe such as ``us_daily``), the
three models are retrained on every combinatorial purged split (``agents.training.compare``: same Triple Barrier
labels, training events, sample weights and normalisation; the agent early-stops, and LightGBM stops,
on the last 20% of the split's training events, never on a test group) and scored by AUC on the test
groups. Printed per instrument: each model's AUC over the paths (median, min..max) and the paired
difference agent minus each baseline (median, min..max, share of paths above 0); then the differences
over every (instrument, path).

    python benchmarks/bench_cpcv.py [--data us_daily] [--cpcv 5,2] [--epochs N] [--json FILE]

A universe's members are compared one by one, each with its own agent (pooled training on a universe
under CPCV is walk-forward's job).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from datafeeds.cli import ArgumentParser
from engine.walkforward.cli import cpcv_arg
from engine.walkforward.config import check_cpcv


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["us_daily"],
                    help="samples, files or universes (a universe: each member); default: us_daily")
    ap.add_argument("--cpcv", type=cpcv_arg, default=(5, 2), metavar="N,K",
                    help="N contiguous groups, K tested per split (C(N,K) trainings, C(N-1,K-1) paths); default 5,2")
    ap.add_argument("--epochs", type=int, default=None,
                    help="most epochs per training; default: TrainConfig's (early stopping may end sooner)")
    ap.add_argument("--json", type=Path, default=None, help="also write every split's and path's numbers here")
    args = ap.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")
    try:
        check_cpcv(*args.cpcv)
    except ValueError as exc:
        ap.error(str(exc))

    import numpy as np
    import pandas as pd
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info

    from agents import compare_cpcv
    from agents.training.config import TrainConfig
    from agents.artifact.metadata import loss_label
    from datafeeds import DataError, load_universe
    from datafeeds.atomic import write_atomic

    frames = {}
    try:
        for item in args.data:
            frames.update(load_universe(item))  # a sample or file is a universe of one
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n, k = args.cpcv
    cfg = TrainConfig(**({} if args.epochs is None else {"epochs": args.epochs}))
    print(f"machine: {machine_info(np, pd, torch)}")
    print(f"CPCV {n} groups, {k} tested: {len(frames)} instruments; the default agent "
          f"(seq_len {cfg.seq_len}, {cfg.pooling} pooling, {loss_label(cfg.focal_alpha, cfg.focal_gamma)}, "
          f"at most {cfg.epochs} epochs), "
          f"logistic on the last bar, LightGBM on the last {min(cfg.seq_len, 16)} bars", flush=True)
    results, t_all = {}, time.perf_counter()
    for name, df in frames.items():
        t0 = time.perf_counter()
        try:
            res = compare_cpcv(dataclasses.replace(cfg, data=name), df, n, k, on_split=lambda r: print(
                f"  {name} split {r['split'] + 1}: best epoch {r['best_epoch']}, {r['agent_seconds']:.0f} s",
                flush=True))
        except ValueError as e:  # too few bars or events for these groups
            print(f"error: {name}: {e}", file=sys.stderr)
            return 2
        results[name] = res
        s = res["summary"]
        print(f"{name} ({res['first_bar'][:10]}..{res['last_bar'][:10]}, {res['bars']} bars, {res['n_paths']} paths, "
              f"{time.perf_counter() - t0:.0f} s): agent {_r(s['auc_agent'])}, logistic {_r(s['auc_logistic'])}, "
              f"gbm {_r(s['auc_gbm'])}", flush=True)

    print()
    print("| instrument | paths | agent AUC | logistic AUC | LightGBM AUC | agent - logistic | agent - LightGBM |")
    print("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        s = res["summary"]
        print(f"| {name} | {res['n_paths']} | {_r(s['auc_agent'])} | {_r(s['auc_logistic'])} | {_r(s['auc_gbm'])} | "
              f"{_d(s['agent_minus_logistic'])} | {_d(s['agent_minus_gbm'])} |")
    paths = [p for res in results.values() for p in res["paths"]]
    for key, what in (("agent_minus_logistic", "logistic"), ("agent_minus_gbm", "LightGBM")):
        v = np.array([p[key] for p in paths])
        if len(v):
            print(f"agent - {what} over all {len(v)} (instrument, path) pairs: median {np.median(v):+.3f}, "
                  f"mean {v.mean():+.3f}, {np.mean(v > 0):.0%} above 0")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if args.json is not None:
        write_atomic(args.json, json.dumps(results, indent=1).encode())
        print(f"wrote {args.json}")
    return 0


def _r(s: dict | None) -> str:
    return "n/a" if s is None else f"{s['median']:.3f} ({s['min']:.3f}..{s['max']:.3f})"


def _d(s: dict | None) -> str:
    return "n/a" if s is None else (f"{s['median']:+.3f} ({s['min']:+.3f}..{s['max']:+.3f}; "
                                    f"{s['share_positive']:.0%} > 0)")


if __name__ == "__main__":
    sys.exit(main())
