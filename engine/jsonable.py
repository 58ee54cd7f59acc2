"""Turn results into plain JSON values: reports must load anywhere, so no NaN, numpy or pandas types."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def jsonable(obj):
    """``obj`` with containers walked, numpy scalars unwrapped, timestamps and paths as strings,
    and non-finite floats as None (JSON has no NaN); anything else becomes its ``str``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, (pd.Timestamp, np.datetime64, pd.Timedelta, Path)):
        return str(pd.Timestamp(obj)) if isinstance(obj, np.datetime64) else str(obj)
    return str(obj)
