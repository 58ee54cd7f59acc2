"""Training speed stays at the hardware's pace: the trainer's windows/s on CPU beside a bare PyTorch loop.

    python benchmarks/bench_train.py                      # 40,000 bars, batch 64 and 256 (+ the profile's), 1 epoch
    python benchmarks/bench_train.py --bars 12000 --batch 64 --repeats 1

Data: ``--bars`` synthetic OHLCV bars (``datafeeds.synthetic.random_walk``; speed does not depend on
the signal) written to a temporary CSV and prepared as the trainer does (``agents.data.prepare.prepare``:
features, Triple Barrier labels, purged split, normalisation). Model: ``TransformerAgent`` of
``TrainConfig``'s defaults (``--seq-len`` and ``--d-model`` follow them unless given), focal loss with
the per-window uniqueness weights, gradients clipped at 1.0, seed 0; CPU, ``--threads`` intra-op threads.

Per batch size, over the same training windows, the same number of epochs and the same threads:

  trainer    ``agents.training.trainer.fit(cfg, prep, checkpoint_dir=None, progress=False)`` on the CPU profile,
             with the validation windows removed from ``prep``. Without them fit runs exactly
             ``--epochs`` epochs and each epoch's ``seconds`` (state["history"]) covers the training
             loop alone: the per-epoch shuffle, the batched gathers (LazySequenceDataset.batch),
             ``train_step`` (forward, weighted focal loss, backward, clipping, agents.model.optim.AdamW) and
             the loss sum. With validation windows ``seconds`` would include a validation pass too.
             Timed: the sum of those ``seconds``. Reported beside it, not used in the ratio: the wall
             time of the whole fit call (model and optimiser set-up, memory check, weights kept).
  bare loop  a plain PyTorch loop: the same model config and initial weights, torch.optim.AdamW
             (same lr and weight decay), the same loss and weights, clipping at 1.0; windows gathered
             from a strided view of the feature matrix (``torch.from_numpy(x).unfold(0, L, 1)``)
             indexed by a random permutation per epoch. No dataset classes, no checkpoints, no
             validation. Timed: the whole loop, gathers included.

Before each pair, two untimed steps warm up the allocator and the kernels at that batch size; with
``--repeats`` > 1 the pair runs again in the opposite order and each side keeps its best.
Printed: the machine, the load average at the start and the end (a busy machine slows both sides,
small batches most), a markdown table with windows/s and the ratio bare/trainer, and the projected
time of a default training on 40,000 bars.

Check (exit 1 with a FAIL line): the trainer more than MAX_SLOWDOWN times slower than the bare loop at
the trainer's default CPU batch size (the hardware profile's). Exit 0 otherwise, also when that batch
size is not among ``--batch`` (no check is then made, and the output says so).

--threads other than what the trainer picks (agents.resources.hardware.configure_main_threads: the CPUs this
process may use) is imposed on fit by replacing agents.training.trainer's configure_main_threads for the call.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

MAX_SLOWDOWN = 1.25  # the trainer may be at most this many times slower than the bare loop (default batch)
BASE_BATCHES = (64, 256)  # --batch's default, with the hardware profile's default batch size added
PROJECTION_BARS = 40_000  # the projected "default training" is on this many bars
WARMUP_STEPS = 2  # untimed bare steps before each pair


def parse_args(argv=None):
    from agents.training.config import TrainConfig, field_defaults  # light: no numpy, pandas or torch

    d = field_defaults(TrainConfig)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bars", type=int, default=PROJECTION_BARS,
                   help="synthetic bars in the CSV (default: %(default)s); 20%% holdout and 20%% validation are cut "
                        "as in a default training, the rest trains")
    p.add_argument("--batch", default=None,
                   help="comma list of batch sizes (default: " + ",".join(map(str, BASE_BATCHES))
                        + " plus the trainer's default batch size from the hardware profile)")
    p.add_argument("--epochs", type=int, default=1, help="epochs each side trains (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for both sides (default: what the trainer uses, "
                        "agents.resources.hardware.configure_main_threads: the CPUs this process may run on)")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help="bars per window (default: TrainConfig's, %(default)s)")
    p.add_argument("--d-model", type=int, default=d.d_model,
                   help="model width (default: TrainConfig's, %(default)s)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each pair, alternating which side goes first; each side keeps its best "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data, weights and shuffle seed (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("bars", "epochs", "seq_len", "d_model", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.batch is not None:
        try:
            args.batch = [int(s) for s in args.batch.split(",") if s.strip()]
        except ValueError:
            p.error(f"--batch must be a comma list of integers, got {args.batch!r}")
        if not args.batch or min(args.batch) < 1:
            p.error("--batch needs at least one batch size, each >= 1")
    args.n_heads = d.n_heads if args.d_model % d.n_heads == 0 else 1
    return args


def bare_loop(torch, prep, cfg, n_features, batch_size, epochs, weights):
    """The plain PyTorch loop; returns (windows trained, seconds)."""
    from agents import TransformerAgent, focal_loss

    L = cfg.seq_len
    view = torch.from_numpy(prep.x).unfold(0, L, 1)  # (N-L+1, F, L), a view: no copy
    starts = torch.from_numpy(prep.train_ends - (L - 1))  # window i covers bars starts[i] .. starts[i]+L-1
    y_all = torch.from_numpy(prep.y[prep.train_ends])
    w_all = None if weights is None else torch.from_numpy(weights.astype("float32"))
    n = len(starts)
    torch.manual_seed(cfg.seed)
    model = TransformerAgent(cfg.model_config(n_features))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    done = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for lo in range(0, n, batch_size):
            ids = order[lo:lo + batch_size]
            xb = view[starts[ids]].transpose(1, 2).contiguous()  # (B, L, F)
            yb = y_all[ids]
            losses = focal_loss(model(xb), yb, cfg.focal_alpha, cfg.focal_gamma, "none")
            loss = losses.mean() if w_all is None else (losses * w_all[ids]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += len(ids)
    return done, time.perf_counter() - start


def warm_up(torch, prep, cfg, n_features, batch_size):
    """A few untimed steps at ``batch_size`` on a throwaway model: allocator and kernel set-up."""
    from agents import TransformerAgent, focal_loss

    L = cfg.seq_len
    view = torch.from_numpy(prep.x).unfold(0, L, 1)
    ends = torch.from_numpy(prep.train_ends)[:batch_size]
    xb = view[ends - (L - 1)].transpose(1, 2).contiguous()
    yb = torch.from_numpy(prep.y[prep.train_ends[:batch_size]])
    model = TransformerAgent(cfg.model_config(n_features)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    for _ in range(WARMUP_STEPS):
        loss = focal_loss(model(xb), yb, cfg.focal_alpha, cfg.focal_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main(argv=None) -> int:
    args = parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    import agents.training.trainer as T
    from _common import load_avg, machine_info
    from agents.training.config import TrainConfig, field_defaults
    from agents.artifact.metadata import loss_label
    from agents.resources.hardware import choose_profile, configure_main_threads, detect
    from agents import TransformerAgent
    from agents.data.prepare import prepare
    from datafeeds.synthetic import random_walk

    load_start = load_avg()
    resources = detect()
    profile = choose_profile(resources, "auto")
    if profile.device != "cpu":  # a CUDA machine: this benchmark is about the CPU path, the safe profile's
        profile = choose_profile(resources, "safe")
    default_batch = profile.batch_size
    batches = list(dict.fromkeys(args.batch or (*BASE_BATCHES, default_batch)))
    trainer_threads = configure_main_threads(resources)
    threads = args.threads or trainer_threads
    torch.set_num_threads(threads)

    print(f"machine: {machine_info(np, pd, torch)}")
    print(f"start: {load_start}")
    print(f"profile: {profile.name} ({profile.reason}); default batch {default_batch}; "
          f"threads {threads} (the trainer's own choice: {trainer_threads})")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        df, _latent = random_walk(args.bars, seed=args.seed)
        csv = Path(tmp) / "random_walk.csv"
        df.to_csv(csv)
        cfg = TrainConfig(data=str(csv), seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads,
                          epochs=args.epochs, patience=args.epochs, seed=args.seed)
        full = prepare(cfg)
    # the training windows only: fit then runs exactly --epochs epochs and times the training loop alone
    prep = dataclasses.replace(full, val_ends=np.empty(0, dtype=np.int64))
    n_features = len(prep.names)
    n_windows = len(prep.dataset("train", cfg.seq_len))
    weights = T.training_weights(cfg, prep)
    print(f"data: {args.bars:,} random-walk bars -> {n_features} features, {n_windows:,} training windows of "
          f"{cfg.seq_len} bars (validation windows left out); prepared in {time.perf_counter() - t0:.1f} s")
    print(f"model: d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
          f"{TransformerAgent(cfg.model_config(n_features)).num_parameters():,} parameters; "
          f"{args.epochs} epoch(s) per side, {loss_label(cfg.focal_alpha, cfg.focal_gamma)}, "
          f"{cfg.sample_weights} weights")

    def threads_for_fit():
        if threads == trainer_threads:
            return contextlib.nullcontext()
        from unittest import mock

        def configure(_resources):
            torch.set_num_threads(threads)
            return threads
        return mock.patch.object(T, "configure_main_threads", configure)

    def run_trainer(b):
        c = dataclasses.replace(cfg, batch_size=b)
        start = time.perf_counter()
        with threads_for_fit():
            res = T.fit(c, prep, checkpoint_dir=None, progress=False, profile=profile)
        wall = time.perf_counter() - start
        used = torch.get_num_threads()
        torch.set_num_threads(threads)
        if used != threads:
            raise RuntimeError(f"fit trained with {used} threads, not {threads}")
        history = res["state"]["history"]
        if res["batch_size"] != b or len(history) != args.epochs:
            raise RuntimeError(f"fit ran {len(history)} epochs at batch {res['batch_size']}, "
                               f"not {args.epochs} at batch {b}")
        return n_windows * len(history), sum(r["seconds"] for r in history), wall

    def run_bare(b):
        return bare_loop(torch, prep, cfg, n_features, b, args.epochs, weights)

    rows = []
    for b in batches:
        warm_up(torch, prep, cfg, n_features, b)
        best = {}
        for k in range(args.repeats):
            for side in (("trainer", "bare") if k % 2 == 0 else ("bare", "trainer")):
                if side == "trainer":
                    win, sec, wall = run_trainer(b)
                else:
                    win, sec = run_bare(b)
                    wall = sec
                if side not in best or sec < best[side][1]:
                    best[side] = (win, sec, wall)
        (tw, ts, twall), (bw, bs, _) = best["trainer"], best["bare"]
        rows.append({"batch": b, "trainer_windows": tw, "trainer_s": ts, "trainer_wps": tw / ts, "fit_wall_s": twall,
                     "bare_windows": bw, "bare_s": bs, "bare_wps": bw / bs, "ratio": (bw / bs) / (tw / ts)})
        print(f"  batch {b}: trainer {tw / ts:,.0f} windows/s, bare loop {bw / bs:,.0f} windows/s", flush=True)

    print()
    print("| batch | trainer windows | trainer s | trainer windows/s | fit wall s | bare windows | bare s "
          "| bare windows/s | bare/trainer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mark = " (default)" if r["batch"] == default_batch else ""
        print(f"| {r['batch']}{mark} | {r['trainer_windows']:,} | {r['trainer_s']:.2f} | {r['trainer_wps']:,.0f} "
              f"| {r['fit_wall_s']:.2f} | {r['bare_windows']:,} | {r['bare_s']:.2f} | {r['bare_wps']:,.0f} "
              f"| {r['ratio']:.2f}x |")
    print(f"trainer s: the epochs' own seconds (training loop only); fit wall s: the whole fit call. "
          f"{'Best of ' + str(args.repeats) + ' runs per side. ' if args.repeats > 1 else ''}"
          f"bare/trainer > 1: the trainer is slower.")

    # projection: a default training (TrainConfig's epochs as the upper bound) on PROJECTION_BARS bars
    epochs_cap = field_defaults(TrainConfig).epochs
    ref = next((r for r in rows if r["batch"] == default_batch), rows[0])
    per_epoch = n_windows if args.bars == PROJECTION_BARS else round(n_windows * PROJECTION_BARS / args.bars)
    how = "" if args.bars == PROJECTION_BARS else f", scaled from {args.bars:,} bars"
    projected = per_epoch * epochs_cap / ref["trainer_wps"]
    print(f"\nprojected default training on {PROJECTION_BARS:,} bars (seq_len {cfg.seq_len}, d_model {cfg.d_model}): "
          f"{per_epoch:,} windows/epoch{how} x {epochs_cap} epochs / {ref['trainer_wps']:,.0f} windows/s "
          f"(trainer, batch {ref['batch']}) = {projected:,.0f} s ({projected / 60:.1f} min; "
          f"{per_epoch / ref['trainer_wps']:.0f} s per epoch) plus a validation pass per epoch; {epochs_cap} epochs "
          f"is the upper bound: early stopping (patience {field_defaults(TrainConfig).patience}) usually ends sooner.")
    print(f"end: {load_avg()}")

    if any(r["trainer_windows"] != r["bare_windows"] for r in rows):
        print("FAIL: the trainer and the bare loop trained different numbers of windows")
        return 1
    if ref["batch"] != default_batch:
        print(f"check: not made (the default batch {default_batch} is not among --batch)")
        return 0
    ok = ref["ratio"] <= MAX_SLOWDOWN
    print(f"{'PASS' if ok else 'FAIL'}: at the default batch {default_batch} the trainer runs at "
          f"{1 / ref['ratio']:.2f}x the bare loop's pace (bare/trainer {ref['ratio']:.2f}x; allowed up to "
          f"{MAX_SLOWDOWN:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
