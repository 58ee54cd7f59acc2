"""ONNX export and OnnxAgent: parity with torch, batch == streaming, causality, clear load errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from agents.artifact import export as export_mod
from agents.data.dataset import LazySequenceDataset
from agents.artifact.metadata import METADATA_KEY, AgentFileError
from agents.artifact.runtime import OnnxAgent
from datafeeds import load_ohlcv
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def agent(tiny_agent):
    return OnnxAgent.load(tiny_agent[0])


@pytest.fixture(scope="module")
def bars():
    return load_ohlcv("sp500", start=TINY["start"], end=TINY["end"])


def test_onnx_graph_has_dynamic_batch_and_opset_17_or_newer(tiny_agent):
    proto = onnx.load(str(tiny_agent[0]))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value


def test_predict_proba_equals_torch_on_the_same_windows(agent, tiny_agent, bars):
    _, result = tiny_agent
    prep = result.prep
    probs = agent.predict_proba(bars.loc[: prep.index[-1]])
    ds = LazySequenceDataset(prep.x, prep.y, TINY["seq_len"], index=prep.val_ends)
    x, _ = ds.batch(np.arange(len(ds)))
    with torch.no_grad():
        expected = torch.sigmoid(result.model(x).double()).numpy()
    np.testing.assert_allclose(probs.iloc[prep.val_ends].to_numpy(), expected, atol=1e-5)


def test_warmup_is_nan_then_every_bar_has_a_probability(agent, bars):
    probs = agent.predict_proba(bars)
    assert probs.index.equals(bars.index)
    assert probs.iloc[: agent.warmup].isna().all()
    assert probs.iloc[agent.warmup :].notna().all()
    assert ((probs.dropna() > 0) & (probs.dropna() < 1)).all()


def test_predictions_are_causal(agent, bars):
    full = agent.predict_proba(bars)
    for cut in (agent.warmup + 5, len(bars) // 2, len(bars) - 7):
        head = agent.predict_proba(bars.iloc[:cut])
        pd.testing.assert_series_equal(head, full.iloc[:cut])
    garbage = bars.copy()
    cut = len(bars) // 2
    garbage.iloc[cut:, :4] = garbage.iloc[cut:, :4].to_numpy()[::-1] * 3.0
    pd.testing.assert_series_equal(agent.predict_proba(garbage).iloc[:cut], full.iloc[:cut])


def test_streaming_update_equals_batch(agent, bars):
    sub = bars.iloc[:600]
    batch = agent.predict_proba(sub).to_numpy()
    agent.reset()
    streamed = np.array([agent.update({"datetime": ts, **row}) for ts, row in zip(sub.index, sub.to_dict("records"))])
    assert np.array_equal(np.isnan(streamed), np.isnan(batch))
    np.testing.assert_allclose(streamed, batch, atol=1e-6, equal_nan=True)


def test_streaming_past_the_bounded_history_still_equals_batch(agent, bars, monkeypatch):
    from agents.artifact import runtime

    monkeypatch.setattr(runtime, "STREAM_HISTORY", 200)  # force the tail to roll many times
    sub = bars.iloc[:900]
    batch = agent.predict_proba(sub).to_numpy()
    agent.reset()
    streamed = np.array([agent.update(row) for row in sub.to_dict("records")])
    np.testing.assert_allclose(streamed, batch, atol=1e-6, equal_nan=True)


def test_card_carries_everything_needed(agent, tiny_agent):
    meta = agent.meta
    assert meta["seq_len"] == TINY["seq_len"] and agent.warmup == meta["warmup"]
    assert agent.tbm.horizon == TINY["horizon"] and agent.tbm.pt == 1.5
    assert len(meta["normalisation"]["mean"]) == len(agent.feature_names) == len(agent.spec.columns) == 8
    ds = meta["dataset"]
    assert ds["name"] == "sp500" and len(ds["sha256"]) == 64
    assert ds["train"][0] < ds["train"][1] < ds["validation"][0] < ds["validation"][1] <= ds["last_bar_used"]
    assert ds["holdout_start"] > ds["last_bar_used"]
    # the obi variant is pinned, so a frame with book columns later cannot silently change the feature
    obi = [f for f in meta["features"]["features"] if f["name"] == "obi"][0]
    assert obi["params"]["source"] == "bvc"


def test_missing_column_is_named(agent, bars):
    with pytest.raises(ValueError, match="needs column"):
        agent.predict_proba(bars.drop(columns=["volume"]))


def test_export_refuses_to_write_when_onnx_disagrees_with_torch(tiny_agent, tmp_path, monkeypatch):
    _, result = tiny_agent
    monkeypatch.setattr(export_mod, "PARITY_TOL", -1.0)
    out = tmp_path / "never.onnx"
    example = np.zeros((2, TINY["seq_len"], len(result.prep.names)), dtype=np.float32)
    with pytest.raises(export_mod.ExportError, match="differs from torch"):
        export_mod.export_agent(result.model, result.card, out, example)
    assert not out.exists() and not list(tmp_path.iterdir())


def _rewrite_card(src, dst, change):
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = change(prop.value)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda src, d: d / "missing.onnx", "not found"),
        (lambda src, d: (d / "junk.onnx").write_bytes(b"not a model at all") and d / "junk.onnx", "not an ONNX model"),
        (lambda src, d: _strip(src, d / "nometa.onnx"), "no 'tbm_agent' metadata"),
        (lambda src, d: _rewrite_card(src, d / "v99.onnx",
                                      lambda v: v.replace('"format_version": 1', '"format_version": 99')),
         "incompatible"),
        (lambda src, d: _rewrite_card(src, d / "bad.onnx", lambda v: v[:-5]), "not valid JSON"),
    ],
)
def test_load_errors_are_clear(tiny_agent, tmp_path, make, message):
    path = make(tiny_agent[0], tmp_path)
    with pytest.raises(AgentFileError, match=message) as info:
        OnnxAgent.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _strip(src, dst):
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))
    return dst


def test_inspect_prints_the_model_card_with_baseline(tiny_agent):
    done = subprocess.run([sys.executable, "-m", "agents.inspect", str(tiny_agent[0])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no-skill baseline" in done.stdout and "validation" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "agents.inspect", "nope.onnx"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr


@pytest.mark.parametrize("pooling", ["last", "mean", "attention", "lags"])
def test_the_allow_list_holds_every_operator_our_exporters_emit(pooling):
    import torch

    from agents.artifact import export
    from agents.model.config import ModelConfig
    from agents.model.transformer import TransformerAgent
    from agents.artifact.runtime import ALLOWED_OPS

    model = TransformerAgent(ModelConfig(n_features=5, seq_len=8, d_model=16, n_heads=2, n_layers=1, pooling=pooling,
                                         lags=4, lag_width=3)).eval()
    card = {"input_name": "x", "output_name": "logit"}
    for make in (export._dynamo, export._torchscript):
        proto = make(model, torch.randn(3, 8, 5), dict(card))
        ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
        ops -= {f.name for f in proto.functions}  # calls to the model's own functions
        assert ops <= ALLOWED_OPS, (make.__name__, sorted(ops - ALLOWED_OPS))
        assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} | {f.domain for f in proto.functions}


def test_an_onnxruntime_failure_while_running_is_one_line_naming_the_file():
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from agents.artifact.metadata import AgentFileError
    from datafeeds import load_ohlcv

    shipped = ROOT / "models" / "agent1.onnx"
    agent = OnnxAgent.load(shipped)

    class Failing:
        def run(self, *_args, **_kw):
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status\nstack trace ...")

    agent._session = Failing()
    with pytest.raises(AgentFileError) as info:
        agent.predict_proba(load_ohlcv("sp500").iloc[:300])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{shipped}: onnxruntime could not run the model "
                                                      "(RuntimeException")


# ------------------------------------------------------------------ untrusted agent files: bounds before anything runs
SHIPPED = ROOT / "models" / "agent1.onnx"


def _forge(tmp_path, name: str, change) -> Path:
    """The shipped agent changed by ``change(proto)``, the card's graph digest recomputed (a careful forger)."""
    import json

    from agents.artifact.runtime import graph_sha256

    proto = onnx.load(str(SHIPPED))
    change(proto)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps({**json.loads(prop.value), "graph_sha256": graph_sha256(proto)})
    onnx.save(proto, str(tmp_path / name))
    return tmp_path / name


def _refusal(path, match: str) -> str:
    with pytest.raises(AgentFileError, match=match) as info:
        OnnxAgent.load(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
    return str(info.value)


@pytest.mark.parametrize("op", ["Loop", "If", "Scan"])
def test_control_flow_is_refused_and_never_allowed(op, tmp_path):
    from agents.artifact.runtime import ALLOWED_OPS, CONTROL_FLOW

    assert CONTROL_FLOW == {"Loop", "If", "Scan"} and not CONTROL_FLOW & ALLOWED_OPS
    path = _forge(tmp_path, f"{op}.onnx", lambda p: p.graph.node.append(onnx.helper.make_node(op, ["c"], ["y"])))
    _refusal(path, rf"operator {op} is not one our exporter emits \(control flow \(Loop, If, Scan\) is refused")


def _declared(name: str, dims: list[int]) -> onnx.TensorProto:
    """A float tensor that declares ``dims`` and stores no values (a forger's; onnx.helper would refuse it)."""
    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT)
    t.dims.extend(dims)
    return t


def test_an_initializer_or_constant_over_the_element_bound_is_refused(tmp_path):
    # 2**28 elements declared, no bytes stored: the cap on the weights' bytes alone would pass it
    _refusal(_forge(tmp_path, "init.onnx", lambda p: p.graph.initializer.append(_declared("huge", [2**14, 2**14]))),
             r"constant 'huge' has 268,435,456 elements, over the 67,108,864 a tensor of an agent may have")
    constant = onnx.helper.make_node("Constant", [], ["big"], name="big", value=_declared("v", [2**27]))
    _refusal(_forge(tmp_path, "const.onnx", lambda p: p.graph.node.append(constant)),
             r"constant 'big' has 134,217,728 elements")


def test_a_huge_shape_the_graph_would_build_is_refused_at_load(tmp_path):
    # two small weights (96 KB) whose outer product is 2**27 floats (512 MiB) once run
    def outer(p):
        p.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones((8192, 1), np.float32), "col"),
                                    onnx.numpy_helper.from_array(np.ones((1, 16384), np.float32), "row")])
        p.graph.node.append(onnx.helper.make_node("MatMul", ["col", "row"], ["outer"]))

    _refusal(_forge(tmp_path, "outer.onnx", outer),
             r"tensor 'outer' has 134,217,728 elements \(shape \[8192, 16384\]\), over the 67,108,864")


def test_metadata_over_its_caps_is_refused_before_the_file_is_parsed(tmp_path, monkeypatch):
    import agents.artifact.runtime as runtime

    def add(n: int, size: int):
        def change(p):
            for i in range(n):
                e = p.metadata_props.add()
                e.key, e.value = f"pad{i}", "x" * size
        return change

    many = _forge(tmp_path, "many.onnx", add(64, 10))
    big = _forge(tmp_path, "big.onnx", add(1, 100_000))
    monkeypatch.setattr(runtime.onnx, "load", lambda *a, **k: pytest.fail("the file was parsed"))
    _refusal(many, r"65 metadata entries, over the 64 an agent file may have")
    monkeypatch.setattr(runtime, "MAX_METADATA_BYTES", 64 * 1024)
    _refusal(big, r"over 64 KiB of metadata, the most an agent file may have")
    monkeypatch.setattr(runtime, "MAX_CARD_BYTES", 4096)
    _refusal(SHIPPED, r"the 'tbm_agent' card is [\d,]+ bytes, over the 4,096 a card may have")


def test_a_file_over_the_size_cap_or_the_memory_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    import agents.artifact.runtime as runtime

    padded = tmp_path / "padded.onnx"
    padded.write_bytes(SHIPPED.read_bytes())
    os.truncate(padded, 300 * 2**20)  # sparse: no disk, no time
    monkeypatch.setattr(runtime.onnx, "load", lambda *a, **k: pytest.fail("the file was parsed"))
    _refusal(padded, r"padded\.onnx: 300 MiB, over the 288 MiB an agent file may have \(its weights at most 256 MiB\)")
    monkeypatch.setattr(runtime, "memory_budget", lambda: (2**20, "a test's limit"))
    _refusal(SHIPPED, r"loading this \d+ KiB agent file needs ~\d\.\d MiB, over the 1\.0 MiB this process may still "
                      r"use \(a test's limit\); raise the container's memory limit")


def test_inference_runs_in_batches_that_fit_and_refuses_when_one_window_does_not(monkeypatch):
    import agents.artifact.runtime as runtime

    agent = OnnxAgent.load(SHIPPED)
    bars = load_ohlcv("sp500").iloc[:400]
    expected = agent.predict_proba(bars)
    assert agent.run_memory(128) > 128 * 12 * 24 * 1024  # the shipped graph's largest tensor: 24 KiB per window

    sizes = []
    real = agent._session

    class Spy:
        def run(self, out, feeds):
            sizes.append(next(iter(feeds.values())).shape[0])
            return real.run(out, feeds)

    agent._session = Spy()
    monkeypatch.setattr(runtime, "memory_budget", lambda: (agent.run_memory(7), "a test's limit"))
    pd.testing.assert_series_equal(agent.predict_proba(bars), expected)
    assert max(sizes) == 7 and len(sizes) > 20
    monkeypatch.setattr(runtime, "memory_budget", lambda: (agent.run_memory(1) - 1, "a test's limit"))
    with pytest.raises(AgentFileError, match=r"agent1\.onnx: running the model needs ~\d+ KiB for one window \(its "
                                             r"largest tensor x12\), over the \d+ KiB this process may still use"):
        agent.predict_proba(bars)


def test_agent_file_names_are_printed_escaped(tmp_path):
    with pytest.raises(AgentFileError) as info:
        OnnxAgent.load(tmp_path / "\x1b[2Jx.onnx")
    assert "\x1b" not in str(info.value) and "\\x1b[2Jx.onnx: agent file not found" in str(info.value)
