"""Train a TransformerAgent on Triple Barrier labels and export it as a self-describing ONNX file.

    python -m agents.train                       # bundled sp500, last 20% held out for backtests
    python -m agents.train --epochs 1 --out /tmp/quick.onnx
    python -m agents.train --data my.csv --end 2020-12-31 --gpu

Steps (prepare.py, then here): load -> features -> TBM labels -> chronological train/validation split purged by the label
horizon -> normalisation fitted on train only -> AdamW + FocalLoss with early stopping, checkpoint
every epoch -> metrics beside the no-skill baseline -> ONNX export with parity check.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datafeeds import DataError

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import LazySequenceDataset
from .evaluation import evaluate, loss_of, predict_logits
from .export import ExportError, export_agent
from .features import FEATURES
from .hardware import (
    HardwareError, Profile, check_fits, choose_profile, configure_main_threads, detect, estimate_train_memory,
    require_cuda, worker_init_fn,
)
from .losses import FocalLoss
from .metadata import build_card
from .model import TransformerAgent
from .prepare import Prepared, prepare

log = logging.getLogger(__name__)


def _epoch_batches(ds, batch_size, seed, epoch, num_workers, pin_memory):
    """Shuffled batches for one epoch; the order depends only on (seed, epoch) so a resumed run replays it."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if num_workers == 0:
        yield from ds.iter_batches(batch_size, shuffle=True, generator=gen)
        return
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers,
        pin_memory=pin_memory, worker_init_fn=worker_init_fn, persistent_workers=False,
    )
    yield from loader


def fit(cfg: TrainConfig, prep: Prepared, *, checkpoint_dir: Path | None, resume: bool = False,
        on_epoch=None, stop_after: int | None = None, progress: bool = True, profile: Profile | None = None) -> dict:
    """Train with early stopping, checkpointing every epoch; return the result with the best weights.

    With no validation windows it runs exactly ``cfg.epochs`` epochs and keeps the last weights
    (the walk-forward refit on train+validation). ``checkpoint_dir=None`` skips checkpoints (tuning
    trials). ``on_epoch(record, state)`` may raise to stop (Optuna pruning). ``stop_after`` ends the
    run after that many epochs of this call (as if killed), for tests.
    """
    resources = detect()
    if cfg.gpu:
        require_cuda()
    profile = profile or choose_profile(resources, cfg.profile, gpu=cfg.gpu)
    device = torch.device(profile.device)
    batch_size = cfg.batch_size or profile.batch_size
    threads = configure_main_threads(resources)

    torch.manual_seed(cfg.seed)
    model = TransformerAgent(cfg.model_config(len(prep.names))).to(device)
    mc = model.config
    need = estimate_train_memory(len(prep.x), len(prep.names), cfg.seq_len, batch_size, model.num_parameters(),
                                 profile.num_workers,
                                 d_model=mc.d_model, n_layers=mc.n_layers, n_heads=mc.n_heads,
                                 dim_feedforward=mc.dim_feedforward)
    check_fits(need, resources)

    loss_fn = FocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = profile.amp and device.type == "cuda"
    # what, besides the config, decides the numbers an epoch produces; a resume must match it
    run = {"batch_size": batch_size, "device": device.type, "amp": amp, "threads": threads, "data_sha256": prep.sha256}
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    train_ds = LazySequenceDataset(prep.x, prep.y, cfg.seq_len, index=prep.train_ends)
    val_ds = LazySequenceDataset(prep.x, prep.y, cfg.seq_len, index=prep.val_ends)
    y_val = prep.y[prep.val_ends].astype(np.float64)

    state = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "best_weights": None, "bad_epochs": 0, "history": []}
    ckpt = load_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s; starting from scratch", checkpoint_dir)
    if ckpt is not None:
        _check_resumable(ckpt, cfg, run, checkpoint_dir)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        log.info("resumed from %s at epoch %d", checkpoint_dir, state["epoch"])

    epochs_run = 0
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"]
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout draws depend on the epoch alone
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        bar = tqdm(total=len(train_ds), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="win",
                   disable=None if progress else True, leave=False, file=sys.stderr)
        for xb, yb in _epoch_batches(train_ds, batch_size, cfg.seed, epoch, profile.num_workers, profile.pin_memory):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True).float()
            with torch.autocast(device.type, enabled=amp):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            total += loss.item() * len(yb)
            count += len(yb)
            bar.update(len(yb))
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        val_loss = loss_of(loss_fn, predict_logits(model, val_ds, device), y_val) if len(val_ds) else None
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_loss": val_loss,
                  "seconds": time.perf_counter() - t0}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        if val_loss is None or val_loss < state["best_val"] - 1e-6:  # no validation: keep the latest
            state.update(best_val=math.inf if val_loss is None else val_loss, best_epoch=epoch + 1, bad_epochs=0,
                         best_weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, {
                "config": cfg.to_dict(), "run": run, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(), "state": state,
            })
        if on_epoch:
            on_epoch(record, state)
        epochs_run += 1
        if stop_after is not None and epochs_run >= stop_after:
            return {"interrupted": True, "state": state}

    model.load_state_dict(state["best_weights"])
    model = model.cpu().eval()
    return {"interrupted": False, "model": model, "state": state, "profile": profile,
            "batch_size": batch_size, "resources": resources}


def _check_resumable(ckpt: dict, cfg: TrainConfig, run: dict, directory) -> None:
    """Refuse a resume that would not continue the same computation."""
    saved, now = ckpt.get("config", {}), cfg.to_dict()
    diff = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now
            if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != now[k]]
    saved_run = ckpt.get("run", {})
    diff += [f"{k}={saved_run.get(k)!r} (now {run[k]!r})" for k in ("batch_size", "device", "amp", "data_sha256")
             if saved_run.get(k) != run[k]]
    if diff:
        raise ValueError(
            f"--resume: the checkpoint in {directory} was made with different settings " + ", ".join(diff)
            + "; rerun with the original options (e.g. --batch-size) or without --resume"
        )
    if saved_run.get("threads") != run["threads"]:
        log.warning("resuming with %s CPU threads where the checkpoint used %s: float results may differ slightly",
                    run["threads"], saved_run.get("threads"))


@dataclass
class TrainResult:
    card: dict  # the metadata written into the ONNX file
    model: TransformerAgent  # best weights, eval mode, on CPU
    prep: Prepared


def train(cfg: TrainConfig, out: Path, *, checkpoint_dir: Path, resume: bool = False, command: str = "",
          on_epoch=None, stop_after: int | None = None, progress: bool = True,
          profile: Profile | None = None) -> TrainResult | None:
    """The whole pipeline, ending with ``out`` written; None if stopped early by ``stop_after`` (tests)."""
    if cfg.gpu:
        require_cuda()  # fail before loading anything
    prep = prepare(cfg)
    res = fit(cfg, prep, checkpoint_dir=checkpoint_dir, resume=resume, on_epoch=on_epoch,
              stop_after=stop_after, progress=progress, profile=profile)
    if res["interrupted"]:
        return None
    model, state = res["model"], res["state"]
    metrics = evaluate(cfg, prep, model, state["best_epoch"], state["history"])
    metrics["profile"] = {"name": res["profile"].name, "reason": res["profile"].reason, "batch_size": res["batch_size"]}
    card = build_card(cfg, prep, model, metrics, command)
    val_ds = LazySequenceDataset(prep.x, prep.y, cfg.seq_len, index=prep.val_ends)
    example, _ = val_ds.batch(np.arange(min(len(val_ds), 64)))  # parity is checked on real validation windows
    export_agent(model, card, out, example.numpy())
    return TrainResult(card=card, model=model, prep=prep)


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m agents.train",
        description="Train a TransformerAgent on Triple Barrier labels and export it to ONNX. "
        "Defaults train on the bundled S&P 500 sample, holding out its last 20% for backtests.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="bundled sample name (see datafeeds.list_samples()) or a CSV/Parquet path")
    g.add_argument("--start", default=None, help="first date to load, e.g. 2005-01-01")
    g.add_argument("--end", default=None, help="last date to load; later bars are never seen")
    g.add_argument("--holdout", type=float, default=d.holdout, help="last fraction of loaded bars kept unseen for out-of-sample backtests")
    g.add_argument("--features", default=",".join(d.features),
                   help=f"comma-separated feature names, from: {', '.join(FEATURES)}")
    g = p.add_argument_group("labels (Triple Barrier)")
    g.add_argument("--pt", type=float, default=d.pt, help="take-profit barrier in ATRs")
    g.add_argument("--sl", type=float, default=d.sl, help="stop-loss barrier in ATRs")
    g.add_argument("--horizon", type=int, default=d.horizon, help="vertical barrier in bars")
    g = p.add_argument_group("model and training")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="bars per input window")
    g.add_argument("--d-model", type=int, default=d.d_model)
    g.add_argument("--n-heads", type=int, default=d.n_heads)
    g.add_argument("--n-layers", type=int, default=d.n_layers)
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--patience", type=int, default=d.patience, help="epochs without validation improvement before stopping")
    g.add_argument("--batch-size", type=int, default=None, help="windows per step; None = the hardware profile's")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="last fraction of labelled events used for validation")
    g.add_argument("--focal-alpha", type=float, default=d.focal_alpha, help="focal loss weight of positives; negative = none")
    g.add_argument("--focal-gamma", type=float, default=d.focal_gamma, help="focal loss focusing parameter (0 = cross-entropy)")
    g.add_argument("--threshold", type=float, default=None, help="signal threshold stored in the agent; None = the training-set quantile that signals as often as positives occur")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("hardware and output")
    g.add_argument("--gpu", action="store_true", help="train on CUDA; exits at once if CUDA is absent")
    g.add_argument("--profile", default=d.profile, choices=["auto", "beast", "safe"], help="hardware profile (auto detects GPU memory and the container's RAM)")
    g.add_argument("--out", default="models/agent1.onnx", help="where to write the ONNX agent")
    g.add_argument("--checkpoint-dir", default=None, help="where checkpoints go; None = checkpoints/<out name>/")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint of an interrupted run")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    features = None if args.features is None else tuple(f.strip() for f in args.features.split(",") if f.strip())
    return TrainConfig(
        data=args.data, start=args.start, end=args.end, holdout=args.holdout, features=features,
        seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers,
        dropout=args.dropout, epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
        lr=args.lr, val_fraction=args.val_fraction, seed=args.seed, pt=args.pt, sl=args.sl,
        horizon=args.horizon, focal_alpha=None if args.focal_alpha is not None and args.focal_alpha < 0 else args.focal_alpha,
        focal_gamma=args.focal_gamma, threshold=args.threshold, profile=args.profile, gpu=args.gpu,
    )


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else Path("checkpoints") / out.stem
    command = "python -m agents.train" + ("" if not argv else " " + shlex.join(argv))
    try:
        cfg = config_from_args(args)
        res = detect()
        profile = choose_profile(res, cfg.profile, gpu=cfg.gpu)
        print(f"hardware: {profile.name} profile ({profile.reason})")

        def on_epoch(rec, state):
            print(f"epoch {rec['epoch']:>3}: train loss {rec['train_loss']:.4f}  val loss {_fmt(rec['val_loss'])}"
                  f"  ({rec['seconds']:.1f}s){'  *best' if state['best_epoch'] == rec['epoch'] else ''}")

        card = train(cfg, out, checkpoint_dir=ckpt_dir, resume=args.resume, command=command,
                     on_epoch=on_epoch, progress=not args.quiet, profile=profile).card
    except (DataError, HardwareError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc} (the last checkpoint is kept in {ckpt_dir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {command} --resume", file=sys.stderr)
        return 130
    m = card["metrics"]
    lb = m["label_balance"]
    ds = card["dataset"]
    pr = m["val_at_threshold"]
    print(f"\nwrote {out}")
    print(f"data        {ds['name']}  train {ds['train'][0][:10]}..{ds['train'][1][:10]}"
          f"  validation {ds['validation'][0][:10]}..{ds['validation'][1][:10]}  holdout from {str(ds['holdout_start'])[:10]}")
    print(f"labels      train positive rate {lb['train_positive_rate']:.3f} ({lb['train_events']} events)"
          f"  val {lb['val_positive_rate']:.3f} ({lb['val_events']})")
    print(f"focal loss  train {m['train_loss']:.4f}  val {m['val_loss']:.4f} (best epoch {m['best_epoch']})")
    print(f"  no skill  base rate: train {m['baseline_train_loss']:.4f}  val {m['baseline_val_loss']:.4f};"
          f"  best constant p={m['best_constant_p']:.3f}: train {m['best_constant_train_loss']:.4f}"
          f"  val {m['best_constant_val_loss']:.4f}")
    print(f"log-loss    val {m['val_logloss']:.4f} (base rate {m['baseline_val_logloss']:.4f})")
    print(f"val AUC     {_fmt(m['val_auc'], '.3f')}   adversarial AUC {_fmt(m['adversarial_auc'], '.3f')} (0.5 = no drift)")
    print(f"threshold   {m['threshold']:.4f}  val precision {_fmt(pr['precision'], '.3f')}  recall {_fmt(pr['recall'], '.3f')}"
          f"  signal rate {_fmt(pr['signal_rate'], '.3f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
