"""Training checkpoints: written atomically every epoch so a killed run resumes where it stopped."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from datafeeds import write_atomic

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Serialise ``state`` and replace ``directory/last.pt`` in one rename (never half-written)."""
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
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign files raise anything from OSError to UnpicklingError
        raise ValueError(
            f"{path}: not a readable training checkpoint ({type(exc).__name__}); delete it or run without --resume"
        ) from None
