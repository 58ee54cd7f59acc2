"""The training loop and the whole pipeline behind ``python -m agents.train`` (the CLI is agents/training/cli.py).

Steps (agents/data/prepare.py, then here): load -> features -> TBM labels -> chronological train/validation split
purged by the label horizon -> normalisation fitted on train only -> AdamW + FocalLoss with early stopping, checkpoint
every epoch -> metrics beside the no-skill baseline -> ONNX export with parity check.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from labeling.jit import JIT_MEMORY, kernels_compiled

from ..artifact.evaluation import EVALUATION_MEMORY, evaluate, mean_loss
from ..artifact.evaluation import loss_weights as training_weights  # the loss weights, shared with the GBM baseline
from ..artifact.export import EXPORTER_MEMORY, export_agent
from ..artifact.metadata import build_card
from ..data.feed import ResidentWindows, epoch_ids, fits_on_device, prefetch, resident_bytes
from ..data.prepare import Prepared, prepare
from ..model.losses import FocalLoss, focal_loss
from ..model.optim import AdamW
from ..model.transformer import TransformerAgent
from ..resources.hardware import (
    HardwareError, Profile, check_fits, choose_profile, configure_main_threads, detect, estimate_train_memory,
    require_cuda,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig

log = logging.getLogger(__name__)


def epoch_batches(ds, resident, feed: str, batch_size: int, seed: int, epoch: int, device, weights=None):
    """Shuffled batches (x, y, w) for one epoch, on ``device``; the order depends only on (seed, epoch),
    whatever the feed or device, so a resumed run replays it and every feed trains on the same batches.
    ``w`` is ``weights`` (one per window of ``ds``) of the batch's windows, or None without weights."""
    order = list(epoch_ids(ds, batch_size, seed, epoch))
    w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32), device=device)
    if resident is not None:
        batches = (resident.batch(ids) for ids in order)
    else:
        host = (ds.batch(ids) for ids in order)
        batches = prefetch(host, device) if feed == "prefetch" else ((xb.to(device), yb.to(device)) for xb, yb in host)
    for ids, (xb, yb) in zip(order, batches):
        yield xb, yb, None if w is None else w[torch.as_tensor(ids, device=device)]


def amp_dtype_for(profile: Profile, device: torch.device) -> torch.dtype | None:
    """bf16 where the card supports it, else fp16 (with a GradScaler); None without mixed precision."""
    if not (profile.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """TF32 matmuls and convolutions for the duration (a process-wide torch setting, restored after)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train_step(model, opt, scaler, loss_fn, xb, yb, amp_dtype, wb=None) -> torch.Tensor:
    """One optimisation step; returns the (detached) loss, each window's weighted by ``wb`` if given."""
    with torch.autocast(xb.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(xb)
    if wb is None:
        loss = loss_fn(logits.float(), yb.float())
    else:  # weights average 1 over the training set, so the loss keeps its scale
        loss = (focal_loss(logits.float(), yb.float(), loss_fn.alpha, loss_fn.gamma, "none") * wb).mean()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    return loss.detach()


BATCH_CANDIDATES = (256, 512, 1024, 2048, 4096, 8192)
_BATCH_TOLERANCE = 0.9  # the smallest batch within 10% of the fastest: larger ones mean fewer steps per epoch


def measure_batch_size(model, loss_fn, batches_of, device, amp_dtype=None, *, candidates=BATCH_CANDIDATES,
                       steps: int = 10, warmup: int = 3, max_windows: int | None = None) -> tuple[int, list[dict]]:
    """Time training steps at each candidate batch size on a copy of ``model``; return the smallest batch
    within 10% of the best windows/s, and the table measured.

    ``batches_of(b)`` returns one (X, y) batch of ``b`` windows on ``device``. A candidate that runs out of
    device memory ends the search (larger ones would too); ``max_windows`` skips batches larger than the data.
    """
    import copy

    table = []
    for b in candidates:
        if max_windows is not None and b > max_windows:
            break
        trial = copy.deepcopy(model).to(device).train()
        opt = AdamW(trial.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        try:
            xb, yb = batches_of(b)
            for k in range(warmup + steps):
                if k == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                train_step(trial, opt, scaler, loss_fn, xb, yb, amp_dtype)
            _sync(device)
            dt = (time.perf_counter() - t0) / steps
        except torch.cuda.OutOfMemoryError:
            table.append({"batch_size": b, "out_of_memory": True})
            break
        finally:
            del trial, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
        table.append({"batch_size": b, "step_ms": dt * 1e3, "windows_per_s": b / dt})
    timed = [r for r in table if "windows_per_s" in r]
    if not timed:
        raise HardwareError(f"no batch size of {list(candidates)} fits on {device}: lower --seq-len or --d-model, "
                            "or give --batch-size")
    best = max(r["windows_per_s"] for r in timed)
    chosen = next(r["batch_size"] for r in timed if r["windows_per_s"] >= _BATCH_TOLERANCE * best)
    return chosen, table


def lr_factor(schedule: str, step: int, total: int, warmup: float) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` of ``total`` (agents.training.config
    LR_SCHEDULES): 1 throughout, or a linear warm-up then a half-cosine down to 0."""
    if schedule == "constant" or total <= 0:
        return 1.0
    ramp = int(warmup * total) if schedule == "onecycle" else 0
    if step < ramp:
        return (step + 1) / ramp
    done = min(1.0, (step - ramp) / max(1, total - ramp))
    return 0.5 * (1.0 + math.cos(math.pi * done))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    threads = configure_main_threads(resources)
    amp_dtype = amp_dtype_for(profile, device)
    feed = profile.feed if cfg.feed == "auto" else cfg.feed
    train_ds, val_ds = prep.dataset("train", cfg.seq_len), prep.dataset("val", cfg.seq_len)

    ckpt = load_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s; starting from scratch", checkpoint_dir)
    if feed == "resident" and device.type == "cuda":
        ok, why = fits_on_device(train_ds, device)
        if not ok:
            log.warning("feed: %s; prefetching batched gathers from pinned host memory instead", why)
            feed = "prefetch"

    mc = cfg.model_config(len(prep.names))
    with torch.device("meta"):  # the parameter count without allocating them: checked before they exist
        n_parameters = TransformerAgent(mc).num_parameters()
    # given; else, resuming a run that chose its own (measured on a GPU), that one; else the profile's
    chosen_before = ckpt is not None and ckpt.get("config", {}).get("batch_size") is None
    batch_size = cfg.batch_size or (chosen_before and ckpt.get("run", {}).get("batch_size")) or profile.batch_size
    need = estimate_train_memory(max(1, prep.n_rows), len(prep.names), cfg.seq_len, batch_size, n_parameters,
                                 0, d_model=mc.d_model, n_layers=mc.n_layers, n_heads=mc.n_heads,
                                 dim_feedforward=mc.dim_feedforward)
    if feed == "resident" and device.type == "cpu":
        need += resident_bytes(train_ds)  # the "device" copy is host memory here
    # the steps after this one (evaluation with scikit-learn, the export) need memory too, in this
    # process or in their own (agents.training.staged, each no bigger than this one's imports): the run needs
    # the largest of the three on top of what is in use now. What is in use depends on whether numba
    # compiled the kernels here (a cold cache) or loaded them: counted as compiled either way, so the
    # same command always gets the same answer
    check_fits(max(need, EVALUATION_MEMORY, EXPORTER_MEMORY["torchscript"]), resources,
               reserved=0 if kernels_compiled() else JIT_MEMORY)
    torch.manual_seed(cfg.seed)
    model = TransformerAgent(mc).to(device)

    resident = val_feed = None
    if feed == "resident":
        resident = ResidentWindows(train_ds, device)
        try:
            val_feed = resident.sibling(val_ds)
        except ValueError:
            val_feed = ResidentWindows(val_ds, device)
    loss_fn = FocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    weights = training_weights(cfg, prep)
    batch_table = None
    if cfg.batch_size is None and ckpt is None and profile.name == "beast" and device.type == "cuda" and len(train_ds):
        def batch_of(b):
            ids = np.arange(min(b, len(train_ds)))
            if resident is not None:
                return resident.batch(ids)
            xb, yb = train_ds.batch(ids)
            return xb.to(device), yb.to(device)

        batch_size, batch_table = measure_batch_size(model, loss_fn, batch_of, device, amp_dtype,
                                                     max_windows=len(train_ds))
        log.info("batch size %d chosen by measurement: %s", batch_size, batch_table)

    # agents.model.optim.AdamW: torch.optim's, op for op, without the torch._dynamo import
    # (measurements: docs/DECISIONS.md)
    opt = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = {None: False, torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    # what, besides the config, decides the numbers an epoch produces; a resume must match it
    run = {"batch_size": batch_size, "device": device.type, "amp": amp, "threads": threads, "data_sha256": prep.sha256}
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if cfg.compile and device.type == "cpu":
        log.warning("--compile on the CPU: compiling takes minutes and training ran ~10x slower in our "
                    "measurements; it is meant for CUDA")
    train_model = torch.compile(model) if cfg.compile else model

    state = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "best_weights": None, "bad_epochs": 0, "history": []}
    if ckpt is not None:
        _check_resumable(ckpt, cfg, run, checkpoint_dir)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        log.info("resumed from %s at epoch %d", checkpoint_dir, state["epoch"])

    epochs_run = 0
    with tf32_matmuls(profile.tf32 and device.type == "cuda"):
        while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
            epoch = state["epoch"]
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout draws depend on the epoch alone
            train_model.train()
            t0, total, count = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device), 0
            bar = tqdm(total=len(train_ds), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="win",
                       disable=None if progress else True, leave=False, file=sys.stderr)
            steps_per_epoch = -(-len(train_ds) // batch_size)
            for k, (xb, yb, wb) in enumerate(epoch_batches(train_ds, resident, feed, batch_size, cfg.seed, epoch,
                                                           device, weights)):
                # a function of the step alone, so a resume replays it
                opt.lr = cfg.lr * lr_factor(cfg.lr_schedule, epoch * steps_per_epoch + k, cfg.epochs * steps_per_epoch,
                                            cfg.warmup)
                loss = train_step(train_model, opt, scaler, loss_fn, xb, yb, amp_dtype, wb)
                total += loss.double() * len(yb)  # summed on the device: no host sync per step
                count += len(yb)
                bar.update(len(yb))
                if bar.disable is False:
                    bar.set_postfix(loss=f"{float(total) / count:.4f}", refresh=False)
            bar.close()
            val_loss = mean_loss(model, val_feed or val_ds, loss_fn, device) if len(val_ds) else None
            record = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1), "val_loss": val_loss,
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
            "batch_size": batch_size, "resources": resources, "feed": feed, "amp": amp,
            "tf32": profile.tf32 and device.type == "cuda", "compile": cfg.compile, "batch_table": batch_table}


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
    ds = prep.dataset("val", cfg.seq_len)
    if len(ds) == 0:
        ds = prep.dataset("train", cfg.seq_len)
        return ds.batch(np.arange(max(0, len(ds) - 64), len(ds)))[0].numpy()
    return ds.batch(np.arange(min(len(ds), 64)))[0].numpy()


def train(cfg: TrainConfig, out: Path, *, checkpoint_dir: Path, resume: bool = False, command: str = "",
          on_epoch=None, stop_after: int | None = None, progress: bool = True,
          profile: Profile | None = None, exporter: str = "auto") -> TrainResult | None:
    """The whole pipeline in this process, ending with ``out`` written; None if stopped early by
    ``stop_after`` (tests). ``python -m agents.train`` runs the same steps in child processes
    (:mod:`agents.training.staged`) so that a small container holds one step's imports at a time."""
    if cfg.gpu:
        require_cuda()  # fail before loading anything
    prep = prepare(cfg)
    res = fit(cfg, prep, checkpoint_dir=checkpoint_dir, resume=resume, on_epoch=on_epoch,
              stop_after=stop_after, progress=progress, profile=profile)
    if res["interrupted"]:
        return None
    model = res["model"]
    card = make_card(cfg, prep, model, res["state"], profile_record(res), command)
    export_agent(model, card, out, parity_batch(cfg, prep), exporter=exporter)
    return TrainResult(card=card, model=model, prep=prep)


def profile_record(res: dict) -> dict:
    """What the card records of how a model was trained (``res``: what `fit` returned)."""
    profile = res["profile"]
    rec = {"name": profile.name, "reason": profile.reason, "batch_size": res["batch_size"], "device": profile.device,
           "feed": res["feed"], "amp": res["amp"], "tf32": res["tf32"], "compile": res["compile"]}
    if res.get("batch_table"):
        rec["batch_measured"] = res["batch_table"]
    return rec
