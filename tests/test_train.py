"""The trainer: honest metrics, purged split, checkpoints that resume to the same model, clear CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.training.checkpoint import load_checkpoint
from datafeeds import load_ohlcv
from agents.artifact.runtime import OnnxAgent
from agents.resources.hardware import choose_profile, detect
from agents.training.config import TrainConfig
from agents.data.prepare import prepare
from agents.training.cli import main
from agents.training.trainer import fit
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _focal_by_hand(p, y, alpha=0.25, gamma=2.0):
    """-alpha_t (1 - p_t)^gamma log(p_t), averaged: the formula of Lin et al., in numpy (alpha None: 1)."""
    p_t = np.where(y == 1, p, 1 - p)
    a_t = 1.0 if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return float(np.mean(-a_t * (1 - p_t) ** gamma * np.log(p_t)))


@pytest.mark.parametrize("loss", ["default", "focal"])
def test_card_reports_losses_beside_the_no_skill_baseline(tiny_agent, tmp_path, loss):
    from sklearn.metrics import roc_auc_score

    from agents.training.trainer import train

    if loss == "default":  # cross-entropy: the best constant is the base rate
        path, result = tiny_agent
    else:  # focal loss: the base rate is not the best constant
        result = train(TrainConfig(**TINY, focal_alpha=0.25, focal_gamma=2.0), tmp_path / "f.onnx",
                       checkpoint_dir=tmp_path / "ckpt", progress=False)
    alpha, gamma = result.card["train_config"]["focal_alpha"], result.card["train_config"]["focal_gamma"]
    m, prep, model = result.card["metrics"], result.prep, result.model
    y_tr, y_va = prep.labels("train"), prep.labels("val")
    assert m["label_balance"]["val_events"] == len(y_va)
    assert m["label_balance"]["val_positive_rate"] == pytest.approx(float(np.mean(y_va)))
    # the model's probabilities on every validation window, then every number by its formula
    with torch.no_grad():
        z = torch.cat([model(xb) for xb, _ in prep.dataset("val", TINY["seq_len"]).iter_batches(256)]).double().numpy()
    p = 1 / (1 + np.exp(-z))
    base = float(np.mean(y_tr))
    assert m["val_loss"] == pytest.approx(_focal_by_hand(p, y_va, alpha, gamma), rel=1e-4)
    assert m["baseline_val_loss"] == pytest.approx(_focal_by_hand(np.full(len(y_va), base), y_va, alpha, gamma),
                                                   rel=1e-6)
    logloss = float(np.mean(-(y_va * np.log(p) + (1 - y_va) * np.log(1 - p))))
    assert m["val_logloss"] == pytest.approx(logloss, rel=1e-4)
    assert m["baseline_val_logloss"] == pytest.approx(
        float(-(y_va * np.log(base) + (1 - y_va) * np.log(1 - base)).mean()), rel=1e-6)
    assert m["val_auc"] == pytest.approx(roc_auc_score(y_va, z), abs=1e-9)
    # the best constant by grid search: the base rate under cross-entropy, elsewhere under focal loss
    grid = np.linspace(0.01, 0.99, 9801)
    best = grid[np.argmin([_focal_by_hand(np.full(len(y_tr), q), y_tr, alpha, gamma) for q in grid])]
    assert m["best_constant_p"] == pytest.approx(best, abs=2e-4)
    if loss == "default":
        assert (alpha, gamma) == (None, 0.0) and m["best_constant_p"] == pytest.approx(base, abs=2e-4)
    else:
        assert abs(m["best_constant_p"] - base) > 0.01
    assert len(m["history"]) == m["epochs_run"] == TINY["epochs"]


def test_split_is_purged_and_chronological(tiny_agent):
    _, result = tiny_agent
    prep = result.prep
    assert prep.train_ends.max() < prep.val_ends.min()
    # every training label (span t..t+horizon) ends before validation starts, with >= horizon bars between
    assert prep.val_ends.min() - prep.train_ends.max() - 1 >= TINY["horizon"]


def test_normalisation_uses_training_bars_only(tmp_path):
    df = load_ohlcv("sp500", start=TINY["start"], end=TINY["end"])
    base = prepare(TrainConfig(**{**TINY, "data": _write(df, tmp_path / "a.csv")}))
    # scramble every bar after the training windows: validation and holdout
    changed = df.copy()
    after = slice(int(base.train_ends.max()) + TINY["horizon"] + 1, None)
    changed.iloc[after, :4] = changed.iloc[after, :4].to_numpy()[::-1] * 1.7
    other = prepare(TrainConfig(**{**TINY, "data": _write(changed, tmp_path / "b.csv")}))
    np.testing.assert_array_equal(other.train_ends, base.train_ends)
    np.testing.assert_array_equal(other.mean, base.mean)
    np.testing.assert_array_equal(other.std, base.std)
    rows = base.x[base.train_ends.min() - TINY["seq_len"] + 1 : base.train_ends.max() + 1].astype(np.float64)
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-5)


def _write(df, path):
    df.to_csv(path)
    return str(path)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 3})
    prep = prepare(cfg)
    full = fit(cfg, prep, checkpoint_dir=tmp_path / "a", progress=False)
    assert fit(cfg, prep, checkpoint_dir=tmp_path / "b", stop_after=1, progress=False)["interrupted"]
    assert load_checkpoint(tmp_path / "b")["state"]["epoch"] == 1
    resumed = fit(cfg, prep, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed["state"]["history"] == [
        {**h, "seconds": r["seconds"]} for h, r in zip(full["state"]["history"], resumed["state"]["history"])
    ]
    for (name, a), (_, b) in zip(full["model"].state_dict().items(), resumed["model"].state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_refuses_different_settings(tmp_path):
    cfg = TrainConfig(**TINY)
    prep = prepare(cfg)
    fit(cfg, prep, checkpoint_dir=tmp_path, stop_after=1, progress=False)
    other = TrainConfig(**{**TINY, "lr": 1e-2})
    with pytest.raises(ValueError, match=rf"different settings lr={cfg.lr} \(now 0.01\)"):
        fit(other, prep, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_resume_refuses_a_different_batch_size_and_names_a_broken_checkpoint(tmp_path):
    cfg = TrainConfig(**TINY)
    prep = prepare(cfg)
    fit(cfg, prep, checkpoint_dir=tmp_path, stop_after=1, progress=False)
    other = TrainConfig(**{**TINY, "batch_size": None})  # the profile's batch size (64 here) is fine...
    fit(other, prep, checkpoint_dir=tmp_path / "copy", stop_after=1, progress=False)
    with pytest.raises(ValueError, match=r"batch_size=64 \(now 1024\)"):
        fit(other, prep, checkpoint_dir=tmp_path, resume=True, progress=False,
            profile=dataclasses.replace(choose_profile(detect(), "safe"), batch_size=1024))
    (tmp_path / "last.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="last.pt: not a readable training checkpoint .*; "
                                         "delete it or run without --resume"):
        fit(cfg, prep, checkpoint_dir=tmp_path, resume=True, progress=False)


def _cli(*args):
    return ["--data", "sp500", "--start", TINY["start"], "--end", TINY["end"], "--holdout", "0.25",
            "--seq-len", "16", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--batch-size", "64",
            "--horizon", "10", "--quiet", *args]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A real kill -9 after the first checkpoint, then --resume, ends with the uninterrupted weights."""
    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "agents.train", *_cli("--epochs", "3", "--patience", "5",
           "--out", str(tmp_path / "a.onnx"), "--checkpoint-dir", str(ck))]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (ck / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ck)["state"]["epoch"]
    assert killed_at < 3, "the run finished before it could be killed"
    assert not (tmp_path / "a.onnx").exists()
    done = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # through a pipe too, a line per epoch and per step: a user can tell work from a hang
    lines = done.stdout.splitlines()
    steps = [i for i, ln in enumerate(lines) if ln.startswith(("epoch ", "evaluating: ", "exporting: ", "wrote "))]
    assert [lines[i].split()[0] for i in steps][-3:] == ["evaluating:", "exporting:", "wrote"], done.stdout
    assert any(ln.startswith("epoch ") for ln in lines), done.stdout
    resumed = load_checkpoint(ck)["state"]

    cfg = TrainConfig(**{**TINY, "epochs": 3})
    reference = fit(cfg, prepare(cfg), checkpoint_dir=tmp_path / "ref", progress=False)
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in reference["state"]["history"]]
    for name, value in reference["model"].state_dict().items():
        assert torch.equal(resumed["best_weights"][name], value), name


def test_kill_9_of_the_fit_step_is_reported_as_a_kill_not_out_of_memory(tmp_path):
    """Someone's kill -9 of the step (not the kernel's OOM killer): one line that says so, and advice that works."""
    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "agents.train", *_cli("--epochs", "50", "--patience", "50",
           "--out", str(tmp_path / "a.onnx"), "--checkpoint-dir", str(ck))]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (ck / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children  # the fit step
    os.kill(int(children[0]), signal.SIGKILL)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 1, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines == [f"error: the fit step was killed (SIGKILL, not by the kernel's out-of-memory killer); continue "
                     f"from the last checkpoint ({ck / 'last.pt'}) with: python -m agents.train {shlex.join(cmd[3:])} "
                     "--resume"], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_flag_fails_fast_without_cuda_and_trains_on_the_device_with_it(tmp_path):
    out = tmp_path / "gpu.onnx"
    args = [sys.executable, "-m", "agents.train", "--gpu", "--end", "2012-12-31", "--seq-len", "16", "--d-model", "16",
            "--n-heads", "2", "--n-layers", "1", "--epochs", "1", "--out", str(out), "--checkpoint-dir",
            str(tmp_path / "ckpt"), "--quiet"]
    t0 = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if not torch.cuda.is_available():
        assert done.returncode == 2 and time.monotonic() - t0 < 60
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "CUDA" in lines[0], done.stderr
        assert not out.exists()
        return
    assert done.returncode == 0, done.stderr  # a machine with a GPU: the model trains there
    profile = OnnxAgent.load(out).meta["metrics"]["profile"]
    assert profile["device"].startswith("cuda"), profile


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seq-len", "900", "--end", "2012-12-31"], "lower --seq-len"),
        (["--features", "rsi,macdd"], "did you mean 'macd'"),
        (["--data", "sp5000"], "did you mean 'sp500'"),
        (["--horizon", "3000"], "horizon"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--lr", "-1"], "--lr"),
        (["--pt", "50", "--sl", "50"], "every training label is 0"),
        (["--seed", "-1"], "--seed"),
        (["--focal-alpha", "2"], "--focal-alpha"),
        (["--start", "01/02/2010"], "start: '01/02/2010' is not an ISO date"),
        (["--end", "31/12/2016"], "end: '31/12/2016' is not an ISO date"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(args, message, capfd, tmp_path):
    # the options are checked by the first step, a child process: its stderr is the file descriptor's
    base = ["--start", "2009-01-01", "--end", "2016-12-31", "--out", str(tmp_path / "x.onnx"), "--quiet"]
    assert main(base + args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_command_line_training_writes_an_agent_the_runtime_loads(tmp_path, capfd):
    out = tmp_path / "cli.onnx"
    assert main(_cli("--epochs", "1", "--out", str(out), "--checkpoint-dir", str(tmp_path / "ck"))) == 0
    printed = capfd.readouterr().out
    assert "no skill" in printed and "best constant" in printed and "hardware: safe profile" in printed
    assert "\nverdict     " in printed and "Mann-Whitney" in printed
    agent = OnnxAgent.load(out)
    assert agent.meta["training_command"].startswith("python -m agents.train --data sp500")
    assert agent.meta["dataset"]["sha256"] and agent.meta["dataset"]["holdout_start"]
    json.dumps(agent.meta)  # the whole card is plain JSON


def test_default_out_is_not_the_shipped_agent_and_an_existing_file_is_kept(tmp_path, capsys):
    from agents.training.cli import default_out

    assert default_out(TrainConfig().data) == Path("models/sp500.onnx")  # was models/agent1.onnx, the shipped file
    assert default_out("/data/btc_daily.csv.gz") == Path("models/btc_daily.onnx")
    existing = tmp_path / "mine.onnx"
    existing.write_bytes(b"a model I care about")
    assert main(["--out", str(existing), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {existing} exists; pass --overwrite to replace it, or choose another --out"]
    assert existing.read_bytes() == b"a model I care about"


class _Payload:
    """Unpickling this object calls open(marker, 'w'): what a crafted checkpoint could do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_code_is_refused_and_its_code_never_runs(tmp_path):
    cfg = TrainConfig(**TINY)
    fit(cfg, prepare(cfg), checkpoint_dir=tmp_path / "ck", stop_after=1, progress=False)
    state = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)  # the real checkpoint loads safely
    marker = tmp_path / "payload_ran"
    state["state"]["history"].append(_Payload(marker))  # hidden deep inside an ordinary checkpoint
    torch.save(state, tmp_path / "ck" / "last.pt")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "ck")
    message = str(info.value)
    assert "\n" not in message and "last.pt: refused" in message and "run without --resume" in message
    assert not marker.exists()
    # the CLI: one line, exit 2, and still nothing ran
    ck = tmp_path / "ck2"
    ck.mkdir()
    torch.save({"model": {}, "x": _Payload(marker)}, ck / "last.pt")
    done = subprocess.run([sys.executable, "-m", "agents.train",
                           *_cli("--epochs", "1", "--out", str(tmp_path / "a.onnx"), "--checkpoint-dir", str(ck),
                                 "--resume")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "last.pt: refused" in lines[0], done.stderr
    assert not marker.exists()


def test_uniqueness_weights_scale_each_window_loss_and_average_one():
    import torch

    from agents.model.losses import FocalLoss, focal_loss
    from agents.model.config import ModelConfig
    from agents.model.transformer import TransformerAgent
    from agents.model.optim import AdamW
    from agents.training.trainer import train_step

    torch.manual_seed(0)
    xb, yb = torch.randn(8, 4, 3), torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 0])
    loss_fn = FocalLoss(alpha=0.25, gamma=2.0)

    def step(wb):
        torch.manual_seed(1)
        model = TransformerAgent(ModelConfig(n_features=3, d_model=8, n_heads=2, n_layers=1, seq_len=4, dropout=0.0))
        with torch.no_grad():
            per = focal_loss(model(xb), yb, 0.25, 2.0, "none")
        opt = AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        return float(train_step(model, opt, scaler, loss_fn, xb, yb, None, wb)), per

    plain, per = step(None)
    ones, _ = step(torch.ones(8))
    assert ones == pytest.approx(plain, rel=1e-6) and plain == pytest.approx(float(per.mean()), rel=1e-6)
    w = torch.tensor([2.0, 0, 0, 0, 0, 0, 0, 6.0])  # only windows 0 and 7 count
    weighted, _ = step(w)
    assert weighted == pytest.approx(float((2 * per[0] + 6 * per[7]) / 8), rel=1e-6)


def test_training_weights_are_the_labels_uniqueness_scaled_to_mean_one(tiny_agent):
    from agents.training.trainer import training_weights

    _, result = tiny_agent
    cfg, prep = TrainConfig(**TINY), result.prep
    w = training_weights(cfg, prep)
    u = prep.weights("train")
    assert len(w) == len(prep.labels("train")) and w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w, u / u.mean())
    assert training_weights(dataclasses.replace(cfg, sample_weights="none"), prep) is None
    # horizon 10: a label spans up to 11 bars, shared with up to 10 neighbours on each side
    assert 1 / 21 <= u.min() and u.max() <= 1.0
    card_w = result.card["metrics"]["sample_weights"]
    assert card_w["scheme"] == "uniqueness" and card_w["train_events"] == len(u)
    assert card_w["effective_train_events"] == pytest.approx(u.sum())


def test_lr_schedules_by_hand():
    from agents.training.trainer import lr_factor

    assert [lr_factor("constant", k, 10, 0.1) for k in (0, 5, 9)] == [1.0, 1.0, 1.0]
    # onecycle over 100 steps, 10% warm-up: 1/10, 2/10 .. 10/10, then a half-cosine from 1 down to 0
    assert [lr_factor("onecycle", k, 100, 0.1) for k in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor("onecycle", 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor("onecycle", 55, 100, 0.1) == pytest.approx(0.5)  # halfway through the 90 decay steps
    assert lr_factor("onecycle", 100, 100, 0.1) == pytest.approx(0.0, abs=1e-12)
    # cosine: no warm-up
    assert lr_factor("cosine", 0, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 50, 100, 0.1) == pytest.approx(0.5)


@pytest.mark.parametrize("bad,message", [
    ({"lr_schedule": "step"}, "--lr-schedule"),
    ({"warmup": 1.0}, "--warmup"),
    ({"pooling": "max"}, "pooling"),
])
def test_schedule_and_pooling_options_are_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_compile_on_the_cpu_warns(monkeypatch, caplog):
    import logging

    monkeypatch.setattr(torch, "compile", lambda model: model)  # the warning, not minutes of compiling
    cfg = TrainConfig(**{**TINY, "compile": True})
    with caplog.at_level(logging.WARNING, logger="agents.training.trainer"):
        fit(cfg, prepare(cfg), checkpoint_dir=None, stop_after=1, progress=False)
    assert any("--compile on the CPU" in r.getMessage() for r in caplog.records)
