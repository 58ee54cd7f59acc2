"""Causal feature registry: an OHLCV frame -> a float32 feature matrix plus column names.

A `FeatureSpec` (ordered, hashable, JSON round-trip) says which features, with which parameters;
`compute_features` evaluates it. Every feature is causal: row t reads bars <= t only. Leading
rows are NaN during warm-up (`spec.warmup` bars at most); after that every value is finite.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from . import _feature_kernels as _k
from labeling import atr as _atr

logger = logging.getLogger(__name__)

SPEC_VERSION = 1

# Price columns must be > 0 (logs, division by close); size columns must be >= 0.
_POSITIVE_COLUMNS = frozenset({"open", "high", "low", "close"})
_NON_NEGATIVE_COLUMNS = frozenset({"volume", "bid_size", "ask_size"})
_OHLCV_ORDER = ("open", "high", "low", "close", "volume", "bid_size", "ask_size")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDef:
    """A registry entry. `func(cols, **params)` returns float64 of shape (N,) or (N, len(columns))."""

    func: Callable[..., np.ndarray]
    defaults: Mapping[str, Any]  # every parameter the feature takes, with its default
    required: Callable[[Mapping[str, Any]], tuple[str, ...]]  # params -> input columns needed
    warmup: Callable[[Mapping[str, Any]], int]  # params -> leading NaN rows, at most
    columns: Callable[[Mapping[str, Any]], tuple[str, ...]]  # params -> output column names
    normalize: Callable[[dict[str, Any]], dict[str, Any]]  # checks and coerces params, or raises


FEATURES: dict[str, FeatureDef] = {}


def register_feature(
    name: str,
    func: Callable[..., np.ndarray],
    *,
    defaults: Mapping[str, Any],
    required: Callable[[Mapping[str, Any]], tuple[str, ...]] | tuple[str, ...],
    warmup: Callable[[Mapping[str, Any]], int],
    columns: Callable[[Mapping[str, Any]], tuple[str, ...]] | tuple[str, ...],
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> FeatureDef:
    """Add a feature to `FEATURES`. `func(cols, **params)` must be causal; `cols[name]` is a
    validated float64 column. Fixed `required`/`columns` tuples are accepted for convenience."""
    if name in FEATURES:
        raise ValueError(f"feature {name!r} is already registered; pick another name")
    fixed_required = required if isinstance(required, tuple) else None
    fixed_columns = columns if isinstance(columns, tuple) else None
    entry = FeatureDef(
        func=func,
        defaults=MappingProxyType(dict(defaults)),
        required=(lambda p: fixed_required) if fixed_required is not None else required,
        warmup=warmup,
        columns=(lambda p: fixed_columns) if fixed_columns is not None else columns,
        normalize=normalize if normalize is not None else (lambda p: p),
    )
    FEATURES[name] = entry
    return entry


def _suggest(word: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}known: {', '.join(known)}"


def _feature_def(name: str) -> FeatureDef:
    if not isinstance(name, str):
        raise TypeError(f"feature name must be a str, got {type(name).__name__}: {name!r}")
    try:
        return FEATURES[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; {_suggest(name, FEATURES)}") from None


# Parameter coercion helpers (JSON gives ints/floats/strings/None; reject bools posing as ints).


def _int_param(feature: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"feature {feature!r}: {key} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"feature {feature!r}: {key} must be >= {minimum}, got {value}")
    return int(value)


def _float_param(feature: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"feature {feature!r}: {key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"feature {feature!r}: {key} must be finite, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Fractional differentiation weights
# --------------------------------------------------------------------------------------------


# The most weights (= bars of warm-up) a fracdiff feature may have: a threshold of 1e-300 would otherwise
# grow the list until memory runs out (|w_k| ~ k^-(d+1) never reaches it); 100,000 is agents.artifact.metadata's
# bound on any feature window.
MAX_FRACDIFF_WEIGHTS = 100_000


@functools.lru_cache(maxsize=64)
def _fracdiff_weights_cached(d: float, threshold: float, max_window: int | None) -> np.ndarray:
    cap = MAX_FRACDIFF_WEIGHTS if max_window is None else max_window
    weights = [1.0]
    k = 1
    while len(weights) < cap:
        w = -weights[-1] * (d - k + 1) / k
        if abs(w) < threshold:
            break
        weights.append(w)
        k += 1
    else:
        if max_window is None:
            raise ValueError(f"fracdiff: d={d:g} with threshold={threshold:g} needs more than "
                             f"{MAX_FRACDIFF_WEIGHTS:,} weights (bars of warm-up); "
                             "raise the threshold or set max_window")
    out = np.asarray(weights, dtype=np.float64)
    out.flags.writeable = False
    return out


def fracdiff_weights(d: float, threshold: float = 1e-5, max_window: int | None = None) -> np.ndarray:
    """AFML ch.5 weights w_0=1, w_k=-w_{k-1}(d-k+1)/k, kept while |w_k| >= threshold, at most
    `max_window` of them (None: no cap). Read-only float64 array; y_t = sum_k w_k x_{t-k}."""
    d = _float_param("fracdiff", "d", d)
    threshold = _float_param("fracdiff", "threshold", threshold)
    if d < 0:
        raise ValueError(f"fracdiff: d must be >= 0, got {d}")
    if threshold <= 0:
        raise ValueError(f"fracdiff: threshold must be > 0, got {threshold}")
    if max_window is not None:
        max_window = _int_param("fracdiff", "max_window", max_window, 1)
        if max_window > MAX_FRACDIFF_WEIGHTS:
            raise ValueError(f"fracdiff: max_window must be <= {MAX_FRACDIFF_WEIGHTS:,}, got {max_window:,}")
    return _fracdiff_weights_cached(d, threshold, max_window)


# --------------------------------------------------------------------------------------------
# Built-in features
# --------------------------------------------------------------------------------------------


def _log_ret(cols) -> np.ndarray:
    close = cols["close"]
    out = np.full(close.shape[0], np.nan)
    out[1:] = np.log(close[1:] / close[:-1])
    return out


def _rsi(cols, *, period: int) -> np.ndarray:
    return _k.rsi_centred_nb(cols["close"], period)


def _macd(cols, *, fast: int, slow: int, signal: int) -> np.ndarray:
    close = cols["close"]
    line, sig, hist = _k.macd_nb(close, fast, slow, signal)
    return np.column_stack((line / close, sig / close, hist / close))


def _atr_close(cols, *, period: int) -> np.ndarray:
    close = cols["close"]
    return np.asarray(_atr(cols["high"], cols["low"], close, period=period), dtype=np.float64) / close


def _volume_z(cols, *, window: int, log: bool) -> np.ndarray:
    volume = cols["volume"]
    return _k.rolling_zscore_nb(np.log1p(volume) if log else volume, window)


def _fracdiff(cols, *, d: float, threshold: float, max_window: int | None) -> np.ndarray:
    return _k.fracdiff_nb(np.log(cols["close"]), fracdiff_weights(d, threshold, max_window))


def _obi_source(cols, source: str) -> str:
    if source != "auto":
        return source
    return "book" if "bid_size" in cols and "ask_size" in cols else "bvc"


def _obi(cols, *, source: str, window: int) -> np.ndarray:
    resolved = _obi_source(cols, source)
    logger.debug("obi: source %r resolved to %r", source, resolved)
    if resolved == "bvc":
        return _k.bvc_imbalance_nb(cols["close"], window)
    bid, ask = cols["bid_size"], cols["ask_size"]
    total = bid + ask
    out = np.zeros(bid.shape[0])
    np.divide(bid - ask, total, out=out, where=total > 0)
    return out


def _norm_rsi(p):
    return {"period": _int_param("rsi", "period", p["period"], 2)}


def _norm_macd(p):
    fast = _int_param("macd", "fast", p["fast"], 2)
    slow = _int_param("macd", "slow", p["slow"], 2)
    signal = _int_param("macd", "signal", p["signal"], 1)
    if fast >= slow:
        raise ValueError(f"feature 'macd': fast ({fast}) must be < slow ({slow})")
    return {"fast": fast, "slow": slow, "signal": signal}


def _norm_atr(p):
    return {"period": _int_param("atr", "period", p["period"], 1)}


def _norm_volume_z(p):
    if not isinstance(p["log"], bool):
        raise ValueError(f"feature 'volume_z': log must be true/false, got {p['log']!r}")
    return {"window": _int_param("volume_z", "window", p["window"], 2), "log": p["log"]}


def _norm_fracdiff(p):
    fracdiff_weights(p["d"], p["threshold"], p["max_window"])  # raises on bad values
    return {
        "d": float(p["d"]),
        "threshold": float(p["threshold"]),
        "max_window": None if p["max_window"] is None else int(p["max_window"]),
    }


_OBI_SOURCES = ("auto", "book", "bvc")


def _norm_obi(p):
    if p["source"] not in _OBI_SOURCES:
        raise ValueError(f"feature 'obi': source must be one of {_OBI_SOURCES}, got {p['source']!r}")
    return {"source": p["source"], "window": _int_param("obi", "window", p["window"], 2)}


def _named(base: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    # Default parameters keep the short name; others are appended so two variants never collide.
    extra = [str(params[k]) for k in defaults if params[k] != defaults[k]]
    return "_".join([base, *extra])


_MACD_DEFAULTS = MappingProxyType({"fast": 12, "slow": 26, "signal": 9})
_ATR_DEFAULTS = MappingProxyType({"period": 14})
_VOLUME_Z_DEFAULTS = MappingProxyType({"window": 20, "log": True})
_OBI_DEFAULTS = MappingProxyType({"source": "auto", "window": 50})

register_feature(
    "log_ret", _log_ret, defaults={}, required=("close",), warmup=lambda p: 1, columns=("log_ret",)
)
register_feature(
    "rsi",
    _rsi,
    defaults={"period": 14},
    required=("close",),
    warmup=lambda p: p["period"],
    columns=lambda p: (f"rsi_{p['period']}",),
    normalize=_norm_rsi,
)
register_feature(
    "macd",
    _macd,
    defaults=_MACD_DEFAULTS,
    required=("close",),
    warmup=lambda p: p["slow"] + p["signal"] - 2,
    columns=lambda p: tuple(
        f"{_named('macd', p, _MACD_DEFAULTS)}_{part}" for part in ("line", "signal", "hist")
    ),
    normalize=_norm_macd,
)
register_feature(
    "atr",
    _atr_close,
    defaults=_ATR_DEFAULTS,
    required=("high", "low", "close"),
    warmup=lambda p: p["period"],
    columns=lambda p: (_named("atr_close", p, _ATR_DEFAULTS),),
    normalize=_norm_atr,
)
register_feature(
    "volume_z",
    _volume_z,
    defaults=_VOLUME_Z_DEFAULTS,
    required=("volume",),
    warmup=lambda p: p["window"] - 1,
    columns=lambda p: (
        _named("volume_z", {**p, "log": True}, _VOLUME_Z_DEFAULTS) + ("" if p["log"] else "_raw"),
    ),
    normalize=_norm_volume_z,
)
register_feature(
    "fracdiff",
    _fracdiff,
    # With threshold 1e-5 alone, d=0.4 needs 1,458 weights (4,076 at d=0.1): a third of a daily
    # sample lost to warm-up. The cap of 100 bars keeps warm-up short; |w_99| is ~4e-4 at d=0.4.
    defaults={"d": 0.4, "threshold": 1e-5, "max_window": 100},
    required=("close",),
    warmup=lambda p: len(fracdiff_weights(p["d"], p["threshold"], p["max_window"])) - 1,
    columns=lambda p: (f"fracdiff_{p['d']:g}",),
    normalize=_norm_fracdiff,
)
register_feature(
    "obi",
    _obi,
    # source: "book" = (bid_size-ask_size)/(bid_size+ask_size); "bvc" = bulk-volume-classification
    # proxy from closes (Easley, Lopez de Prado, O'Hara 2012); "auto" = book when both size columns
    # are in the frame, else bvc, decided per call. Pin it in a trained model's spec.
    defaults=_OBI_DEFAULTS,
    required=lambda p: ("bid_size", "ask_size") if p["source"] == "book" else ("close",),
    # Upper bound: the book variant has no warm-up, bvc (and auto without a book) has `window`.
    warmup=lambda p: 0 if p["source"] == "book" else p["window"],
    columns=lambda p: (_named("obi", {**p, "source": "auto"}, _OBI_DEFAULTS),),
    normalize=_norm_obi,
)

DEFAULT_FEATURES = ("log_ret", "rsi", "macd", "atr", "volume_z", "fracdiff", "obi")


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """One feature and its parameters. `params` may be given as a dict; it is stored as a tuple of
    (key, value) pairs holding every parameter (defaults filled in), so equal configs compare equal."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        entry = _feature_def(self.name)
        given = dict(self.params.items() if isinstance(self.params, Mapping) else self.params)
        for key in given:
            if key not in entry.defaults:
                known = list(entry.defaults) or ["(none)"]
                raise ValueError(f"feature {self.name!r}: unknown parameter {key!r}; {_suggest(key, known)}")
        merged = entry.normalize({k: given.get(k, v) for k, v in entry.defaults.items()})
        object.__setattr__(self, "params", tuple((k, merged[k]) for k in entry.defaults))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(FEATURES[self.name].columns(self.kwargs))

    @property
    def warmup(self) -> int:
        return int(FEATURES[self.name].warmup(self.kwargs))

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(FEATURES[self.name].required(self.kwargs))

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.name!r}" + (f" ({args})" if args else "")


@dataclass(frozen=True)
class FeatureSpec:
    """Ordered, hashable list of features; `columns` is the output order of `compute_features`."""

    features: tuple[FeatureConfig, ...]

    def __post_init__(self):
        items = (self.features,) if isinstance(self.features, (str, FeatureConfig)) else self.features
        configs = tuple(f if isinstance(f, FeatureConfig) else FeatureConfig(f) for f in items)
        if not configs:
            raise ValueError("FeatureSpec needs at least one feature")
        seen: dict[str, FeatureConfig] = {}
        for cfg in configs:
            for col in cfg.columns:
                if col in seen:
                    raise ValueError(
                        f"column {col!r} is produced by both {seen[col].describe()} and "
                        f"{cfg.describe()}; drop one or change its parameters"
                    )
                seen[col] = cfg
        object.__setattr__(self, "features", configs)

    @classmethod
    def default(cls) -> FeatureSpec:
        """log_ret, rsi_14, macd_line/signal/hist, atr_close, volume_z, fracdiff_0.4, obi."""
        return cls.from_names(DEFAULT_FEATURES)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> FeatureSpec:
        """Features by registry name, each with its default parameters."""
        if isinstance(names, str):
            names = [names]
        return cls(tuple(FeatureConfig(name) for name in names))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(col for cfg in self.features for col in cfg.columns)

    @property
    def warmup(self) -> int:
        """Most leading NaN rows any feature can have; rows from here on are finite."""
        return max(cfg.warmup for cfg in self.features)

    @property
    def required_columns(self) -> tuple[str, ...]:
        needed = {col for cfg in self.features for col in cfg.required_columns}
        ordered = [c for c in _OHLCV_ORDER if c in needed]
        return tuple(ordered + sorted(needed.difference(ordered)))

    def sources(self) -> dict[str, tuple[str, ...]]:
        """Each feature column -> the data columns it is computed from (a pinned spec: what the card shows)."""
        return {col: tuple(cfg.required_columns) for cfg in self.features for col in cfg.columns}

    def pinned(self, columns: Iterable[str]) -> FeatureSpec:
        """This spec with every ``source="auto"`` resolved for a frame with ``columns``.

        A trained model must compute the same variant at inference as in training, whatever
        columns a later frame happens to carry, so artefacts store the pinned spec.
        """
        has_book = {"bid_size", "ask_size"}.issubset(set(columns))
        pinned = []
        for cfg in self.features:
            params = cfg.kwargs
            if params.get("source") == "auto":
                params["source"] = "book" if has_book else "bvc"
            pinned.append(FeatureConfig(cfg.name, params))
        return FeatureSpec(tuple(pinned))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "features": [{"name": cfg.name, "params": cfg.kwargs} for cfg in self.features],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        if not isinstance(data, Mapping) or not isinstance(data.get("features"), list):
            raise ValueError("feature spec dict needs a 'features' list of {'name', 'params'} entries")
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ValueError(f"feature spec version {version!r} is not supported (expected {SPEC_VERSION})")
        configs = []
        for i, entry in enumerate(data["features"]):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"feature spec entry {i} must be a dict with a 'name', got {entry!r}")
            configs.append(FeatureConfig(entry["name"], entry.get("params") or {}))
        return cls(tuple(configs))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------


class _Columns:
    """Read-only view of a frame's columns as validated float64 arrays, converted on first use."""

    def __init__(self, df: pd.DataFrame):
        self._df = df
        self._cache: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._df.columns

    def __len__(self) -> int:
        return len(self._df)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._cache:
            return self._cache[name]
        try:
            values = self._df[name].to_numpy(dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} is not numeric: {exc}") from None
        bad = ~np.isfinite(values)
        if name in _POSITIVE_COLUMNS:
            bad |= values <= 0
            rule = "finite and > 0"
        elif name in _NON_NEGATIVE_COLUMNS:
            bad |= values < 0
            rule = "finite and >= 0"
        else:
            rule = "finite"
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"column {name!r} must be {rule}: {int(bad.sum())} bad value(s), first "
                f"{values[first]!r} at row {first} ({self._df.index[first]}); clean the data first"
            )
        values.flags.writeable = False
        self._cache[name] = values
        return values


def compute_features(df: pd.DataFrame, spec: FeatureSpec | None = None) -> tuple[np.ndarray, list[str]]:
    """Evaluate `spec` (default: `FeatureSpec.default()`) on `df` -> (float32 (N, F), column names).

    Computed in float64 and cast once at the end; the first `spec.warmup` rows may hold NaN.
    """
    spec = FeatureSpec.default() if spec is None else spec
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"spec must be a FeatureSpec or None, got {type(spec).__name__}")
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"compute_features needs a pandas DataFrame, got {type(df).__name__}")
    for cfg in spec.features:
        for col in cfg.required_columns:
            if col not in df.columns:
                raise ValueError(
                    f"feature {cfg.describe()} needs column {col!r}, which the frame lacks "
                    f"(columns: {', '.join(map(str, df.columns))})"
                )
    cols = _Columns(df)
    n = len(df)
    out = np.empty((n, len(spec.columns)), dtype=np.float32)
    j = 0
    for cfg in spec.features:
        values = np.asarray(FEATURES[cfg.name].func(cols, **cfg.kwargs), dtype=np.float64)
        width = len(cfg.columns)
        if values.size != n * width:
            raise RuntimeError(f"feature {cfg.name!r} returned shape {values.shape}, expected ({n}, {width})")
        out[:, j : j + width] = values.reshape(n, width)
        j += width
    return out, list(spec.columns)
