"""Export a trained TransformerAgent to a self-describing ONNX file, parity-checked before writing."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from datafeeds import write_atomic

from . import metadata as _meta

log = logging.getLogger(__name__)

OPSET = 18  # >= 17 for LayerNormalization as one op; 18 is what onnxscript targets natively
PARITY_TOL = 1e-5  # max |onnxruntime - torch| on the validation batch


class ExportError(RuntimeError):
    """The exported graph failed the ONNX checker or disagrees with torch."""


def export_agent(model: torch.nn.Module, card: dict, path: str | os.PathLike, example: np.ndarray) -> Path:
    """Export ``model`` with a dynamic batch axis, embed ``card``, check parity on ``example``, write atomically.

    ``example`` is a validation batch ``(B, L, F)`` float32 of normalised windows; the file is only
    written if onnxruntime reproduces torch's logits on it to ``PARITY_TOL``.
    """
    path = Path(path)
    model = model.eval().cpu()
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"example batch must be (B, L, F) with B >= 1, got {tuple(x.shape)}")

    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    # torch.onnx logs exporter progress at WARNING; keep the user's console readable.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter, not about the user's model
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[card["input_name"]],
            output_names=[card["output_name"]],
            opset_version=OPSET,
            verbose=False,
        )
        expected = model(x).numpy()
    proto = program.model_proto
    onnx.checker.check_model(proto)

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
    log.info("exported %s: %d bytes, opset %d, parity max|diff| = %.2g", path, len(blob), OPSET, diff)

    write_atomic(path, blob)
    return path
