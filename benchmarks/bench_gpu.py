"""Feeding a GPU: one epoch over 4M bars four ways, then the GPU-trained model exported and checked on CPU.

    python benchmarks/bench_gpu.py                 # needs CUDA; exits 2 with one line without it
    python benchmarks/bench_gpu.py --device cpu --bars 40000 --cap-s 3   # a dry run of the same code on CPU

Data: ``--bars`` minute bars bootstrapped from the real sp500 daily bars (`_common.bootstrap_bars`),
featurised and Triple-Barrier labelled as the trainer does (`agents.data.prepare.prepare_segments`): the
first 70% of bars train, the next 20% validate (purged by the horizon). Model: the default
TransformerAgent (d_model 64, 2 layers, 4 heads, 64-bar windows; --d-model, --seq-len), focal loss,
AdamW, seed 0.

Paths, each from the same initial weights over the same shuffled order:
  (a) safe:      the CPU path (batch 64, batched gathers in the main process, CPU threads)
  (b) loader:    the journal's Beast mode: DataLoader, 8 per-sample workers, pinned memory, fp16 autocast
                 with a GradScaler, batch 1024
  (c) resident:  windows resident on the device, batch gathered there, fp32 (TF32 off), batch 1024
  (d) resident + AMP: as (c) with bf16 autocast (fp16 + GradScaler where bf16 is unsupported) and TF32
  (e) with --compile: (d) with torch.compile
(a) and (b) are timed for ``--cap-s`` seconds each (windows/s from the windows done; a full epoch would
take minutes); (c)-(e) run the whole epoch and the validation pass. Then the model of (d) is exported
to ONNX and onnxruntime on CPU is compared with torch on CPU over real validation windows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AMP_TOLERANCE = 0.02  # |val loss (d) - (c)| / (c) allowed after one epoch: bf16 keeps 8 bits of mantissa
ACCEPT_RATIO = 5.0  # the issue: (c) or (d) at least 5x (b) in windows/s


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bars", type=int, default=4_000_000, help="synthetic bars in all (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1024, help="batch of paths (b)-(e) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of path (b) (default: %(default)s)")
    p.add_argument("--cap-s", type=float, default=30.0,
                   help="seconds paths (a) and (b) are timed for (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also time path (e): (d) with torch.compile")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda (the benchmark) or cpu (a dry run of the code; its figures say nothing about GPUs)")
    p.add_argument("--seq-len", type=int, default=64, help="bars per window (default: %(default)s, the trainer's)")
    p.add_argument("--d-model", type=int, default=64, help="model width (default: %(default)s, the trainer's)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap, weights and shuffle seed (default: %(default)s)")
    args = p.parse_args(argv)
    if args.bars < 20_000:
        p.error(f"--bars must be >= 20000, got {args.bars}")
    return args


def gpu_header(torch) -> str:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown (no nvidia-smi)"
    return (f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}; driver {driver}; CUDA {torch.version.cuda}; "
            f"torch {torch.__version__}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_gpu: CUDA is not available to torch {torch.__version__} (CPU-only build or no GPU visible); "
              "run it on a CUDA machine, or add --device cpu for a dry run", file=sys.stderr)
        return 2

    import numpy as np
    import pandas as pd

    import agents.training.trainer as T
    from _common import bootstrap_bars, machine_info
    from agents import AdamW, FocalLoss, TrainConfig, TransformerAgent, export_agent
    from agents.artifact.evaluation import mean_loss
    from agents.data.feed import ResidentWindows, epoch_ids
    from agents.resources.hardware import worker_init_fn
    from agents.artifact.metadata import package_version
    from agents.data.prepare import prepare_segments
    from datafeeds import load_ohlcv

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    print(machine_info(np, pd, torch))
    print(gpu_header(torch) if cuda else "device: cpu (dry run: these figures say nothing about a GPU)")

    t0 = time.perf_counter()
    cfg = TrainConfig(data="synthetic", seed=args.seed, seq_len=args.seq_len, d_model=args.d_model,
                      n_heads=4 if args.d_model % 4 == 0 else 1)
    df = bootstrap_bars(load_ohlcv("sp500"), args.bars, args.seed)
    n_train, n_val = int(args.bars * 0.7), int(args.bars * 0.2)
    prep = prepare_segments(cfg, df, range(0, n_train), range(n_train, n_train + n_val))
    train_ds, val_ds = prep.dataset("train", cfg.seq_len), prep.dataset("val", cfg.seq_len)
    print(f"data: {args.bars:,} bars bootstrapped from sp500 (seed {args.seed}), {len(prep.names)} features; "
          f"{len(train_ds):,} training and {len(val_ds):,} validation windows of {cfg.seq_len} bars; "
          f"prepared in {time.perf_counter() - t0:.0f} s")
    loss_fn = FocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)

    def fresh(dev):
        torch.manual_seed(cfg.seed)
        model = TransformerAgent(cfg.model_config(len(prep.names))).to(dev)
        return model, AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def sync(dev):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run(name, dev, batches, amp_dtype, *, scaler_on=False, cap_s=None, model_opt=None, compile_=False):
        """Train over ``batches`` (an iterator of host or device batches); time it; return the record."""
        model, opt = model_opt or fresh(dev)
        step_model = torch.compile(model) if compile_ else model
        scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        step_model.train()
        torch.manual_seed(cfg.seed * 100_003)
        windows = steps = 0
        first_step_s = None
        sync(dev)
        start = time.perf_counter()
        for xb, yb in batches:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            T.train_step(step_model, opt, scaler, loss_fn, xb, yb, amp_dtype)
            windows += len(yb)
            steps += 1
            if steps == 1:
                sync(dev)
                first_step_s = time.perf_counter() - start  # compile / cuDNN autotune / worker start-up
            if cap_s is not None and time.perf_counter() - start > cap_s:
                break
        sync(dev)
        seconds = time.perf_counter() - start
        rec = {"path": name, "windows": windows, "steps": steps, "seconds": seconds,
               "windows_per_s": windows / seconds, "step_ms": 1e3 * seconds / max(steps, 1),
               "first_step_s": first_step_s, "full_epoch": windows == len(train_ds),
               "peak_gpu_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
        rec["model"] = model
        print(f"  {name}: {windows:,} windows in {seconds:.1f} s", flush=True)
        return rec

    bs = args.batch_size
    results = []
    print("\ntraining (one epoch, shuffled with the seed):")
    cpu = torch.device("cpu")
    host_batches = (train_ds.batch(ids) for ids in epoch_ids(train_ds, 64, cfg.seed, 0))
    results.append(run("(a) safe CPU path, batch 64", cpu, host_batches, None, cap_s=args.cap_s))

    gen = torch.Generator().manual_seed(cfg.seed * 100_003)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, shuffle=True, generator=gen,
                                         num_workers=args.workers, pin_memory=cuda, worker_init_fn=worker_init_fn)
    old_amp = torch.float16 if cuda else None  # the old profile: torch.autocast("cuda")'s default dtype
    how = "pinned, fp16 AMP" if cuda else "fp32 (CPU)"
    results.append(run(f"(b) DataLoader, {args.workers} workers, {how}", device, iter(loader), old_amp,
                       scaler_on=cuda, cap_s=args.cap_s))
    del loader

    t_up = time.perf_counter()
    resident = ResidentWindows(train_ds, device)
    val_resident = resident.sibling(val_ds)
    sync(device)
    upload_s = time.perf_counter() - t_up
    results.append(run("(c) resident, fp32", device, resident.iter_batches(bs, shuffle=True, seed=cfg.seed, epoch=0),
                       None))
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.bfloat16
    amp_name = {torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}[amp]
    with T.tf32_matmuls(cuda):
        results.append(run(f"(d) resident, {amp_name} autocast{', TF32' if cuda else ''}", device,
                           resident.iter_batches(bs, shuffle=True, seed=cfg.seed, epoch=0), amp,
                           scaler_on=amp == torch.float16))
        if args.compile:
            results.append(run("(e) as (d) + torch.compile", device,
                               resident.iter_batches(bs, shuffle=True, seed=cfg.seed, epoch=0), amp,
                               scaler_on=amp == torch.float16, compile_=True))

    # -------------------------------------------------------------------------------- report
    print(f"\nresident windows: {resident.nbytes / 2**20:,.0f} MiB "
          f"uploaded in {upload_s:.2f} s")
    base = results[1]["windows_per_s"]
    header = f"{'path':<44} {'windows':>11} {'steps':>7} {'epoch':>6} {'win/s':>11} {'vs (b)':>7} {'step ms':>8} " \
             f"{'1st step s':>10} {'peak GPU MiB':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}"
        print(f"{r['path']:<44} {r['windows']:>11,} {r['steps']:>7,} {'full' if r['full_epoch'] else 'capped':>6} "
              f"{r['windows_per_s']:>11,.0f} {r['windows_per_s'] / base:>6.1f}x {r['step_ms']:>8.2f} "
              f"{r['first_step_s']:>10.2f} {peak:>12}")
    print(f"(a), (b): timed for --cap-s {args.cap_s:g} s each; (c)-(e): the whole epoch. step ms: seconds / steps.")

    # validation loss of (c) and (d), same seed, same order, fp32 evaluation
    vc = mean_loss(results[2]["model"], val_resident, loss_fn, device)
    vd = mean_loss(results[3]["model"], val_resident, loss_fn, device)
    rel = abs(vd - vc) / vc
    print(f"\nvalidation focal loss after one epoch: (c) fp32 {vc:.6f}, (d) {amp_name} {vd:.6f}; "
          f"relative difference {rel:.2e} (AMP allowed {AMP_TOLERANCE:g}): "
          f"{'PASS' if rel <= AMP_TOLERANCE else 'FAIL'}")
    best = max(results[2]["windows_per_s"], results[3]["windows_per_s"])
    print(f"resident vs the old loader: {best / base:.1f}x (issue: >= {ACCEPT_RATIO:g}x): "
          f"{'PASS' if best >= ACCEPT_RATIO * base else 'FAIL'}{' (dry run on CPU)' if not cuda else ''}")

    # the GPU-trained model, exported and run by onnxruntime on CPU
    model = results[3]["model"].cpu().eval()
    ids = np.arange(min(len(val_ds), 4096))
    xv = val_ds.batch(ids)[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpu_trained.onnx"
        card = {"input_name": "windows", "output_name": "logit", "package_version": package_version(),
                "note": "bench_gpu.py: a benchmark model, not an agent"}
        t_ex = time.perf_counter()
        export_agent(model, card, path, xv[:64].numpy())
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"windows": xv.numpy()})[0]
        with torch.no_grad():
            want = model(xv).numpy()
        diff = float(np.max(np.abs(got - want)))
        print(f"onnx: {card['exporter']} export in {time.perf_counter() - t_ex:.1f} s; "
              "onnxruntime (CPU) vs torch (CPU) "
              f"on {len(ids):,} validation windows: max |logit diff| {diff:.2e} (tolerance 1e-5): "
              f"{'PASS' if diff <= 1e-5 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
