"""ONNX export and OnnxAgent: parity with torch, batch == streaming, causality, clear load errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from agents import export as export_mod
from agents.dataset import LazySequenceDataset
from agents.metadata import METADATA_KEY, AgentFileError
from agents.runtime import OnnxAgent
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
    from agents import runtime

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
        (lambda src, d: _rewrite_card(src, d / "v99.onnx", lambda v: v.replace('"format_version": 1', '"format_version": 99')), "incompatible"),
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
    import onnx
    import torch

    from agents import export
    from agents.config import ModelConfig
    from agents.model import TransformerAgent
    from agents.runtime import ALLOWED_OPS

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

    from agents.metadata import AgentFileError
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
    assert "\n" not in message and message.startswith(f"{shipped}: onnxruntime could not run the model (RuntimeException")
