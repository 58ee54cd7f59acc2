"""Run an exported agent: batch probabilities over a frame, or one bar at a time (streaming).

Both paths compute the same features, normalisation and windows, so their outputs agree
(tested to 1e-6); the streaming path recomputes features over a bounded tail of history,
long enough that the exponential indicators have forgotten where the tail starts.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from labeling import TBMConfig

from . import metadata as _meta
from .features import FeatureSpec, compute_features

log = logging.getLogger(__name__)

# Windows per onnxruntime call in predict_proba. Small batches keep ORT's arena small (peak RSS of
# predict_proba on the 5k-bar sp500 sample: 410 MB at 128, 1.2 GB at 1024) at the same windows/s here.
BATCH_SIZE = 128
# Extra bars of history the streaming path keeps beyond warm-up + seq_len: after 1,000 bars the
# slowest recursion we use (Wilder's 1/14 smoothing) retains (13/14)**1000 ~ 1e-32 of its seed.
STREAM_HISTORY = 1000
_BAR_FIELDS = ("open", "high", "low", "close", "volume")


def graph_sha256(proto) -> str:
    """Digest of a model's graph (weights included, metadata not): the card records it at export."""
    import hashlib

    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


# The operators our exporters emit (both, every pooling and positional table; tests/test_runtime.py checks
# it), plus elementwise ones they may emit in other torch versions. Nothing that loops, branches or makes a
# tensor whose size is read from data (Loop, If, Scan, ConstantOfShape, Range, Expand, Tile, Resize):
# an agent file is untrusted input, and those could hang or exhaust the machine.
ALLOWED_OPS = frozenset({
    "Abs", "Add", "Cast", "CastLike", "Concat", "Constant", "Div", "Dropout", "Erf", "Exp", "Flatten", "Gather",
    "Gelu", "Gemm", "Identity", "LayerNormalization", "Log", "MatMul", "Max", "Min", "Mod", "Mul", "Neg", "Pow",
    "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Slice",
    "Softmax", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})
MAX_NODES = 20_000  # graph nodes (functions' included); the shipped agent has a few hundred
MAX_WEIGHT_BYTES = 256 * 2**20  # weights and constants held in the file; the shipped agent's are < 1 MiB


def _check_graph(proto, path: str) -> None:
    """Refuse a graph with an operator outside ``ALLOWED_OPS`` (control flow included), another domain than
    the standard one, more than ``MAX_NODES`` nodes or more than ``MAX_WEIGHT_BYTES`` of weights."""
    local = {(f.domain, f.name) for f in proto.functions}
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    if len(nodes) > MAX_NODES:
        raise _meta.AgentFileError(f"{path}: the graph has {len(nodes):,} nodes, over the {MAX_NODES:,} an agent may "
                                   "have; re-export the agent with python -m agents.train")
    for n in nodes:
        if (n.domain, n.op_type) in local:
            continue  # a call to a model-local function: its nodes are checked here too
        if n.domain not in ("", "ai.onnx") or n.op_type not in ALLOWED_OPS:
            raise _meta.AgentFileError(
                f"{path}: operator {n.domain + '.' if n.domain else ''}{n.op_type} is not one our exporter emits "
                "(control flow and custom operators are refused in agent files); re-export the agent")
        if any(a.HasField("g") or len(a.graphs) for a in n.attribute):
            raise _meta.AgentFileError(f"{path}: node {n.name or n.op_type} holds a subgraph; agent files may not")
    sizes = [t.ByteSize() for t in proto.graph.initializer]
    sizes += [a.t.ByteSize() for n in nodes for a in n.attribute if a.HasField("t")]
    if sum(sizes) > MAX_WEIGHT_BYTES:
        raise _meta.AgentFileError(f"{path}: {sum(sizes) / 2**20:,.0f} MiB of weights, over the "
                                   f"{MAX_WEIGHT_BYTES // 2**20} MiB an agent file may hold")


def _external_tensor(graph) -> str | None:
    """Name of the first tensor of ``graph`` (subgraphs included) stored outside the file, else None."""
    tensors = list(graph.initializer) + [x for t in graph.sparse_initializer for x in (t.values, t.indices)]
    for node in graph.node:
        for attr in node.attribute:
            tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            if attr.HasField("sparse_tensor"):
                tensors += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
            for st in attr.sparse_tensors:
                tensors += [st.values, st.indices]
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                name = _external_tensor(sub)
                if name is not None:
                    return name
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            return t.name or "(unnamed)"
    return None


def _check_signature(session, card: dict, path: str) -> None:
    """The graph's input and output must be the card's: name, and (batch, seq_len, features)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = [i.name for i in inputs]
    if names != [card["input_name"]] or [o.name for o in outputs] != [card["output_name"]]:
        raise _meta.AgentFileError(f"{path}: the graph's input/output {names}/{[o.name for o in outputs]} are not the "
                                   f"card's {card['input_name']!r}/{card['output_name']!r}; re-export the agent")
    shape = list(inputs[0].shape)
    want = [card["seq_len"], len(card["feature_names"])]
    if len(shape) != 3 or shape[1:] != want:
        raise _meta.AgentFileError(f"{path}: the graph takes input of shape {shape}, the card describes "
                                   f"(batch, {want[0]}, {want[1]}) (seq_len, features); re-export the agent")


class OnnxAgent:
    """A TransformerAgent exported by ``agents.export``, with everything needed to use it correctly."""

    def __init__(self, session: ort.InferenceSession, card: dict, path: str):
        self._session = session
        self.meta = card
        self.path = path
        self.spec = FeatureSpec.from_dict(card["features"])
        self.seq_len = int(card["seq_len"])
        self.feature_names = list(card["feature_names"])
        self.threshold = float(card["threshold"])
        self.tbm = TBMConfig.from_dict(card["tbm"])
        self._mean = np.asarray(card["normalisation"]["mean"], dtype=np.float64)
        self._std = np.asarray(card["normalisation"]["std"], dtype=np.float64)
        # an agent trained on a universe with --normalise per-symbol: each member's own statistics
        self._per_symbol = card["normalisation"].get("per_symbol")
        self._symbol: str | None = None
        self._input = card["input_name"]
        self.reset()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "OnnxAgent":
        """Open an agent file; raise AgentFileError if it is missing, not ONNX, or has no valid card."""
        path = str(path)
        if not Path(path).is_file():
            raise _meta.AgentFileError(f"{path}: agent file not found (train one with: python -m agents.train)")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends for garbage input
            raise _meta.AgentFileError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
        keys = [p.key for p in proto.metadata_props]
        if keys.count(_meta.METADATA_KEY) > 1:
            raise _meta.AgentFileError(f"{path}: {keys.count(_meta.METADATA_KEY)} {_meta.METADATA_KEY!r} metadata "
                                       "entries; an agent file holds one card (which would win is not ours to guess)")
        props = {p.key: p.value for p in proto.metadata_props}
        card = _meta.parse(props.get(_meta.METADATA_KEY), path=path)
        _check_graph(proto, path)
        external = _external_tensor(proto.graph)
        for fn in proto.functions:  # model-local functions hold nodes (and constants) too
            external = external or _external_tensor(onnx.helper.make_graph(list(fn.node), fn.name, [], []))
        if external is not None:
            # onnxruntime would resolve the location against the current folder: any file could be read
            raise _meta.AgentFileError(f"{path}: tensor {external!r} keeps its data in an external file; agent files "
                                       "must hold all their weights (external data is refused)")
        digest = graph_sha256(proto)
        if card.get("graph_sha256") != digest:
            raise _meta.AgentFileError(
                f"{path}: the card was not written for this graph (graph sha256 {digest[:16]}..., card says "
                f"{str(card.get('graph_sha256'))[:16]}...): a card moved onto another model is refused; re-export the agent")
        try:
            FeatureSpec.from_dict(card["features"])
            TBMConfig.from_dict(card["tbm"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _meta.AgentFileError(f"{path}: metadata has an invalid feature spec or TBM settings ({exc})") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _meta.AgentFileError(f"{path}: onnxruntime cannot load the model ({exc})") from None
        _check_signature(session, card, path)
        return cls(session, card, path)

    # ------------------------------------------------------------------ properties

    @property
    def warmup(self) -> int:
        """Bars before the first probability: feature warm-up plus one full window."""
        return self.spec.warmup + self.seq_len - 1

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(self.spec.required_columns)

    def check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.required_columns if c not in df.columns]
        if missing:
            raise ValueError(
                f"agent {self.path} needs column(s) {missing} that the data lacks "
                f"(it has {list(df.columns)})"
            )

    # ------------------------------------------------------------------ batch
    @property
    def symbols(self) -> list[str] | None:
        """The instruments of a per-symbol agent (it trades only these), None for any other agent."""
        return None if self._per_symbol is None else list(self._per_symbol)

    def select_symbol(self, symbol: str) -> None:
        """Per-symbol agents: normalise with ``symbol``'s statistics (streaming `update` needs this)."""
        if self._per_symbol is None:
            return
        if symbol not in self._per_symbol:
            raise ValueError(f"agent {self.path} normalises per symbol and knows {', '.join(self._per_symbol)}, "
                             f"not {symbol!r}")
        self._symbol = symbol

    def select_symbol_for(self, df: pd.DataFrame) -> None:
        """Per-symbol agents: `select_symbol` the member whose file ``df`` was loaded from (by sha256)."""
        if self._per_symbol is None:
            return
        if df.attrs.get("sha256") is not None:
            self._symbol = self._member(df)
        else:
            self._stats(df)  # no file hash: keeps the symbol selected, or refuses when none is

    def _stats(self, df: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
        if self._per_symbol is None:
            return self._mean, self._std
        # a frame loaded from a file is recognised by its sha256 (another file is refused, whatever is selected);
        # a frame without one (built by hand) uses the symbol selected with `select_symbol`
        has_sha = df is not None and df.attrs.get("sha256") is not None
        symbol = self._member(df) if has_sha else self._symbol
        v = self._per_symbol[self._refuse() if symbol is None else symbol]
        return np.asarray(v["mean"], dtype=np.float64), np.asarray(v["std"], dtype=np.float64)

    def _member(self, df: pd.DataFrame) -> str:
        sha = df.attrs.get("sha256")
        symbol = next((s for s, v in self._per_symbol.items() if v["sha256"] == sha), None)
        return self._refuse() if symbol is None else symbol

    def _refuse(self):
        raise ValueError(
            f"agent {self.path} was trained with per-symbol normalisation on {', '.join(self._per_symbol)} and "
            "trades only those: load one of their files with datafeeds (its sha256 picks the statistics), "
            "or train with --normalise pooled to trade other instruments")

    def _normalised_features(self, df: pd.DataFrame, stats=None) -> np.ndarray:
        x, names = compute_features(df, self.spec)
        if names != self.feature_names:
            raise _meta.AgentFileError(f"{self.path}: features computed {names} != recorded {self.feature_names}")
        mean, std = stats if stats is not None else self._stats(df)
        return ((x.astype(np.float64) - mean) / std).astype(np.float32)  # (N, F)

    def _logits(self, windows: np.ndarray) -> np.ndarray:
        try:
            return self._session.run(None, {self._input: np.ascontiguousarray(windows)})[0].reshape(-1)
        except MemoryError:
            raise
        except Exception as exc:  # onnxruntime's own exception types; the file is untrusted input
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise _meta.AgentFileError(f"{self.path}: onnxruntime could not run the model ({type(exc).__name__}: "
                                       f"{first}); re-export the agent with python -m agents.train") from None

    def predict_proba(self, df: pd.DataFrame, *, batch_size: int = BATCH_SIZE) -> pd.Series:
        """Probability that the upper barrier is touched first, per bar of ``df`` (NaN during warm-up).

        The value at bar t uses bars <= t only; windows containing a NaN feature give NaN.
        """
        self.check_columns(df)
        x = self._normalised_features(df)  # (N, F)
        out = np.full(len(df), np.nan)
        if len(df) >= self.seq_len:
            windows = np.lib.stride_tricks.sliding_window_view(x, self.seq_len, axis=0)  # (N-L+1, F, L) view
            valid = ~np.isnan(x).any(axis=1)
            # a window ending at bar t is usable only if all its L rows are finite
            ok = np.convolve(valid.astype(np.int64), np.ones(self.seq_len, dtype=np.int64), "valid") == self.seq_len
            ends = np.flatnonzero(ok)  # window starts; the window ends at start + L - 1
            for lo in range(0, len(ends), batch_size):
                starts = ends[lo : lo + batch_size]
                batch = windows[starts].transpose(0, 2, 1)  # (B, L, F)
                out[starts + self.seq_len - 1] = _sigmoid(self._logits(batch))
        return pd.Series(out, index=df.index, name="prob")

    # ------------------------------------------------------------------ streaming
    def reset(self) -> None:
        """Forget streamed history (start of a new live session)."""
        keep = self.warmup + 1 + STREAM_HISTORY
        self._columns = {name: deque(maxlen=keep) for name in self.required_columns}
        self._n = 0

    def update(self, bar) -> float:
        """Feed one closed bar (a mapping or Series with the agent's required columns, e.g.
        open/high/low/close/volume); return its probability, NaN while warming up."""
        get = bar.get if hasattr(bar, "get") else (lambda k, d=None: getattr(bar, k, d))
        values = [get(name, None) for name in self.required_columns]
        missing = [n for n, v in zip(self.required_columns, values) if v is None]
        if missing:
            raise ValueError(f"streamed bar lacks column(s) {missing} that agent {self.path} needs")
        for name, value in zip(self.required_columns, values):
            self._columns[name].append(float(value))
        self._n += 1
        if self._n <= self.warmup:
            return float("nan")
        frame = pd.DataFrame({name: np.fromiter(col, float, len(col)) for name, col in self._columns.items()})
        x = self._normalised_features(frame, self._stats(None))[-self.seq_len :]  # (L, F)
        if np.isnan(x).any():
            return float("nan")
        return float(_sigmoid(self._logits(x[None, :, :]))[0])  # (1, L, F)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact logistic, no overflow for large |z|
