"""The training loop and the whole pipeline behind ``python -m agents.train`` (the CLI is agents/train.py).

Steps (prepare.py, then here): load -> features -> TBM labels -> chronological train/validation split purged by the label
horizon -> normalisation fitted on train only -> AdamW + FocalLoss with early stopping, checkpoint
every epoch -> metrics beside the no-skill baseline -> ONNX export with parity check.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import LazySequenceDataset
from .evaluation import EVALUATION_MEMORY, evaluate, loss_of, predict_logits
from .export import EXPORTER_MEMORY, export_agent
from .hardware import (
    Profile, check_fits, choose_profile, configure_main_threads, detect, estimate_train_memory,
    require_cuda, worker_init_fn,
)
from .losses import FocalLoss
from .metadata import build_card
from .model import TransformerAgent
from .optim import AdamW
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
    # the steps after this one (evaluation with scikit-learn, the export) need memory too, in this
    # process or in their own (agents.staged, each no bigger than this one's imports): the run needs
    # the largest of the three on top of what is in use now
    check_fits(max(need, EVALUATION_MEMORY, EXPORTER_MEMORY["torchscript"]), resources)

    loss_fn = FocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    # agents.optim.AdamW: torch.optim's, op for op, without the ~67 MiB torch._dynamo import
    opt = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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


def make_card(cfg: TrainConfig, prep: Prepared, model: TransformerAgent, state: dict, run: dict, command: str) -> dict:
    """The agent card of a fitted model: metrics beside their no-skill baselines, provenance, settings.

    ``run``: the profile that trained it (``{"name", "reason", "batch_size"}``).
    """
    metrics = evaluate(cfg, prep, model, state["best_epoch"], state["history"])
    metrics["profile"] = dict(run)
    return build_card(cfg, prep, model, metrics, command)


def parity_batch(cfg: TrainConfig, prep: Prepared) -> np.ndarray:
    """Up to 64 real validation windows (training ones for a refit): what the export's parity check runs on."""
    ends = prep.val_ends if len(prep.val_ends) else prep.train_ends[-64:]
    ds = LazySequenceDataset(prep.x, prep.y, cfg.seq_len, index=ends)
    return ds.batch(np.arange(min(len(ds), 64)))[0].numpy()


def train(cfg: TrainConfig, out: Path, *, checkpoint_dir: Path, resume: bool = False, command: str = "",
          on_epoch=None, stop_after: int | None = None, progress: bool = True,
          profile: Profile | None = None, exporter: str = "auto") -> TrainResult | None:
    """The whole pipeline in this process, ending with ``out`` written; None if stopped early by
    ``stop_after`` (tests). ``python -m agents.train`` runs the same steps in child processes
    (:mod:`agents.staged`) so that a small container holds one step's imports at a time."""
    if cfg.gpu:
        require_cuda()  # fail before loading anything
    prep = prepare(cfg)
    res = fit(cfg, prep, checkpoint_dir=checkpoint_dir, resume=resume, on_epoch=on_epoch,
              stop_after=stop_after, progress=progress, profile=profile)
    if res["interrupted"]:
        return None
    model = res["model"]
    card = make_card(cfg, prep, model, res["state"], profile_record(res["profile"], res["batch_size"]), command)
    export_agent(model, card, out, parity_batch(cfg, prep), exporter=exporter)
    return TrainResult(card=card, model=model, prep=prep)


def profile_record(profile: Profile, batch_size: int) -> dict:
    """What the card records of the hardware profile a model was trained with."""
    return {"name": profile.name, "reason": profile.reason, "batch_size": batch_size}
