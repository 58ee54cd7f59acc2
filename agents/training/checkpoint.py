"""Training checkpoints: written atomically every epoch so a killed run resumes where it stopped.

A checkpoint holds tensors and plain Python values only (dicts, lists, numbers, strings, None) and is
read with ``torch.load(weights_only=True)``: a crafted ``last.pt`` cannot run code on ``--resume``
(a full unpickler would execute whatever ``__reduce__`` a file names).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch

from datafeeds import write_atomic

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Serialise ``state`` (tensors and plain values only) and replace ``directory/last.pt`` in one
    rename (never half-written)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(directory) / CHECKPOINT_NAME
    write_atomic(path, buffer.getvalue())
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict | None:
    """The last checkpoint in ``directory``, or None if there is none."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused something that is not a tensor or plain value
        refused = (str(exc).split("Unsupported global: ")[-1].split("\n")[0][:120]
                   if "Unsupported global" in str(exc) else "")
        raise ValueError(
            f"{path}: refused: the checkpoint holds objects other than tensors and plain values"
            f"{' (' + refused + ')' if refused else ''}, which could run code when loaded; "
            "delete it or run without --resume"
        ) from None
    except Exception as exc:  # truncated or foreign files raise anything from OSError to RuntimeError
        raise ValueError(
            f"{path}: not a readable training checkpoint ({type(exc).__name__}); delete it or run without --resume"
        ) from None
