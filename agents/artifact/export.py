"""Export a trained TransformerAgent to a self-describing ONNX file, parity-checked before writing.

Two exporters, one check. torch's default (``dynamo``: torch.export + onnxscript) needs about
``EXPORTER_MEMORY["dynamo"]`` beyond the process's working set, more than a small container has left
after importing torch; the TorchScript exporter needs about a third of it (measurements: docs/DECISIONS.md).
``exporter="auto"`` takes dynamo when it fits the memory left and TorchScript
otherwise. Either way the file is written only if onnxruntime reproduces torch's logits to
``PARITY_TOL``, and the card records which exporter made it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from datafeeds import write_atomic

from . import metadata as _meta

log = logging.getLogger(__name__)

OPSET = 18  # >= 17 for LayerNormalization as one op; 18 is what onnxscript targets natively
OPSET_TORCHSCRIPT = 17  # the TorchScript exporter's LayerNormalization needs 17
PARITY_TOL = 1e-5  # max |onnxruntime - torch| on the validation batch
EXPORTERS = ("dynamo", "torchscript")
# Peak growth of an export plus its parity check over torch and the model, rounded up (docs/DECISIONS.md)
EXPORTER_MEMORY = {"dynamo": 260 * 2**20, "torchscript": 110 * 2**20}


class ExportError(RuntimeError):
    """The exported graph failed the ONNX checker or disagrees with torch."""


def choose_exporter(requested: str = "auto", available: int | None = None) -> str:
    """``requested`` if it is an exporter name; for "auto", dynamo when ``available`` bytes (default: what
    this process's container has left) hold it with 20% to spare, else TorchScript."""
    if requested in EXPORTERS:
        return requested
    if requested != "auto":
        raise ValueError(f"exporter must be 'auto' or one of {EXPORTERS}, got {requested!r}")
    if available is None:
        from datafeeds.memory import memory_state

        available = memory_state().available
    return "dynamo" if 0.8 * available >= EXPORTER_MEMORY["dynamo"] else "torchscript"


def export_agent(model: torch.nn.Module, card: dict, path: str | os.PathLike, example: np.ndarray, *,
                 exporter: str = "auto") -> Path:
    """Export ``model`` with a dynamic batch axis, embed ``card``, check parity on ``example``, write atomically.

    ``example`` is a validation batch ``(B, L, F)`` float32 of normalised windows; the file is only
    written if onnxruntime reproduces torch's logits on it to ``PARITY_TOL``. ``exporter``: see
    :func:`choose_exporter`; ``card["exporter"]`` is set to the one used.
    """
    import onnx  # here, not at the top: the trainer reads this module's constants without loading onnx
    import onnxruntime as ort

    exporter = choose_exporter(exporter)
    path = Path(path)
    model = model.eval().cpu()
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"example batch must be (B, L, F) with B >= 1, got {tuple(x.shape)}")

    # torch.onnx logs exporter progress at WARNING; keep the user's console readable.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter, not about the user's model
        proto = _dynamo(model, x, card) if exporter == "dynamo" else _torchscript(model, x, card)
        expected = model(x).numpy()
    onnx.checker.check_model(proto)
    card["exporter"] = exporter  # the caller's card too: it describes the file written
    # ties the card to this graph: a card copied onto another model is refused at load
    card["graph_sha256"] = hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = _meta.METADATA_KEY, _meta.dumps(card)
    proto.producer_name = "tbm-backtest"
    proto.producer_version = card["package_version"]
    blob = proto.SerializeToString()

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = session.run(None, {card["input_name"]: x.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= PARITY_TOL:
        raise ExportError(f"onnxruntime differs from torch by {diff:.3g} (> {PARITY_TOL}); not writing {path}")
    log.info("exported %s with %s: %d bytes, parity max|diff| = %.2g", path, exporter, len(blob), diff)

    write_atomic(path, blob)
    return path


def _dynamo(model, x, card):
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: batch},),
                                input_names=[card["input_name"]], output_names=[card["output_name"]],
                                opset_version=OPSET, verbose=False)
    return program.model_proto


def _torchscript(model, x, card):
    import onnx

    buffer = io.BytesIO()
    # with gradients on, nn.TransformerEncoderLayer skips its fused inference kernel
    # (aten::_transformer_encoder_layer_fwd), which the TorchScript exporter cannot translate
    with torch.enable_grad():
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=[card["input_name"]],
                          output_names=[card["output_name"]], dynamic_axes={card["input_name"]: {0: "batch"}},
                          opset_version=OPSET_TORCHSCRIPT)
    return onnx.load_from_string(buffer.getvalue())
