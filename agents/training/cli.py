"""Train a TransformerAgent on Triple Barrier labels and export it as a self-describing ONNX file.

    python -m agents.train                       # bundled sp500 -> models/sp500.onnx, last 20% held out
    python -m agents.train --epochs 1 --out /tmp/quick.onnx
    python -m agents.train --data my.csv --end 2020-12-31 --gpu

This module is the command line (``python -m agents.train`` runs it); the pipeline is
:mod:`agents.training.trainer` (``fit``, ``train``).
Arguments are parsed before torch and pandas are imported, so
``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from datafeeds.cli import ArgumentParser, UsageError, run_command

from .config import TrainConfig, field_defaults


def default_out(data: str) -> Path:
    """Where an agent trained on ``data`` goes by default: ``models/<data name>.onnx`` (never the
    shipped models/agent1.onnx, which a default run would otherwise overwrite)."""
    text = str(data)
    if any(c in text for c in ",*?["):  # a comma list or a glob: no one name
        return Path("models") / "universe.onnx"
    name = Path(text.rstrip("/")).name.split(".")[0] or "agent"  # a file, a sample, a folder, a universe name
    return Path("models") / f"{name}.onnx"


def build_parser() -> argparse.ArgumentParser:
    d = field_defaults(TrainConfig)
    p = ArgumentParser(
        prog="python -m agents.train",
        description="Train a TransformerAgent on Triple Barrier labels and export it to ONNX. "
        "Defaults train on the bundled S&P 500 sample, holding out its last 20% for backtests.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="a bundled sample (python -m datafeeds lists them) or a CSV/Parquet "
                   "path; "
                   "or a universe, one instrument per file: a bundled universe (us_daily), a directory, a glob "
                   "or a comma list of files or samples")
    g.add_argument("--normalise", default=d.normalise, choices=["pooled", "per-symbol"],
                   help="universes: normalisation statistics from all instruments' training bars together (pooled: "
                   "one set, the agent trades any instrument) or from each instrument's own (per-symbol: comparable "
                   "scales for price-level features such as MACD; the agent then trades only its own symbols)")
    g.add_argument("--start", default=None, help="first date to load, ISO: 2005-01-01")
    g.add_argument("--end", default=None, help="last date to load, ISO; later bars are never seen")
    g.add_argument("--holdout", type=float, default=d.holdout,
                   help="last fraction of loaded bars kept unseen for out-of-sample backtests")
    g.add_argument("--features", default=",".join(d.features),
                   help="comma-separated feature names (--list-features shows them all)")
    g.add_argument("--list-features", action="store_true", help="list the registered features and exit")
    g = p.add_argument_group("labels (Triple Barrier)")
    g.add_argument("--pt", type=float, default=d.pt, help="take-profit barrier in ATRs")
    g.add_argument("--sl", type=float, default=d.sl, help="stop-loss barrier in ATRs")
    g.add_argument("--horizon", type=int, default=d.horizon, help="vertical barrier in bars")
    g.add_argument("--primary", default=d.primary, help="meta-labeling: a primary rule whose bets become the events, "
                   "labelled 1 when the bet's profit-taker came first: smacross[:fast=10,slow=30] or "
                   "momentum[:lookback=20] (longs and shorts; None = every bar, long)")
    g = p.add_argument_group("model and training")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="bars per input window")
    g.add_argument("--d-model", type=int, default=d.d_model, help="width of the Transformer's residual stream")
    g.add_argument("--n-heads", type=int, default=d.n_heads, help="attention heads (must divide --d-model)")
    g.add_argument("--n-layers", type=int, default=d.n_layers, help="encoder layers")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout on embeddings, attention and MLP")
    g.add_argument("--positional", default=d.positional, choices=["learned", "sinusoidal"],
                   help="position encoding: a trained table or the fixed sinusoidal one")
    g.add_argument("--pooling", default=d.pooling, choices=["last", "mean", "attention", "lags"],
                   help="how the encoded window becomes one vector: the last bar's state, the mean over bars, a "
                   "learned attention over bars, or the last 16 bars' states side by side into an MLP (lags)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="epochs without validation improvement before stopping")
    g.add_argument("--batch-size", type=int, default=None, help="windows per step; None = the hardware profile's")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    g.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "onecycle", "cosine"],
                   help="learning rate over the run: constant; onecycle = linear warm-up (--warmup) then cosine "
                   "decay to 0 at --epochs; cosine = the decay alone")
    g.add_argument("--warmup", type=float, default=d.warmup, help="fraction of all steps spent warming up (onecycle)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="last fraction of labelled events used for validation")
    g.add_argument("--focal-alpha", type=float, default=d.focal_alpha,
                   help="focal loss weight of positives; negative = none")
    g.add_argument("--focal-gamma", type=float, default=d.focal_gamma,
                   help="focal loss focusing parameter (0 = cross-entropy)")
    g.add_argument("--sample-weights", default=d.sample_weights, choices=["uniqueness", "none"],
                   help="loss weight per label: uniqueness = its average uniqueness among overlapping Triple "
                   "Barrier labels (AFML ch. 4), so clusters of overlapping labels count as the few independent "
                   "ones they are; none = 1 each")
    g.add_argument("--threshold", type=float, default=None, help="signal threshold stored in the agent; None = the "
                   "training-set quantile that signals as often as positives occur")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of weights, shuffling and dropout")
    g = p.add_argument_group("hardware and output")
    g.add_argument("--gpu", action="store_true", help="train on CUDA; exits at once if CUDA is absent")
    g.add_argument("--profile", default=d.profile, choices=["auto", "beast", "safe"],
                   help="hardware profile (auto detects GPU memory and the container's RAM)")
    g.add_argument("--feed", default=d.feed, choices=["auto", "host", "resident", "prefetch"],
                   help="how batches reach the model: host = gathered in the main process; resident = windows copied "
                        "to the device once and gathered there; prefetch = gathered on a background thread, pinned; "
                        "auto = the profile's (beast on CUDA: resident). Same batches either way")
    g.add_argument("--compile", action="store_true", help="torch.compile the model for training (CUDA; measure first: "
                   "benchmarks/bench_gpu.py)")
    g.add_argument("--out", default=None, help="where to write the ONNX agent; None = models/<data name>.onnx")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists (otherwise refused)")
    g.add_argument("--checkpoint-dir", default=None, help="where checkpoints go; None = checkpoints/<out name>/")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint of an interrupted run")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_dict(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the options set, as plain values (validated when the config is built)."""
    features = None if args.features is None else [f.strip() for f in args.features.split(",") if f.strip()]
    return dict(
        data=args.data, start=args.start, end=args.end, holdout=args.holdout, features=features,
        seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers,
        dropout=args.dropout, positional=args.positional, pooling=args.pooling, epochs=args.epochs,
        patience=args.patience, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup=args.warmup, val_fraction=args.val_fraction, seed=args.seed, pt=args.pt, sl=args.sl,
        horizon=args.horizon,
        focal_alpha=None if args.focal_alpha is not None and args.focal_alpha < 0 else args.focal_alpha,
        focal_gamma=args.focal_gamma, threshold=args.threshold, normalise=args.normalise, profile=args.profile,
        gpu=args.gpu, feed=args.feed, compile=args.compile, sample_weights=args.sample_weights, primary=args.primary,
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(config_dict(args))


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (created if missing), or None: tried with a real file."""
    import os
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _list_features() -> int:
    from ..data.features import FEATURES

    for name, fdef in FEATURES.items():
        params = ", ".join(f"{k}={v}" for k, v in fdef.defaults.items())
        print(f"{name:<10} {params}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command: parse, check, train (in child processes), print the card's summary; the exit status."""
    return run_command(_main, argv)


def check_options(args: argparse.Namespace) -> tuple[Path, Path]:
    """Refuse what would fail after training (UsageError): the agent file and checkpoint folder it would write,
    and numbers the job file (JSON) cannot hold; the other options are validated by the first step.
    Returns the agent's path and the checkpoint folder."""
    for key, value in config_dict(args).items():  # the job file is JSON: NaN and inf stop here, in one line
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{key.replace('_', '-')} {value}: must be a finite number")
    out = Path(args.out) if args.out else default_out(args.data)
    from datafeeds.atomic import refusal

    problem = refusal(out, streams=False)
    if problem:
        raise UsageError(f"--out {out}: {problem}")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it, or choose another --out")
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else Path("checkpoints") / out.stem
    for option, folder in (("--out", out.parent), ("--checkpoint-dir", ckpt_dir)):
        problem = unwritable(folder)
        if problem:  # found now, not after the training it would lose
            raise UsageError(f"{option}: cannot write in {folder} ({problem}); choose another folder")
    return out, ckpt_dir


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list_features:
        return _list_features()
    out, ckpt_dir = check_options(args)

    from .staged import CARD_FILE, run

    command = "python -m agents.train" + ("" if not argv else " " + shlex.join(argv))
    # the steps run in child processes (agents.training.staged): this process stays small, so a container
    # holds one step's imports at a time; the options are validated by the first step
    job = {"config": config_dict(args), "out": str(out), "resume": args.resume, "command": command,
           "quiet": args.quiet}
    code = run(job, ckpt_dir)
    if code != 0:
        return code
    card = json.loads((ckpt_dir / CARD_FILE).read_text())
    from ..artifact.inspect import gbm_line, linear_line, universe_table, weights_line
    from ..artifact.metadata import loss_label
    from ..artifact.verdict import CAVEAT, verdict

    m = card["metrics"]
    lb = m["label_balance"]
    ds = card["dataset"]
    pr = m["val_at_threshold"]
    print(f"\nwrote {out} ({card.get('exporter', '?')} exporter)")
    print(f"data        {ds['name']}  train {ds['train'][0][:10]}..{ds['train'][1][:10]}"
          f"  validation {ds['validation'][0][:10]}..{ds['validation'][1][:10]}"
          f"  holdout from {str(ds['holdout_start'])[:10]}")
    print(f"labels      train positive rate {lb['train_positive_rate']:.3f} ({lb['train_events']} events)"
          f"  val {lb['val_positive_rate']:.3f} ({lb['val_events']})")
    if ds.get("universe"):
        print(universe_table(ds))
    print(f"loss        train {m['train_loss']:.4f}  val {m['val_loss']:.4f} (best epoch {m['best_epoch']}; "
          f"{loss_label(card['train_config']['focal_alpha'], card['train_config']['focal_gamma'])})")
    print(f"  no skill  base rate: train {m['baseline_train_loss']:.4f}  val {m['baseline_val_loss']:.4f};"
          f"  best constant p={m['best_constant_p']:.3f}: train {m['best_constant_train_loss']:.4f}"
          f"  val {m['best_constant_val_loss']:.4f}")
    print(f"log-loss    val {m['val_logloss']:.4f} (base rate {m['baseline_val_logloss']:.4f})")
    print(f"val AUC     {_fmt(m['val_auc'], '.3f')}   adversarial AUC {_fmt(m['adversarial_auc'], '.3f')}"
          " (0.5 = no drift)")
    print(f"linear      {linear_line(m)}")
    print(f"gbm         {gbm_line(m)}")
    print(f"weights     {weights_line(m)}")
    sources = card.get("feature_sources", {})
    print("features    " + ", ".join(f"{k} ({', '.join(v)})" for k, v in sources.items()))
    print(f"threshold   {m['threshold']:.4f}  val precision {_fmt(pr['precision'], '.3f')}"
          f"  recall {_fmt(pr['recall'], '.3f')}"
          f"  signal rate {_fmt(pr['signal_rate'], '.3f')}")
    if isinstance(m.get("primary"), dict):
        from ..artifact.inspect import primary_line

        print(primary_line(m["primary"], pr))
    line = verdict(m)
    print(f"verdict     {line}")
    if not line.startswith("no verdict"):
        print(f"            ({CAVEAT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
