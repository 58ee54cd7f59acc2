"""Run an exported agent: batch probabilities over a frame, or one bar at a time (streaming).

Both paths compute the same features, normalisation and windows, so their outputs agree
(tested to 1e-6); the streaming path recomputes features over a bounded tail of history,
long enough that the exponential indicators have forgotten where the tail starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import deque
from io import BytesIO
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from datafeeds.errors import escape
from datafeeds.memory import MIB, memory_budget, size_text
from labeling.rules import BarrierRules, TBMConfig

from ..data.features import FeatureSpec, compute_features
from . import metadata as _meta

log = logging.getLogger(__name__)

# Windows per onnxruntime call: small batches keep ORT's arena small at the same speed (docs/DECISIONS.md)
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
CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})  # never allowed (tests/test_runtime.py checks the allow-list)
# The file: weights, metadata and the graph's structure (the shipped agent: 0.5 MB). Checked before parsing.
MAX_FILE_BYTES = MAX_WEIGHT_BYTES + 32 * MIB
# Metadata, read from the file's bytes before parsing: a card costs many times its size (docs/DECISIONS.md)
MAX_CARD_BYTES = 4 * MIB
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 8 * MIB  # keys and values of all entries together
_MAX_TOP_LEVEL_FIELDS = 100_000  # protobuf fields of the model message scanned before parsing
# Elements of any one tensor: an initializer, a Constant, or a shape the graph's shape inference knows
# (batch dimensions counted as 1): 2**26 float32 is 256 MiB, MAX_WEIGHT_BYTES.
MAX_TENSOR_ELEMENTS = 2**26
# Peak memory of OnnxAgent.load per byte of file: metadata is capped, so weights rule (docs/DECISIONS.md)
LOAD_BYTES_PER_FILE_BYTE = 5
# Memory of a run per window over the largest intermediate tensor per window (measurements: docs/DECISIONS.md)
ACTIVATION_FACTOR = 12


def _check_graph(proto, path: str) -> None:
    """Refuse a graph with an operator outside ``ALLOWED_OPS`` (control flow included), another domain than
    the standard one, more than ``MAX_NODES`` nodes, more than ``MAX_WEIGHT_BYTES`` of weights or a tensor
    over ``MAX_TENSOR_ELEMENTS`` elements."""
    local = {(f.domain, f.name) for f in proto.functions}
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    if len(nodes) > MAX_NODES:
        raise _meta.AgentFileError(f"{path}: the graph has {len(nodes):,} nodes, over the {MAX_NODES:,} an agent may "
                                   "have; re-export the agent with python -m agents.train")
    for n in nodes:
        if (n.domain, n.op_type) in local:
            continue  # a call to a model-local function: its nodes are checked here too
        if n.domain not in ("", "ai.onnx") or n.op_type not in ALLOWED_OPS:
            kind = ("control flow (Loop, If, Scan) is refused in agent files" if n.op_type in CONTROL_FLOW
                    else "control flow and custom operators are refused in agent files")
            raise _meta.AgentFileError(f"{path}: operator {n.domain + '.' if n.domain else ''}{n.op_type} is not one "
                                       f"our exporter emits ({kind}); re-export the agent")
        if any(a.HasField("g") or len(a.graphs) for a in n.attribute):
            raise _meta.AgentFileError(f"{path}: node {n.name or n.op_type} holds a subgraph; agent files may not")
    sizes = [t.ByteSize() for t in proto.graph.initializer]
    sizes += [a.t.ByteSize() for n in nodes for a in n.attribute if a.HasField("t")]
    if sum(sizes) > MAX_WEIGHT_BYTES:
        raise _meta.AgentFileError(f"{path}: {sum(sizes) / 2**20:,.0f} MiB of weights, over the "
                                   f"{MAX_WEIGHT_BYTES // 2**20} MiB an agent file may hold")
    for name, count in _constant_sizes(proto.graph, nodes):
        _check_elements(path, f"constant {name!r}", count)


def _constant_sizes(graph, nodes) -> list[tuple[str, int]]:
    """(name, element count) of every initializer and Constant value, from its declared dims."""
    out = [(t.name, math.prod(t.dims)) for t in graph.initializer]
    out += [(t.values.name or t.indices.name, math.prod(t.dims)) for t in graph.sparse_initializer]
    for n in nodes:
        for a in n.attribute:
            if a.HasField("t"):
                out.append(((n.name or n.output[0]) if n.output else n.op_type, math.prod(a.t.dims)))
            if a.HasField("sparse_tensor"):
                out.append((n.name or n.op_type, math.prod(a.sparse_tensor.dims)))
            if len(a.floats) or len(a.ints) or len(a.strings):
                out.append((n.name or n.op_type, len(a.floats) + len(a.ints) + len(a.strings)))
    return out


def _check_elements(path: str, what: str, count: int, shape: str = "") -> None:
    if count > MAX_TENSOR_ELEMENTS:
        raise _meta.AgentFileError(f"{path}: {what} has {count:,} elements{shape}, over the {MAX_TENSOR_ELEMENTS:,} "
                                   "a tensor of an agent may have; re-export the agent with python -m agents.train")


# ------------------------------------------------------------------ the file before it is parsed
def _check_file(path: str, label: str) -> None:
    """Refuse, before onnx parses it, a file over ``MAX_FILE_BYTES``, one whose load would not fit in the
    memory that applies, or one whose metadata is over its caps (read from the protobuf wire format)."""
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise _meta.AgentFileError(f"{label}: {size_text(size)}, over the {size_text(MAX_FILE_BYTES)} an agent file "
                                   f"may have (its weights at most {size_text(MAX_WEIGHT_BYTES)}); re-export the agent")
    need, (budget, source) = LOAD_BYTES_PER_FILE_BYTE * size, memory_budget()
    if need > budget:
        raise _meta.AgentFileError(f"{label}: loading this {size_text(size)} agent file needs ~{size_text(need)}, "
                                   f"over the {size_text(budget)} this process may still use ({source}); raise the "
                                   "container's memory limit")
    try:
        entries = _metadata_entries(path, label)
    except _meta.AgentFileError:
        raise
    except ValueError as exc:
        raise _meta.AgentFileError(f"{label}: not an ONNX model ({exc})") from None
    if len(entries) > MAX_METADATA_ENTRIES:
        raise _meta.AgentFileError(f"{label}: {len(entries):,} metadata entries, over the {MAX_METADATA_ENTRIES} an "
                                   "agent file may have; re-export the agent")
    for key, value_bytes in entries:
        if key == _meta.METADATA_KEY.encode() and value_bytes > MAX_CARD_BYTES:
            raise _meta.AgentFileError(f"{label}: the {_meta.METADATA_KEY!r} card is {value_bytes:,} bytes, over the "
                                       f"{MAX_CARD_BYTES:,} a card may have; re-export the agent")


def _metadata_entries(path: str, label: str) -> list[tuple[bytes, int]]:
    """(key, value length) of each metadata_props entry (ModelProto field 14), reading only the fields' tags
    and lengths; ValueError if the bytes are not a protobuf message, AgentFileError over ``MAX_METADATA_BYTES``."""
    entries, total = [], 0
    with open(path, "rb") as fh:
        for number, wire, length in _fields(fh, _MAX_TOP_LEVEL_FIELDS):
            if number != 14 or wire != 2:
                fh.seek(length, os.SEEK_CUR)
                continue
            total += length
            if total > MAX_METADATA_BYTES:
                raise _meta.AgentFileError(f"{label}: over {size_text(MAX_METADATA_BYTES)} of metadata, the most an "
                                           "agent file may have; re-export the agent")
            entries.append(_entry(fh.read(length)))
    return entries


def _entry(data: bytes) -> tuple[bytes, int]:
    """(key, value length) of one StringStringEntryProto (key: field 1, value: field 2)."""
    body, key, value = BytesIO(data), b"", 0
    for number, _, length in _fields(body, 16):
        if number == 1:
            key = body.read(length)
            continue
        value = length if number == 2 else value
        body.seek(length, os.SEEK_CUR)
    return key, value


def _fields(fh, most: int):
    """(field number, wire type, bytes to skip or read) of each field of the protobuf message in ``fh``."""
    for _ in range(most + 1):
        tag = _varint(fh)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            if _varint(fh) is None:
                raise ValueError("truncated")
            yield number, wire, 0
        elif wire in (1, 5):
            yield number, wire, 8 if wire == 1 else 4
        elif wire == 2:
            length = _varint(fh)
            if length is None:
                raise ValueError("truncated")
            yield number, wire, length
        else:
            raise ValueError(f"wire type {wire} in field {number}")
    raise ValueError(f"more than {most:,} fields in one message")


def _varint(fh) -> int | None:
    """A protobuf base-128 varint read from ``fh``; None at the end of the file."""
    value = shift = 0
    while byte := fh.read(1):
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
    if shift:
        raise ValueError("truncated")
    return None


# ------------------------------------------------------------------ shapes and the memory a run needs
def _tensor_shapes(proto, path: str) -> tuple[int, int, int]:
    """Refuse a tensor whose shape (from onnx's shape inference) is over ``MAX_TENSOR_ELEMENTS``; return
    (input bytes per window, largest intermediate bytes per window, largest batch-free intermediate bytes)."""
    graph = proto.graph
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param if graph.input else ""
    light = _without_weights(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
    except Exception as exc:  # onnx's InferenceError and friends: the file is untrusted input
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise _meta.AgentFileError(f"{path}: the graph's shapes cannot be inferred ({type(exc).__name__}: {first}); "
                                   "re-export the agent") from None
    per_window = static = 0
    for v in list(inferred.value_info) + list(inferred.output):
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        count, batched = _elements(t.shape.dim, batch)
        _check_elements(path, f"tensor {v.name!r}", count,
                        f" (shape {[d.dim_value or d.dim_param for d in t.shape.dim]})")
        size = count * _itemsize(t.elem_type)
        per_window, static = (max(per_window, size), static) if batched else (per_window, max(static, size))
    first, _ = _elements(graph.input[0].type.tensor_type.shape.dim, batch) if graph.input else (0, False)
    return first * 4, per_window, static


def _without_weights(proto):
    """A copy of ``proto`` for shape inference: large initializers become graph inputs of the same shape
    (no bytes copied); small ones stay, since reshapes read their shapes from them."""
    graph = proto.graph
    inputs = {i.name for i in graph.input}  # an initializer may also be listed as an input (older exports)
    small = [t for t in graph.initializer if math.prod(t.dims) <= 1024]
    big = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
           for t in graph.initializer if math.prod(t.dims) > 1024 and t.name not in inputs]
    return onnx.helper.make_model(
        onnx.helper.make_graph(list(graph.node), graph.name, list(graph.input) + big, list(graph.output), small),
        opset_imports=list(proto.opset_import), functions=list(proto.functions), ir_version=proto.ir_version)


def _elements(dims, batch: str) -> tuple[int, bool]:
    """Element count of a shape per window (batch dimensions, or unknown ones, count 1 or their multiple of the
    batch: ``4*batch`` counts 4) and whether it grows with the batch."""
    count, batched = 1, False
    for d in dims:
        if d.HasField("dim_value"):
            count *= max(d.dim_value, 0)
            continue
        batched = True
        m = re.fullmatch(rf"(\d+)\*{re.escape(batch)}|{re.escape(batch)}\*(\d+)", d.dim_param) if batch else None
        count *= int(m.group(1) or m.group(2)) if m else 1
    return count, batched


def _itemsize(elem_type: int) -> int:
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8


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
    """A TransformerAgent exported by ``agents.artifact.export``, with everything needed to use it correctly."""

    def __init__(self, session: ort.InferenceSession, card: dict, path: str):
        self._session = session
        self.meta = card
        self.path = path
        self.spec = FeatureSpec.from_dict(card["features"])
        self.seq_len = int(card["seq_len"])
        self.feature_names = list(card["feature_names"])
        self.threshold = float(card["threshold"])
        self.tbm = TBMConfig.from_dict(card["tbm"])
        # the trading rules it was built for (cards before they were one object: from tbm and threshold)
        self.rules = (BarrierRules.from_dict(card["rules"]) if "rules" in card
                      else BarrierRules.from_tbm(self.tbm, self.threshold))
        self._mean = np.asarray(card["normalisation"]["mean"], dtype=np.float64)
        self._std = np.asarray(card["normalisation"]["std"], dtype=np.float64)
        # an agent trained on a universe with --normalise per-symbol: each member's own statistics
        self._per_symbol = card["normalisation"].get("per_symbol")
        self._symbol: str | None = None
        self._input = card["input_name"]
        # bytes per window of input and of the largest intermediate, and of the largest batch-free one
        self._shapes = (0, 0, 0)
        self._one_window_fits = False  # checked at the first streamed window, not at every bar
        self.reset()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "OnnxAgent":
        """Open an agent file; raise AgentFileError if it is missing, not ONNX, or has no valid card."""
        path = str(path)
        label = escape(path)  # messages show the name with terminal control characters escaped
        if not Path(path).is_file():
            raise _meta.AgentFileError(f"{label}: agent file not found (train one with: python -m agents.train)")
        _check_file(path, label)
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends for garbage input
            raise _meta.AgentFileError(f"{label}: not an ONNX model ({type(exc).__name__})") from None
        keys = [p.key for p in proto.metadata_props]
        if keys.count(_meta.METADATA_KEY) > 1:
            raise _meta.AgentFileError(f"{label}: {keys.count(_meta.METADATA_KEY)} {_meta.METADATA_KEY!r} metadata "
                                       "entries; an agent file holds one card (which would win is not ours to guess)")
        props = {p.key: p.value for p in proto.metadata_props}
        card = _meta.parse(props.get(_meta.METADATA_KEY), path=label)
        _check_graph(proto, label)
        external = _external_tensor(proto.graph)
        for fn in proto.functions:  # model-local functions hold nodes (and constants) too
            external = external or _external_tensor(onnx.helper.make_graph(list(fn.node), fn.name, [], []))
        if external is not None:
            # onnxruntime would resolve the location against the current folder: any file could be read
            raise _meta.AgentFileError(f"{label}: tensor {external!r} keeps its data in an external file; agent files "
                                       "must hold all their weights (external data is refused)")
        digest = graph_sha256(proto)
        if card.get("graph_sha256") != digest:
            raise _meta.AgentFileError(
                f"{label}: the card was not written for this graph (graph sha256 {digest[:16]}..., card says "
                f"{str(card.get('graph_sha256'))[:16]}...): a card moved onto another model is refused; "
                "re-export the agent")
        try:
            FeatureSpec.from_dict(card["features"])
            TBMConfig.from_dict(card["tbm"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _meta.AgentFileError(f"{label}: metadata has an invalid feature spec or "
                                       f"TBM settings ({exc})") from None
        shapes = _tensor_shapes(proto, label)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _meta.AgentFileError(f"{label}: onnxruntime cannot load the model ({_first_line(exc)})") from None
        _check_signature(session, card, label)
        agent = cls(session, card, path)
        agent._shapes = shapes
        return agent

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
            raise _meta.AgentFileError(f"{escape(self.path)}: onnxruntime could not run the model ("
                                       f"{_first_line(exc)}); "
                                       "re-export the agent with python -m agents.train") from None

    def run_memory(self, windows: int) -> int:
        """Bytes a run over ``windows`` windows at once needs: the input plus ``ACTIVATION_FACTOR`` times the
        largest intermediate tensor the graph's shapes allow."""
        per_input, per_window, static = self._shapes
        return windows * per_input + ACTIVATION_FACTOR * max(static, windows * per_window)

    def _fitting_batch(self, batch_size: int) -> int:
        """The largest batch up to ``batch_size`` whose run fits in the memory that applies; refuse in one line
        when not even one window does."""
        budget, source = memory_budget()
        if self.run_memory(batch_size) <= budget:
            return batch_size
        lo, hi = 0, batch_size  # run_memory grows with the batch: bisect the largest that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.run_memory(mid) <= budget else (lo, mid - 1)
        if lo == 0:
            raise _meta.AgentFileError(
                f"{escape(self.path)}: running the model needs ~{size_text(self.run_memory(1))} for one window (its "
                f"largest tensor x{ACTIVATION_FACTOR}), over the {size_text(budget)} this process may still use "
                f"({source}); raise the container's memory limit")
        log.info("%s: %d windows per run fit in memory (of %d asked)", self.path, lo, batch_size)
        return lo

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
            batch_size = self._fitting_batch(min(batch_size, len(ends))) if len(ends) else batch_size
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
        if not self._one_window_fits:
            self._one_window_fits = self._fitting_batch(1) == 1
        return float(_sigmoid(self._logits(x[None, :, :]))[0])  # (1, L, F)


def _first_line(exc: BaseException) -> str:
    """``exc`` as ``Type: first line`` (at most 300 characters), terminal control characters escaped."""
    return escape(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact logistic, no overflow for large |z|
