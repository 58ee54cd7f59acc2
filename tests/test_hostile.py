"""Hostile inputs: crafted agent files, data files and options. Each is refused with exit 2 and one
line (no traceback) within seconds, or handled correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import datafeeds
from agents.artifact.metadata import METADATA_KEY
from agents.artifact.runtime import graph_sha256

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "agent1.onnx"


def _run(*args, timeout=30) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    done.seconds = time.monotonic() - t0
    return done


def _refused(done, needle: str) -> None:
    """Exit 2, one line on stderr holding ``needle``, no traceback."""
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert needle in err, err


def _card(proto) -> dict:
    return json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])


def _save(proto, card: dict, path: Path, *, restamp: bool = False) -> Path:
    """``proto`` with ``card`` (its graph digest recomputed if ``restamp``: what a careful forger does)."""
    if restamp:
        card = {**card, "graph_sha256": graph_sha256(proto)}
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = json.dumps(card)
    onnx.save(proto, str(path))
    return path


# ------------------------------------------------------------------ agent files that would make us lie
def _forged(tmp_path, name: str, node) -> Path:
    """The shipped agent with ``node`` added to its graph and the card's digest recomputed (a careful forger)."""
    proto = onnx.load(str(SHIPPED))
    proto.graph.node.append(node)
    return _save(proto, _card(onnx.load(str(SHIPPED))), tmp_path / name, restamp=True)


def test_a_forged_graph_with_a_loop_is_refused_before_it_runs(tmp_path):
    # a Loop of 1e12 iterations hung run_backtest for ever; control flow is not in the allow-list
    body = onnx.helper.make_graph([], "body", [], [])
    loop = onnx.helper.make_node("Loop", ["trip", "cond"], [], body=body)
    _refused(_run("run_backtest.py", "--agent", str(_forged(tmp_path, "loop.onnx", loop))),
             "operator Loop is not one our exporter emits")


def test_a_forged_graph_that_makes_a_huge_tensor_or_a_custom_op_is_refused(tmp_path):
    big = onnx.helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"])  # 4 GiB from an 8-byte input
    _refused(_run("run_backtest.py", "--agent", str(_forged(tmp_path, "big.onnx", big))),
             "operator ConstantOfShape is not one our exporter emits")
    custom = onnx.helper.make_node("Anything", ["x"], ["y"], domain="com.evil")
    _refused(_run("run_backtest.py", "--agent", str(_forged(tmp_path, "custom.onnx", custom))),
             "operator com.evil.Anything is not one our exporter emits")


def test_a_second_card_entry_is_refused_not_silently_chosen(tmp_path):
    proto = onnx.load(str(SHIPPED))
    extra = proto.metadata_props.add()
    extra.key, extra.value = METADATA_KEY, json.dumps({**_card(proto), "threshold": 0.01})
    onnx.save(proto, str(tmp_path / "two.onnx"))
    _refused(_run("run_backtest.py", "--agent", str(tmp_path / "two.onnx")), "2 'tbm_agent' metadata entries")


def test_weights_over_the_bound_are_refused(monkeypatch):
    import agents.artifact.runtime as runtime
    from agents.artifact.metadata import AgentFileError

    monkeypatch.setattr(runtime, "MAX_WEIGHT_BYTES", 1024)
    with pytest.raises(AgentFileError, match="MiB of weights, over the"):
        runtime.OnnxAgent.load(SHIPPED)


def test_a_card_copied_onto_another_graph_is_refused(tiny_agent, tmp_path):
    tiny_path, _ = tiny_agent
    foreign = onnx.load(str(tiny_path))
    path = _save(foreign, _card(onnx.load(str(SHIPPED))), tmp_path / "foreign.onnx")
    _refused(_run("run_backtest.py", "--agent", str(path)), "the card was not written for this graph")


def test_the_same_shapes_with_other_weights_are_refused(tmp_path):
    proto = onnx.load(str(SHIPPED))
    card = _card(proto)
    w = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    path = _save(proto, card, tmp_path / "retrained.onnx")
    _refused(_run("-m", "agents.inspect", str(path)), "a card moved onto another model is refused")


def test_a_card_describing_other_input_shapes_is_refused(tmp_path):
    proto = onnx.load(str(SHIPPED))
    card = _card(proto)
    seq = card["seq_len"] // 2
    card["seq_len"], card["warmup"] = seq, card["warmup"] - seq  # consistent with itself, not with the graph
    path = _save(proto, card, tmp_path / "shorter.onnx")
    done = _run("run_backtest.py", "--agent", str(path))
    _refused(done, "the graph takes input of shape")
    assert f"(batch, {seq}, 8)" in done.stderr


def test_a_negative_threshold_in_the_card_is_refused_like_the_option(tmp_path):
    proto = onnx.load(str(SHIPPED))
    path = _save(proto, {**_card(proto), "threshold": -1}, tmp_path / "thr.onnx")
    _refused(_run("run_backtest.py", "--agent", str(path)), "threshold")
    _refused(_run("run_backtest.py", "--threshold", "-1"), "--threshold")


# ------------------------------------------------------------------ agent files that would exhaust memory
def test_a_fracdiff_memory_bomb_is_refused_at_once(tmp_path):
    proto = onnx.load(str(SHIPPED))
    card = _card(proto)
    # |w_k| ~ k^-1.4 never reaches 1e-300: unbounded, the weights would grow until memory ran out
    card["features"]["features"].append({"name": "fracdiff", "params": {"d": 0.4, "threshold": 1e-300,
                                                                        "max_window": None}})
    path = _save(proto, card, tmp_path / "bomb.onnx")
    done = _run("-m", "agents.inspect", str(path))
    _refused(done, "max_window")
    assert done.seconds < 30


def test_fracdiff_weights_are_bounded_whatever_the_threshold():
    from agents.data.features import MAX_FRACDIFF_WEIGHTS, fracdiff_weights

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="needs more than 100,000 weights"):
        fracdiff_weights(0.4, 1e-300)
    with pytest.raises(ValueError, match="max_window must be <="):
        fracdiff_weights(0.4, 1e-300, MAX_FRACDIFF_WEIGHTS + 1)
    assert time.monotonic() - t0 < 5
    assert len(fracdiff_weights(1.0, 1e-300)) == 2  # integer d: the weights end by themselves


# ------------------------------------------------------------------ agent files that would make us read what we
# should not
def test_external_data_is_refused(tmp_path):
    proto = onnx.load(str(SHIPPED))
    w = proto.graph.initializer[0]
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = onnx.TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../reports/secret/report.json"
    path = _save(proto, _card(proto), tmp_path / "external.onnx", restamp=True)  # even with a matching digest
    _refused(_run("-m", "agents.inspect", str(path)), "external data is refused")


def test_a_path_in_the_card_is_never_read_by_default(tmp_path):
    secret = tmp_path / "secrets.csv"
    secret.write_text("datetime,open,high,low,close\nAPI_KEY=hunter2,1,1,1,1\n")
    proto = onnx.load(str(SHIPPED))
    card = _card(proto)
    card["dataset"]["name"] = str(secret)
    path = _save(proto, card, tmp_path / "reader.onnx")
    done = _run("run_backtest.py", "--agent", str(path))
    _refused(done, "pass that data with --data")
    assert "hunter2" not in done.stderr + done.stdout


def test_inspect_escapes_terminal_control_sequences(tmp_path):
    proto = onnx.load(str(SHIPPED))
    card = {**_card(proto), "training_command": "python -m agents.train \x1b[2J\x1b]0;pwned\x07\nverdict     skill!"}
    path = _save(proto, card, tmp_path / "ansi.onnx")
    done = _run("-m", "agents.inspect", str(path))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "\\x1b[2J" in done.stdout and "\\nverdict     skill!" in done.stdout
    assert sum(line.startswith("verdict ") for line in done.stdout.splitlines()) == 1


# ------------------------------------------------------------------ data files that would make us lie
def _frame(n=400):
    return datafeeds.load_ohlcv("sp500").iloc[:n].copy()


def test_day_first_dates_give_the_result_of_the_iso_file(tmp_path):
    from engine import RunConfig, run_backtest

    df = _frame(1259)
    iso, dmy = tmp_path / "iso.csv", tmp_path / "dmy.csv"
    df.to_csv(iso)
    out = df.copy()
    out.index = out.index.strftime("%d/%m/%Y")
    out.index.name = "Date"
    out.to_csv(dmy)
    with pytest.warns(UserWarning, match="read as day/month/year"):
        got = datafeeds.load_ohlcv(dmy)
    assert got.index.equals(datafeeds.load_ohlcv(iso).index)
    a = run_backtest(datafeeds.load_ohlcv(iso), "smacross", run=RunConfig(engine="backtrader")).stats
    b = run_backtest(got, "smacross", run=RunConfig(engine="backtrader")).stats
    assert a["total_return"] == b["total_return"] and a["n_trades"] == b["n_trades"]


def test_dates_that_read_both_ways_in_order_are_refused(tmp_path):
    df = _frame(2000).resample("MS").first().dropna().iloc[:24]  # first of each month: 01/MM/YYYY
    df.index = [f"01/{d.month:02d}/{d.year}" for d in df.index]
    df.index.name = "Date"
    path = tmp_path / "monthly.csv"
    df.to_csv(path)
    _refused(_run("run_backtest.py", "--strategy", "smacross", "--data", str(path)),
             "both valid and both in time order")


@pytest.mark.parametrize("value, needle", [(1e308, "beyond the float32 range"), (None, "x the previous row's close")])
def test_an_impossible_bar_is_refused_naming_its_row(tmp_path, value, needle):
    df = _frame()
    if value is None:
        df.iloc[200, df.columns.get_loc("high")] *= 5000
    else:
        df.iloc[200, :4] = value
    path = tmp_path / "bad.csv"
    df.to_csv(path)
    done = _run("run_backtest.py", "--strategy", "smacross", "--data", str(path))
    _refused(done, needle)
    assert "line 202" in done.stderr


# ------------------------------------------------------------------ options that would fail only after minutes
@pytest.mark.parametrize("args, needle", [
    (["--commission", "2"], "--commission must be in [0, 1)"),
    (["--folds", "1000"], "--folds 1000 on 5031 bars gives folds of"),
])
def test_walk_forward_options_are_refused_before_the_first_trial(args, needle, tmp_path):
    done = _run("-m", "engine.walkforward", *args, "--out", str(tmp_path / "wf"))
    _refused(done, needle)
    assert done.seconds < 30 and not (tmp_path / "wf" / "optuna.db").exists()


@pytest.mark.parametrize("option", ["--out", "--checkpoint-dir"])
def test_an_unwritable_output_is_refused_before_training(option, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    target = blocker / ("x.onnx" if option == "--out" else "ckpt")
    args = ["-m", "agents.train", option, str(target)]
    if option == "--checkpoint-dir":
        args += ["--out", str(tmp_path / "ok.onnx")]
    done = _run(*args)
    _refused(done, f"{option}: cannot write in")
    assert done.seconds < 30


@pytest.mark.parametrize("args, needle", [
    (["--pt", "nan"], "--pt nan: must be a finite number"),
    (["--holdout", "inf"], "--holdout inf: must be a finite number"),
    (["--dropout", "nan"], "--dropout nan: must be a finite number"),
    (["--focal-alpha", "nan"], "--focal-alpha nan: must be a finite number"),
    (["--threshold", "inf"], "--threshold inf: must be a finite number"),
    (["--lr", "1e308"], "--lr must be in (0, 1]"),
    (["--focal-gamma", "1e308"], "--focal-gamma must be in [0, 10]"),
    (["--d-model", "65536"], "--d-model must be in 1..4,096"),
    (["--n-layers", "100000"], "--n-layers must be in 1..48"),
    (["--seed", "100000000000000000000"], "--seed must be in 0..4,294,967,295"),
    (["--horizon", "100000000000000000000"], "horizon must be an integer <= 1,000,000"),
    (["--d-model", "4096", "--n-heads", "64", "--n-layers", "48"], "out of memory: training needs"),
])
def test_training_options_out_of_range_are_one_line_before_anything_is_built(args, needle, tmp_path):
    # NaN used to reach the job file's JSON, 1e308 torch's optimiser, d_model 65536 a 48 GiB allocation
    # (the memory check now counts the parameters on torch's meta device, before they exist)
    done = _run("-m", "agents.train", *args, "--out", str(tmp_path / "x.onnx"),
                "--checkpoint-dir", str(tmp_path / "ckpt"), timeout=120)
    _refused(done, needle)
    assert not (tmp_path / "x.onnx").exists()


def test_a_second_training_on_a_busy_checkpoint_folder_is_refused(tmp_path):
    # two trainings with the same --out shared checkpoints/<name>/: one trained the other's settings
    import fcntl

    folder = tmp_path / "ckpt"
    folder.mkdir()
    with open(folder / ".lock", "a+") as held:  # what the first training's parent holds while it runs
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        done = _run("-m", "agents.train", "--out", str(tmp_path / "a.onnx"), "--checkpoint-dir", str(folder))
    _refused(done, f"another training is using the checkpoint folder {folder} (pid 4242)")
    assert not (folder / "job.json").exists()


def test_a_training_refused_before_its_first_epoch_leaves_no_checkpoint_folder(tmp_path):
    folder = tmp_path / "ckpt"
    done = _run("-m", "agents.train", "--seq-len", "4000", "--out", str(tmp_path / "a.onnx"),
                "--checkpoint-dir", str(folder), timeout=120)
    _refused(done, "lower --seq-len")
    assert not folder.exists()


@pytest.mark.parametrize("args, needle", [
    (["run_backtest.py", "--cash", "x"], "argument --cash: invalid float value: 'x' (see --help)"),
    (["-m", "agents.train", "--epochs", "x"], "argument --epochs: invalid int value: 'x' (see --help)"),
    (["-m", "agents.inspect"], "the following arguments are required: model (see --help)"),
    (["-m", "engine.walkforward", "--trails", "3"], "did you mean '--trials'?"),
])
def test_every_cli_reports_a_usage_error_in_one_line(args, needle):
    _refused(_run(*args), needle)  # not the whole usage block


@pytest.mark.parametrize("args, needle", [
    (["--horizon", "100000000000000000000", "--engine", "fast"], "--horizon 100000000000000000000: must be an "
                                                                  "integer <= 1,000,000"),
    (["--max-positions", "100000000000000000000", "--data", "us_daily"], "must be a whole number of positions in "
                                                                         "1..100,000"),
    (["--strategy", "smacross", "--slow", "100000000000000000000"], "--slow 100000000000000000000: must be"),
])
def test_backtest_numbers_too_large_for_the_kernels_are_one_line(args, needle):
    _refused(_run("run_backtest.py", "--no-plot", *args), needle)  # numba overflowed on them


# ------------------------------------------------------------------ litter
def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    from datafeeds.atomic import _space, write_atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "report.json"
    stale = tmp_path / f".report.json.{_space()}.{dead.pid}.abc123.tmp"
    live = tmp_path / f".report.json.{_space()}.{os.getpid()}.def456.tmp"  # a writer still at work
    elsewhere = tmp_path / f".report.json.0123456789ab.{dead.pid}.ghi789.tmp"  # another container's pid space
    old = tmp_path / ".report.json.k2j3h4.tmp"  # the naming before hosts and pids, two days old
    other = tmp_path / ".other.json.x.1.y.tmp"
    for f in (stale, live, elsewhere, old, other):
        f.write_text("partial")
    two_days = time.time() - 2 * 86_400
    os.utime(old, (two_days, two_days))
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert not stale.exists() and not old.exists()
    assert live.exists() and elsewhere.exists() and other.exists()  # not judged by a pid from another space


def test_inspect_shows_n_a_for_crafted_values_in_unchecked_card_sections(tmp_path):
    proto = onnx.load(str(SHIPPED))
    card = _card(proto)
    card["metrics"]["sample_weights"]["uniqueness"]["mean"] = "lots"
    card["metrics"]["linear_baseline"]["price_volume"] = {"other_columns": ["bid_size"], "val_auc": "0.9"}
    path = _save(proto, card, tmp_path / "odd.onnx")
    done = _run("-m", "agents.inspect", str(path))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "label uniqueness mean n/a" in done.stdout and "(without bid_size): AUC n/a" in done.stdout


# ------------------------------------------------------------------ data files and names that would mislead
def test_a_csv_with_nul_bytes_is_one_line_naming_the_line(tmp_path):
    # a sparse or truncated copy: before, pandas read the NULs as data (14.5 GiB for 2 GB) and then said something else
    path = tmp_path / "sparse.csv"
    path.write_bytes(b"datetime,open,high,low,close,volume\n2020-01-02,1,2,1,2,0\n"
                     b"2020-01-03,1,2,1,2,0\n" + b"\0" * 4096)
    _refused(_run("run_backtest.py", "--data", str(path)),
             f"error: --data: {path}, line 4: binary data, not CSV text: byte 0x00 (NUL)")


def test_a_data_path_with_terminal_escapes_is_printed_escaped(tmp_path):
    name = tmp_path / "\x1b[31mred\x1b[0m.csv"
    done = _run("run_backtest.py", "--data", str(name))
    _refused(done, f"{tmp_path}/\\x1b[31mred\\x1b[0m.csv: file not found")
    assert "\x1b" not in done.stderr


def test_an_existing_data_file_with_terminal_escapes_in_its_name_is_printed_escaped(tmp_path):
    from datafeeds import load_ohlcv

    name = tmp_path / "\x1b]0;pwned\x07x.csv"
    load_ohlcv("sp500", start="2018-01-01").to_csv(name)
    done = _run("run_backtest.py", "--strategy", "buyhold", "--data", str(name), "--plot", str(tmp_path / "p.png"),
                "--trades", str(tmp_path / "\x1b[2Jt.csv"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout + done.stderr
    assert done.stdout.startswith("buyhold on \\x1b]0;pwned\\x07x.csv, 2018-01-02 .. 2018-12-31")
