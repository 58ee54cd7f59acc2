"""Memory and speed of pooled training as the universe grows: 1M, 4M and 16M bars in all.

Each size is a synthetic universe of instruments whose bars are bootstrapped from the real sp500
daily bars (each drawn bar brings its close-to-close log return, its open/high/low offsets from its
close and its volume, jointly; instrument i draws with seed ``seed * 1000 + i``), on a minute-spaced
index (250,000 minutes fit pandas' timestamp range where 250,000 days would not). All instruments
share one calendar: the same minutes from 2000-01-03 00:00, so the calendar cuts fall at the same bar
of every instrument.

    1M  = 16 instruments x  62,500 bars
    4M  = 32 instruments x 125,000 bars
    16M = 64 instruments x 250,000 bars

The universe is never held in memory: `prepare_universe` gets a lazy Mapping that generates an
instrument's frame (with ``attrs["sha256"]``, a hash of its content) on each access, so the feature
store is built one instrument at a time into a temporary folder. Each size runs in a fresh child
process, so its peak RSS (VmHWM) is its own. The child measures: RSS after its imports (the
baseline), the store build (time, peak RSS), `prepare_universe` on the built store (cut dates,
statistics; it keys the frames again, so it generates them once more), then one epoch of
`agents.training.trainer.fit` with a tiny model over every training window (shuffled, read with pread) and
the validation pass over every validation window. Per-phase peaks come from resetting VmHWM
(``/proc/self/clear_refs``) at each phase's start; "peak" is the largest of them. The acceptance
figure is each size's peak over the first size's peak (the issue asks for 16M within +150 MiB of 1M).

    python benchmarks/bench_scale.py [--sizes 1M,4M,16M] [--seed 0] [--keep-store]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _common import bootstrap_bars, load_avg, machine_info, reset_peak_rss  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from datafeeds.process import pid_alive  # noqa: E402

PRESETS = {"1M": (16, 62_500), "4M": (32, 125_000), "16M": (64, 250_000)}
ACCEPT_MIB = 150.0  # the issue: peak RSS at 16M within +150 MiB of the 1M run
TRAIN_KW = dict(seq_len=16, d_model=8, n_heads=1, n_layers=1, epochs=1, batch_size=1024, horizon=10,
                holdout=0.2, val_fraction=0.2, patience=1)


def parse_size(token: str) -> tuple[str, int, int]:
    """'1M' / '4M' / '16M' (the presets) or 'SxN' (S instruments of N bars) -> (label, S, N)."""
    token = token.strip()
    if token.upper() in PRESETS:
        return (token.upper(), *PRESETS[token.upper()])
    try:
        s, n = (int(v.replace("_", "")) for v in token.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size {token!r}: use one of {', '.join(PRESETS)} or SxN, e.g. 8x100000") from None
    if s < 1 or n < 1000:
        raise argparse.ArgumentTypeError(f"size {token!r}: need at least 1 instrument of 1000 bars")
    return (token, s, n)


# ---------------------------------------------------------------------------------------------- child


def _status_kib() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    return out


class SyntheticUniverse(Mapping):
    """symbol -> bootstrapped OHLCV frame, generated anew (deterministically) on every access; holds none."""

    def __init__(self, src, n_instruments: int, n_bars: int, seed: int) -> None:
        self.src, self.n_bars, self.seed = src, n_bars, seed
        self.symbols = [f"SYN{i:03d}" for i in range(n_instruments)]
        self.generated = 0  # frames built so far (the store reads each twice; prepare_universe once more)

    def __getitem__(self, sym: str):
        import hashlib

        import numpy as np

        try:
            i = self.symbols.index(sym)
        except ValueError:
            raise KeyError(sym) from None
        df = bootstrap_bars(self.src, self.n_bars, self.seed * 1000 + i)
        digest = hashlib.sha256(np.ascontiguousarray(df.index.as_unit("ns").asi8).data)
        for col in df.columns:
            digest.update(col.encode() + b"\0")
            digest.update(np.ascontiguousarray(df[col].to_numpy(np.float64)).data)
        df.attrs["sha256"] = digest.hexdigest()
        df.attrs["source"] = (f"synthetic {sym}: {self.n_bars} minute bars bootstrapped from sp500 daily bars "
                              f"(seed {self.seed * 1000 + i})")
        self.generated += 1
        return df

    def __iter__(self):
        return iter(self.symbols)

    def __len__(self) -> int:
        return len(self.symbols)


def run_child(args) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    import agents.training.trainer as trainer
    from agents import FeatureStore, TrainConfig
    from agents.data.prepare import prepare_universe
    from datafeeds import load_ohlcv

    label, n_inst, n_bars = parse_size(args.child)
    out: dict = {"label": label, "instruments": n_inst, "bars_each": n_bars, "bars": n_inst * n_bars}
    src = load_ohlcv("sp500")
    out["rss_imports"] = _status_kib()["VmRSS"]
    out["peak_imports"] = _status_kib()["VmHWM"]
    out["can_reset_peak"] = reset_peak_rss()
    peaks = {}

    def phase_end(name: str) -> None:
        st = _status_kib()
        out[f"rss_{name}"], out[f"anon_{name}"], out[f"file_{name}"] = st["VmRSS"], st["RssAnon"], st["RssFile"]
        peaks[name] = st["VmHWM"]
        reset_peak_rss()

    cfg = TrainConfig(data=f"synthetic-{label}", **TRAIN_KW)
    frames = SyntheticUniverse(src, n_inst, n_bars, args.seed)
    root = Path(args.store_root)

    t0 = time.perf_counter()
    store = FeatureStore.build_or_open(frames, cfg.feature_spec, cfg.tbm, root=root)
    out["build_s"] = time.perf_counter() - t0
    out["build_index_s"] = store.index.get("built_seconds")  # the arrays alone, without keying the frames
    out["store_mib"] = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file()) / 2**20
    out["n_features"] = len(store.names)
    del store
    phase_end("build")

    t0 = time.perf_counter()
    prep = prepare_universe(cfg, frames=frames, store_root=root)
    out["prepare_s"] = time.perf_counter() - t0
    out["frames_generated"] = frames.generated
    phase_end("prepare")

    # time the validation pass on its own (fit's "seconds" covers the training loop and it)
    val_timing = {}
    real_mean_loss = trainer.mean_loss

    def timed_mean_loss(model, ds, *a, **kw):
        t = time.perf_counter()
        try:
            return real_mean_loss(model, ds, *a, **kw)
        finally:
            val_timing["seconds"] = time.perf_counter() - t
            val_timing["windows"] = len(ds)

    trainer.mean_loss = timed_mean_loss
    train_ds, val_ds = prep.dataset("train", cfg.seq_len), prep.dataset("val", cfg.seq_len)
    out["train_windows"], out["val_windows"] = len(train_ds), len(val_ds)
    del train_ds, val_ds
    t0 = time.perf_counter()
    res = trainer.fit(cfg, prep, checkpoint_dir=None, progress=False)
    out["fit_wall_s"] = time.perf_counter() - t0
    rec = res["state"]["history"][0]
    out.update(epoch_s=rec["seconds"], train_loss=rec["train_loss"], val_loss=rec["val_loss"],
               val_s=val_timing.get("seconds", 0.0), threads=torch.get_num_threads())
    phase_end("fit")

    out["peaks"] = peaks
    out["peak"] = max([out["peak_imports"], *peaks.values()]) if out["can_reset_peak"] else _status_kib()["VmHWM"]
    out["versions"] = {"numpy": np.__version__, "pandas": pd.__version__, "torch": torch.__version__}
    return out


# --------------------------------------------------------------------------------------------- parent


def _mib(kib: float) -> float:
    return kib / 1024


def print_table(results: list[dict]) -> None:
    base = results[0]
    rows = []
    for r in results:
        train_s = r["epoch_s"] - r["val_s"]
        rows.append([
            r["label"], f"{r['instruments']}x{r['bars_each']:,}", f"{r['bars']:,}",
            f"{r['build_s']:.1f}", f"{r['bars'] / r['build_s']:,.0f}", f"{r['prepare_s']:.1f}",
            f"{r['train_windows']:,}", f"{r['val_windows']:,}", f"{r['epoch_s']:.1f}",
            f"{r['train_windows'] / r['epoch_s']:,.0f}", f"{r['train_windows'] / max(train_s, 1e-9):,.0f}",
            f"{r['val_windows'] / max(r['val_s'], 1e-9):,.0f}",
            f"{_mib(r['rss_imports']):.0f}",
            *(f"{_mib(r['peaks'][p]):.0f}" if r["can_reset_peak"] else "-" for p in ("build", "prepare", "fit")),
            f"{_mib(r['peak']):.0f}", f"{_mib(r['peak'] - base['peak']):+.0f}",
        ])
    header = ["size", "instr x bars", "bars", "build s", "bars/s", "prep s", "train win", "val win", "epoch s",
              "win/s", "train win/s", "val win/s", "RSS imp", "pk build", "pk prep", "pk fit", "peak",
              f"vs {base['label']}"]
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    print(
        "\nbuild s: FeatureStore.build_or_open (frames generated twice: key, then arrays); bars/s = bars / build s.\n"
        "prep s: prepare_universe on the built store (keys the frames again, cut dates, per-instrument ranges,\n"
        "  statistics). win/s: training windows / the epoch's seconds (fit's record: training loop + validation\n"
        "  pass); train win/s and val win/s split them. RSS imp: VmRSS after the imports (MiB). pk build / pk prep /\n"
        f"  pk fit: VmHWM of each phase (reset at its start), MiB; peak: the largest; vs {base['label']}: peak minus\n"
        f"  the {base['label']} run's peak."
    )


_STORE_PREFIX = "bench_scale_"  # + pid + "_" + random: the feature stores of one run


def sweep_stale_stores(folder: Path) -> list[Path]:
    """Remove the store folders of earlier runs that are no longer running (killed with -9: no finally)."""
    removed = []
    for path in folder.glob(f"{_STORE_PREFIX}*_*"):
        pid = path.name[len(_STORE_PREFIX):].split("_", 1)[0]
        if not (pid.isdigit() and path.is_dir()) or pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,4M,16M",
                        help="comma-separated sizes, each 1M, 4M, 16M (16x62500, 32x125000, 64x250000) or SxN "
                             "(S instruments of N bars); the first is the reference of the +MiB column "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="bootstrap seed; instrument i draws with seed*1000+i (default: %(default)s)")
    parser.add_argument("--keep-store", action="store_true",
                        help="keep the temporary folder holding the feature stores (its path is printed); "
                             "by default it is removed at the end")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store-root", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_child(args)))
        return

    sizes = [parse_size(t) for t in args.sizes.split(",") if t.strip()]
    import numpy as np
    import pandas as pd
    import torch

    print(machine_info(np, pd, torch))
    print(f"at start: {load_avg()}")
    print(f"model: TrainConfig({', '.join(f'{k}={v}' for k, v in TRAIN_KW.items())}); one epoch over every window, "
          "checkpoint_dir=None")
    print("bars: bootstrapped from sp500 daily bars, minute index, one calendar (2000-01-03 00:00 on) for all "
          f"instruments; seed {args.seed}\n")
    sweep_stale_stores(Path(tempfile.gettempdir()))
    # a kill (SIGTERM, a closed terminal) ends through the finally below, which removes the stores
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_STORE_PREFIX}{os.getpid()}_"))
    results = []
    t_all = time.perf_counter()
    try:
        for label, n_inst, n_bars in sizes:
            t0 = time.perf_counter()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
                   label if label in PRESETS else f"{n_inst}x{n_bars}",
                   "--store-root", str(tmp / label), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"size {label} failed (exit {proc.returncode})")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["label"] = label
            results.append(r)
            print(f"{label}: {n_inst} x {n_bars:,} bars done in {time.perf_counter() - t0:.0f} s "
                  f"({r['n_features']} features, store {r['store_mib']:.0f} MiB on disk, {load_avg()})", flush=True)
    finally:
        if args.keep_store:
            print(f"stores kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(results)
    if not results[0]["can_reset_peak"]:
        print("(/proc/self/clear_refs refused: per-phase peaks unavailable, peak = VmHWM at the end)")
    by = {r["label"]: r for r in results}
    if "1M" in by and "16M" in by:
        grow = _mib(by["16M"]["peak"] - by["1M"]["peak"])
        print(f"\nacceptance: peak RSS at 16M - at 1M = {grow:+.0f} MiB (limit +{ACCEPT_MIB:.0f}): "
              f"{'PASS' if grow <= ACCEPT_MIB else 'FAIL'}")
    print(f"total wall time: {time.perf_counter() - t_all:.0f} s; at end: {load_avg()}")


if __name__ == "__main__":
    main()
