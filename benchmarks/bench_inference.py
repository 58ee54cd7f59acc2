"""Benchmark: windows/s of the shipped agent, batched and one bar at a time, ONNX Runtime vs torch eager.

On bootstrapped S&P 500 bars (see bench_backtest.bootstrap_bars), with the shipped agent's features:
- ORT batch: ``OnnxAgent.predict_proba`` over all bars (features + windows + session.run, batches of
  ``--batch``; session load and a warm-up call excluded), and ``session.run`` alone at that batch;
- torch eager batch: a ``TransformerAgent`` built from the agent's ``ModelConfig`` with random weights
  (the ONNX file holds no torch weights; speed does not depend on weight values), eval + inference_mode;
- per bar: torch eager and ``session.run`` on one (1, L, F) window per call, and the streaming
  ``OnnxAgent.update`` (features over the bounded history tail + one batch-1 run), each timed on a
  subset of bars and reported as windows/s;
- threads: ORT ``intra_op_num_threads`` and ``torch.set_num_threads`` at 1 and at every usable core.

    python benchmarks/bench_inference.py [--bars 20000 --per-bar 300 --agent models/agent1.onnx]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_bars, load_avg, machine_info  # noqa: E402

import datafeeds  # noqa: E402
from agents import ModelConfig, OnnxAgent, TransformerAgent, compute_features  # noqa: E402
from agents.artifact.runtime import BATCH_SIZE, STREAM_HISTORY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session(path: str, threads: int) -> ort.InferenceSession:
    """An ORT session on the agent file; threads=0 is ORT's default (one per physical core)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def windows_per_s(run, windows: np.ndarray, batch: int, n: int, repeat: int) -> float:
    """Best windows/s of `repeat` passes of run(chunk) over the first n windows in chunks of `batch`,
    after one untimed chunk. Chunks are contiguous copies made before timing."""
    chunks = [np.array(windows[i : min(i + batch, n)]) for i in range(0, n, batch)]
    run(chunks[0])  # warm-up: allocations, kernel choice for this shape
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for chunk in chunks:
            run(chunk)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=BATCH_SIZE, help="default: predict_proba's own")
    ap.add_argument("--per-bar", type=int, default=200, help="bars timed for each one-bar-at-a-time path")
    ap.add_argument("--thread-batches", type=int, default=3, help="batches timed per thread setting")
    ap.add_argument("--sweep", type=int, nargs="*", default=[16, 64, 1024], help="extra batch sizes timed")
    ap.add_argument("--repeat", type=int, default=2, help="passes per session.run/torch measurement; the best is kept")
    ap.add_argument("--agent", default=str(ROOT / "models" / "agent1.onnx"))
    args = ap.parse_args()

    print(machine_info(ort, torch, np))
    print(f"at start: {load_avg()}")
    t0 = time.perf_counter()
    agent = OnnxAgent.load(args.agent)
    t_load = time.perf_counter() - t0
    if args.bars < agent.warmup + args.batch + args.per_bar:
        ap.error(f"--bars must be >= warm-up {agent.warmup} + --batch + --per-bar")
    df = bootstrap_bars(datafeeds.load_ohlcv("sp500"), args.bars, args.seed)
    cfg = ModelConfig.from_dict(agent.meta["model"])
    L, F = agent.seq_len, len(agent.feature_names)
    print(f"agent {args.agent}: seq_len {L}, {F} features, warm-up {agent.warmup} bars, model {cfg.to_dict()}")

    # -- ORT batch through the public API -------------------------------------------------------------
    agent.predict_proba(df.iloc[: agent.warmup + args.batch])  # warm-up: numba cache load, ORT arenas
    t0 = time.perf_counter()
    probs = agent.predict_proba(df, batch_size=args.batch)
    t_pred = time.perf_counter() - t0
    n_win = int(np.isfinite(probs.to_numpy()).sum())
    t0 = time.perf_counter()
    x, _ = compute_features(df, agent.spec)
    t_feat = time.perf_counter() - t0

    # The same windows for the other paths: normalised as the agent does, (n_win, L, F) float32 views.
    mean = np.asarray(agent.meta["normalisation"]["mean"])
    std = np.asarray(agent.meta["normalisation"]["std"])
    xn = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    finite = np.isfinite(xn).all(axis=1)
    first = int(finite.argmax())  # features are finite from here on (checked below)
    windows = np.lib.stride_tricks.sliding_window_view(xn[first:], L, axis=0).transpose(0, 2, 1)  # (W, L, F)
    if not finite[first:].all() or len(windows) != n_win:
        raise SystemExit(f"window count {len(windows)} != finite probabilities {n_win}: features have gaps")

    model = TransformerAgent(cfg).eval()
    torch_threads = torch.get_num_threads()
    cores = usable_cores()
    rows = []  # (path, threads, batch, windows/s, timed on)

    def torch_run(b):
        with torch.inference_mode():
            model(torch.from_numpy(b))

    def ort_run(sess):
        name = sess.get_inputs()[0].name
        return lambda b: sess.run(None, {name: b})

    def add(path, threads, batch, run, wins, n, repeat=args.repeat):
        rows.append((path, threads, batch, windows_per_s(run, wins, batch, n, repeat),
                     f"{n} bars" if batch == 1 else f"{n:,} windows"))

    rows.append(("ORT OnnxAgent.predict_proba (features+windows+run)", "default", args.batch, n_win / t_pred,
                 f"{n_win:,} windows"))
    add("torch eager", torch_threads, args.batch, torch_run, windows, n_win, repeat=1)

    # Threads: ORT intra_op_num_threads and torch.set_num_threads, at --batch and one window per call.
    k_win = min(n_win, args.thread_batches * args.batch)
    m = args.per_bar
    last = windows[n_win - m :]  # the last m windows, one per call
    for th in sorted({1, cores}):
        run = ort_run(session(args.agent, th))
        add("ORT session.run", th, args.batch, run, windows, k_win)
        add("ORT session.run, per bar", th, 1, run, last, m)
        torch.set_num_threads(th)
        add("torch eager", th, args.batch, torch_run, windows, k_win)
        add("torch eager, per bar", th, 1, torch_run, last, m)
    torch.set_num_threads(torch_threads)

    # Batch size at the default thread settings (OnnxAgent's session uses ORT's default).
    run = ort_run(session(args.agent, 0))
    for bs in args.sweep:
        n_sw = min(n_win, max(bs, 2 * args.batch))
        add("ORT session.run", "default", bs, run, windows, n_sw)
        add("torch eager", torch_threads, bs, torch_run, windows, n_sw)

    # Streaming: the agent keeps a bounded tail of bars, so streaming only the `keep` bars before the
    # timed ones leaves it in the same state as streaming everything from bar 0.
    start = len(df) - m  # the timed bars are those of the last m windows
    keep = agent.warmup + 1 + STREAM_HISTORY
    bars = [{"datetime": r.Index, "open": r.open, "high": r.high, "low": r.low, "close": r.close,
             "volume": r.volume} for r in df.iloc[start - keep :].itertuples()]
    agent.reset()
    t0 = time.perf_counter()
    for bar in bars[:keep]:
        agent.update(bar)
    t_prime = time.perf_counter() - t0
    t0 = time.perf_counter()
    streamed = np.array([agent.update(bar) for bar in bars[keep:]])
    t_stream = time.perf_counter() - t0
    gap = float(np.max(np.abs(streamed - probs.to_numpy()[start : start + m])))
    rows.append(("ORT OnnxAgent.update, streaming", "default", 1, m / t_stream, f"{m} bars, {keep:,}-bar tail"))

    print(f"bars: {len(df):,} (seed {args.seed}); windows: {n_win:,}; agent load {t_load:.2f} s (excluded); "
          f"compute_features alone {t_feat * 1e3:.0f} ms; priming the stream with {keep:,} bars took {t_prime:.1f} s")
    print(f"streaming vs batch probabilities on the {m} timed bars: max |diff| {gap:.2e}")
    print(f"ORT default intra_op threads = one per physical core; torch default threads = {torch_threads}")
    print(f"\n{'path':52s} {'threads':>7s} {'batch':>6s} {'windows/s':>10s} {'ms/window':>10s}  timed on")
    for path, th, bs, wps, note in rows:
        print(f"{path:52s} {th!s:>7s} {bs:6d} {wps:10,.0f} {1e3 / wps:10.3f}  {note}")
    print(f"at end: {load_avg()}")


if __name__ == "__main__":
    main()
