"""Windows/s and peak memory of three ways to feed (B, L, F) windows to a trainer.

(a) LazySequenceDataset.iter_batches (one strided gather per batch), (b) the same dataset through a
DataLoader (per-sample __getitem__ + default collate, num_workers=0), (c) eager materialisation of
every window. Each variant runs in its own subprocess so its VmHWM (peak RSS) is its own; the
features live in an np.memmap file, as a large training set would.

    python benchmarks/bench_dataset.py [--rows 2000000 --features 16 --seq-len 64 --batch-size 1024 --batches 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EAGER_CAP_BYTES = 1 << 30  # eager windows beyond this are measured on a prefix and extrapolated


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _open_features(args) -> np.memmap:
    return np.memmap(args.file, dtype=np.float32, mode="r", shape=(args.rows, args.features))


def _run_variant(args) -> dict:
    """Child process: run one variant, return its numbers."""
    import torch

    from agents import LazySequenceDataset

    torch.set_num_threads(1)
    base_kib = _status_kib("VmRSS")  # interpreter + torch, before any data
    features = _open_features(args)
    labels = np.zeros(args.rows, dtype=np.float32)
    ds = LazySequenceDataset(features, labels, args.seq_len)
    n_windows = args.batch_size * args.batches
    out: dict = {"variant": args.variant}

    if args.variant == "batched":
        start = time.perf_counter()
        done = 0
        for k, (xb, _) in enumerate(ds.iter_batches(args.batch_size, shuffle=True, seed=0)):
            done += len(xb)
            if k + 1 == args.batches:
                break
        out.update(windows=done, seconds=time.perf_counter() - start)
    elif args.variant == "dataloader":
        loader = torch.utils.data.DataLoader(
            ds, batch_size=args.batch_size, shuffle=True, num_workers=0,
            generator=torch.Generator().manual_seed(0),
        )
        start = time.perf_counter()
        done = 0
        for k, (xb, _) in enumerate(loader):
            done += len(xb)
            if k + 1 == args.batches:
                break
        out.update(windows=done, seconds=time.perf_counter() - start)
    elif args.variant == "eager":
        window_bytes = args.seq_len * args.features * 4
        total = args.rows - args.seq_len + 1
        budget = min(EAGER_CAP_BYTES, _mem_available() // 4)
        n_eager = min(total, max(n_windows, budget // window_bytes))
        start = time.perf_counter()
        # What an eager pipeline does: copy every window into one (n, L, F) array up front.
        view = np.lib.stride_tricks.sliding_window_view(features, args.seq_len, axis=0)  # (N-L+1, F, L)
        windows = np.ascontiguousarray(view[:n_eager].transpose(0, 2, 1))  # (n, L, F)
        build = time.perf_counter() - start
        tensor = torch.from_numpy(windows)
        order = torch.randperm(n_eager, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        done = 0
        for lo in range(0, min(n_windows, n_eager), args.batch_size):
            done += len(tensor[order[lo : lo + args.batch_size]])
        out.update(
            windows=done, seconds=time.perf_counter() - start, build_seconds=build,
            eager_windows=n_eager, total_windows=total, eager_bytes=windows.nbytes,
            full_bytes=total * window_bytes,
        )
    else:
        raise SystemExit(f"unknown variant {args.variant!r}")
    out.update(base_mib=base_kib / 1024, hwm_mib=_status_kib("VmHWM") / 1024)
    return out


def _mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _machine_info() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    from agents.resources.hardware import describe, detect

    return (
        f"{cpu}; Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}\n"
        f"{describe(detect())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # child
        print(json.dumps(_run_variant(args)))
        return

    print(_machine_info())
    raw_mib = args.rows * args.features * 4 / 2**20
    print(
        f"rows {args.rows:,} x features {args.features} (float32 memmap, {raw_mib:.0f} MiB), "
        f"seq_len {args.seq_len}, batch {args.batch_size}, {args.batches} batches (shuffled)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        args.file = str(Path(tmp) / "features.f32")
        mm = np.memmap(args.file, dtype=np.float32, mode="w+", shape=(args.rows, args.features))
        rng = np.random.default_rng(0)
        for lo in range(0, args.rows, 250_000):
            hi = min(lo + 250_000, args.rows)
            mm[lo:hi] = rng.standard_normal((hi - lo, args.features), dtype=np.float32)
        mm.flush()
        del mm

        results = []
        for variant in ("batched", "dataloader", "eager"):
            cmd = [sys.executable, __file__, "--variant", variant, "--file", args.file,
                   "--rows", str(args.rows), "--features", str(args.features), "--seq-len", str(args.seq_len),
                   "--batch-size", str(args.batch_size), "--batches", str(args.batches)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    header = f"{'variant':<34} {'windows':>9} {'seconds':>8} {'windows/s':>11} {'peak RSS MiB':>13} {'- baseline':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        label = {"batched": "(a) batched iter_batches", "dataloader": "(b) DataLoader per-sample",
                 "eager": "(c) eager, batches from RAM"}[r["variant"]]
        rate = r["windows"] / r["seconds"]
        print(f"{label:<34} {r['windows']:>9,} {r['seconds']:>8.2f} {rate:>11,.0f} "
              f"{r['hwm_mib']:>13,.0f} {r['hwm_mib'] - r['base_mib']:>11,.0f}")
    eager = results[-1]
    build_rate = eager["eager_windows"] / eager["build_seconds"]
    full_gib = eager["full_bytes"] / 2**30
    print(
        f"\n(c) materialised {eager['eager_windows']:,} of {eager['total_windows']:,} windows "
        f"({eager['eager_bytes'] / 2**30:.2f} GiB) in {eager['build_seconds']:.2f} s ({build_rate:,.0f} windows/s)."
    )
    if eager["eager_windows"] < eager["total_windows"]:
        print(
            f"    PREFIX ONLY, extrapolated to all {eager['total_windows']:,} windows: "
            f"{full_gib:.2f} GiB of windows + {raw_mib:.0f} MiB features, "
            f"~{eager['total_windows'] / build_rate:.1f} s to build."
        )
    else:
        print(f"    all windows: {full_gib:.2f} GiB.")
    print("Peak RSS includes page-cache pages of the memmap that the variant touched (file-backed, reclaimable).")


if __name__ == "__main__":
    main()
