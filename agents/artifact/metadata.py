"""The agent card: JSON metadata embedded in every exported ONNX agent.

An agent file must be usable with no other input, so it carries its feature spec, sequence
length, normalisation, Triple Barrier settings, threshold, data provenance and metrics.
``parse`` validates every field that a reader of the card uses (the runtime, ``agents.artifact.inspect``,
``run_backtest.py``, ``agents.artifact.verdict``), so a corrupted or edited file fails at load with one line
naming the field, not later with a traceback or, worse, silently wrong probabilities.

This module stays light (no numpy/pandas at import): ``python -m agents.inspect --help`` imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as _importlib_metadata
from typing import TYPE_CHECKING, Any

from labeling.rules import BarrierRules, TBMConfig

if TYPE_CHECKING:  # annotations only: the card module stays importable on its own
    from ..data.prepare import PooledPrepared, Prepared
    from ..model.transformer import TransformerAgent

METADATA_KEY = "tbm_agent"  # key in ModelProto.metadata_props holding the JSON card
FORMAT = "tbm-agent"
FORMAT_VERSION = 1  # bump on an incompatible change of the card or the model's input/output

# Bounds on the card's numbers that size allocations, checked before anything is built from them.
# seq_len sizes every (batch, seq_len, features) window array; 4096 is 64x the shipped agent's 64 and
# far beyond what the small transformer is trained with. (Whether the ONNX graph itself accepts this
# seq_len is not checked here.)
MAX_SEQ_LEN = 4096
# warmup (and any integer feature parameter, e.g. a rolling window) sizes the streaming history the
# runtime keeps (warmup + 1 + STREAM_HISTORY bars per column) and the features' kernels; 100,000 bars
# is ~400 years of daily or ~70 days of 1-minute bars of warm-up.
MAX_WARMUP = 100_000

# Feature parameters whose null means "unbounded": fracdiff's weight count with max_window null is
# limited only by its threshold, and a tiny threshold (or a huge d) makes building the spec run forever.
# The trainer always writes an integer here.
_BOUNDING_PARAMS = frozenset({"max_window"})

_FIX = "the file was edited or corrupted: re-export the agent"


class AgentFileError(ValueError):
    """An agent file is missing, not ONNX, lacks our metadata, or was made by an incompatible version."""


def package_version() -> str:
    try:
        return _importlib_metadata.version("tbm-backtest")
    except _importlib_metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def dumps(card: dict) -> str:
    return json.dumps(card, sort_keys=True, allow_nan=False)


def loss_label(alpha: float | None, gamma: float) -> str:
    """The training loss's name as the card and the console show it."""
    return "cross-entropy" if alpha is None and gamma == 0 else f"focal loss (alpha {alpha}, gamma {gamma})"


# --------------------------------------------------------------------------------------------
# Field rules: each check raises _Bad(rule) when a value breaks it; the table below says which
# field gets which check. A check of a list item adds the item's index to the field name.
# --------------------------------------------------------------------------------------------

_MISSING = object()
Check = Callable[[Any], None]


class _Bad(Exception):
    """A value breaks a rule: ``rule`` completes "must be ..."; ``where`` is an item suffix like '[3]'."""

    def __init__(self, rule: str, where: str = "", value: Any = _MISSING):
        super().__init__(rule)
        self.rule, self.where, self.value = rule, where, value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is a bool, and bool is an int


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(lo, hi) -> str:
    if hi is None:
        return f" >= {lo}"
    return f" in [{lo}, {hi}]"


def _int(lo: int, hi: int | None = None) -> Check:
    rule = "an integer" + _interval(lo, hi)

    def check(v):
        if not (_is_int(v) and v >= lo and (hi is None or v <= hi)):
            raise _Bad(rule)
    return check


def _number(lo: float | None = None, hi: float | None = None, *, above: float | None = None) -> Check:
    """A finite number (not a bool), optionally in [lo, hi] or > above."""
    rule = "a finite number" + (f" > {above}" if above is not None else _interval(lo, hi) if lo is not None else "")

    def check(v):
        ok = _is_number(v) and (above is None or v > above) and (lo is None or v >= lo) and (hi is None or v <= hi)
        if not ok:
            raise _Bad(rule)
    return check


def _string(nonempty: bool = True) -> Check:
    rule = "a non-empty string" if nonempty else "a string"

    def check(v):
        if not isinstance(v, str) or (nonempty and not v):
            raise _Bad(rule)
    return check


def _kind(kind: type, name: str) -> Check:
    def check(v):
        if not isinstance(v, kind):
            raise _Bad(name)
    return check


def _items(item: Check, *, unique: bool = False) -> Check:
    """A list whose every item passes ``item``; errors name the item's index."""
    def check(v):
        if not isinstance(v, list):
            raise _Bad("a list")
        for i, x in enumerate(v):
            try:
                item(x)
            except _Bad as bad:
                raise _Bad(bad.rule, f"[{i}]{bad.where}", x) from None
        if unique and len(set(v)) != len(v):
            dup = next(x for i, x in enumerate(v) if x in v[:i])
            raise _Bad(f"a list without repeats ({dup!r} appears twice)")
    return check


def _as_datetime(v) -> datetime | None:
    """``v`` parsed as an ISO date/time (UTC-naive), or None if it is not one."""
    if not isinstance(v, str):
        return None
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    return d if d.tzinfo is None else d.astimezone(timezone.utc).replace(tzinfo=None)


def _date(v) -> None:
    if _as_datetime(v) is None:
        raise _Bad("an ISO date string such as '2015-01-02 00:00:00'")


def _date_range(v) -> None:
    if not (isinstance(v, list) and len(v) == 2):
        raise _Bad("a list [first, last] of two ISO date strings")
    for i, x in enumerate(v):
        if _as_datetime(x) is None:
            raise _Bad("an ISO date string such as '2015-01-02 00:00:00'", f"[{i}]", x)
    if _as_datetime(v[0]) > _as_datetime(v[1]):
        raise _Bad("a list [first, last] with first <= last")


def _or_null(check: Check) -> Check:
    """``check``, or null (JSON null = Python None)."""
    def nullable(v):
        if v is not None:
            try:
                check(v)
            except _Bad as bad:
                raise _Bad(bad.rule if bad.where else bad.rule + " or null", bad.where, bad.value) from None
    return nullable


REQUIRED, OPTIONAL = True, False  # OPTIONAL: the key may be absent; if present it must pass the check
_DICT = _kind(dict, "a dict (JSON object)")
_PROBABILITY = _or_null(_number(0, 1))
_LOSS = _or_null(_number(0))
_COUNT = _or_null(_int(0))

# Every field a reader uses, parents before children. Who reads it: runtime.OnnxAgent (R),
# agents.artifact.inspect (I), run_backtest.py (B), agents.artifact.verdict (V).
_FIELDS: tuple[tuple[str, bool, Check], ...] = (
    ("package_version", REQUIRED, _string(nonempty=False)),  # I
    ("input_name", REQUIRED, _string()),  # R
    ("output_name", REQUIRED, _string()),
    ("features", REQUIRED, _DICT),  # R: FeatureSpec, checked as a whole below
    ("feature_names", REQUIRED, _items(_string(), unique=True)),  # R, I; equal to the spec's columns
    ("seq_len", REQUIRED, _int(1, MAX_SEQ_LEN)),  # R
    ("warmup", REQUIRED, _int(0, MAX_WARMUP)),  # B via the runtime; equal to the spec's, below
    ("normalisation", REQUIRED, _DICT),  # R
    ("normalisation.mean", REQUIRED, _items(_number())),
    ("normalisation.std", REQUIRED, _items(_number(above=0))),  # divides every feature
    ("tbm", REQUIRED, _DICT),  # R: TBMConfig, checked as a whole below
    ("threshold", REQUIRED, _number(0, 1)),  # R, B
    ("rules", OPTIONAL, _DICT),  # R: BarrierRules, the tbm and threshold above as one object; checked below
    ("model", REQUIRED, _DICT),  # I
    ("training_command", REQUIRED, _string(nonempty=False)),  # I
    ("dataset", REQUIRED, _DICT),  # I, B
    ("dataset.name", REQUIRED, _string()),
    ("dataset.sha256", REQUIRED, _string(nonempty=False)),
    ("dataset.first_bar", REQUIRED, _date),
    ("dataset.last_bar_used", REQUIRED, _date),
    ("dataset.train", REQUIRED, _date_range),
    ("dataset.validation", OPTIONAL, _or_null(_date_range)),  # null: refit on train + validation
    ("dataset.holdout_start", OPTIONAL, _or_null(_date)),
    ("dataset.bar_seconds", OPTIONAL, _or_null(_number(above=0))),  # B: absent in cards made before it was recorded
    ("metrics", REQUIRED, _DICT),  # I, V: numbers are formatted with format specs
    *((f"metrics.{k}", OPTIONAL, _PROBABILITY) for k in ("val_auc", "adversarial_auc", "best_constant_p")),
    *((f"metrics.{k}", OPTIONAL, _LOSS) for k in (
        "train_loss", "baseline_train_loss", "best_constant_train_loss", "val_loss", "baseline_val_loss",
        "best_constant_val_loss", "val_logloss", "baseline_val_logloss")),
    *((f"metrics.{k}", OPTIONAL, _COUNT) for k in ("epochs_run", "best_epoch")),
    ("metrics.label_balance", OPTIONAL, _DICT),
    *((f"metrics.label_balance.{k}", OPTIONAL, _PROBABILITY) for k in ("train_positive_rate", "val_positive_rate")),
    *((f"metrics.label_balance.{k}", OPTIONAL, _COUNT) for k in ("train_events", "val_events")),
    ("metrics.linear_baseline", OPTIONAL, _or_null(_DICT)),  # I, V
    ("metrics.linear_baseline.val_auc", OPTIONAL, _PROBABILITY),
    ("metrics.linear_baseline.val_logloss", OPTIONAL, _LOSS),
    ("metrics.gbm_baseline", OPTIONAL, _or_null(_DICT)),  # I, V
    ("metrics.gbm_baseline.val_auc", OPTIONAL, _PROBABILITY),
    ("metrics.gbm_baseline.val_logloss", OPTIONAL, _LOSS),
    *((f"metrics.gbm_baseline.{k}", OPTIONAL, _COUNT) for k in ("lags", "n_estimators", "train_rows")),
    ("metrics.val_at_threshold", OPTIONAL, _DICT),
    *((f"metrics.val_at_threshold.{k}", OPTIONAL, _PROBABILITY) for k in ("precision", "recall", "signal_rate")),
    ("walk_forward", OPTIONAL, _DICT),  # I: walk-forward refits only
    ("walk_forward.test", OPTIONAL, _date_range),
)


def _show(value) -> str:
    """``value`` as it reads in the JSON card, cut to 80 characters."""
    if isinstance(value, dict):
        return "a dict"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field_error(path: str, field: str, value, rule: str) -> AgentFileError:
    state = "is missing" if value is _MISSING else f"is {_show(value)}"
    return AgentFileError(f"{path}: metadata field '{field}' {state}; must be {rule} ({_FIX})")


def _lookup(card: dict, field: str):
    """The value at a dotted ``field``, or _MISSING if it or a parent is absent (parents are checked first)."""
    value = card
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _check_fields(card: dict, path: str) -> None:
    for field, required, check in _FIELDS:
        value = _lookup(card, field)
        if value is _MISSING:
            parent = field.rpartition(".")[0]
            if required and (not parent or isinstance(_lookup(card, parent), dict)):
                raise _field_error(path, field, value, _rule_of(check))
            continue
        try:
            check(value)
        except _Bad as bad:
            shown = value if bad.value is _MISSING else bad.value  # an item's own value when an item failed
            raise _field_error(path, field + bad.where, shown, bad.rule) from None


def _rule_of(check: Check) -> str:
    """What ``check`` requires, from the message it gives a value no check accepts."""
    try:
        check(_MISSING)
    except _Bad as bad:
        return bad.rule
    return "present"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _check_consistency(card: dict, path: str) -> None:
    """Fields that must agree with each other: the feature spec, its names, normalisation, warm-up, TBM."""
    from ..data.features import FeatureSpec  # here: it loads numpy/pandas/numba, which the card module avoids

    specs = card["features"].get("features")
    for i, entry in enumerate(specs if isinstance(specs, list) else ()):
        params = entry.get("params") if isinstance(entry, dict) else None
        for key, value in (params.items() if isinstance(params, dict) else ()):
            # windows and periods size the features' work and buffers; bound them before building the spec
            too_big = _is_int(value) and value > MAX_WARMUP
            if too_big or (key in _BOUNDING_PARAMS and value is None):
                raise _field_error(path, f"features.features[{i}].params.{key}", value,
                                   f"an integer <= {MAX_WARMUP} (the bound on any feature window)")
    try:
        spec = FeatureSpec.from_dict(card["features"])
    except (ValueError, TypeError, KeyError) as exc:
        raise AgentFileError(f"{path}: metadata field 'features' is not a valid feature spec: "
                             f"{_one_line(exc)} ({_FIX})") from None
    names, columns = card["feature_names"], list(spec.columns)
    if names != columns:
        lacks, extra = [c for c in columns if c not in names], [n for n in names if n not in columns]
        how = "; ".join([*([f"lacks {lacks}"] if lacks else []), *([f"has extra {extra}"] if extra else [])])
        raise AgentFileError(f"{path}: metadata field 'feature_names' {how or 'is in another order'}; must be the "
                             f"columns of the card's feature spec, in order: {columns} ({_FIX})")
    for stat in ("mean", "std"):
        values = card["normalisation"][stat]
        if len(values) != len(columns):
            raise AgentFileError(f"{path}: metadata field 'normalisation.{stat}' has {len(values)} numbers; must "
                                 f"have one per feature ({len(columns)}) ({_FIX})")
    _check_per_symbol(card, path, len(columns))
    expected = spec.warmup + card["seq_len"] - 1
    if card["warmup"] != expected:
        raise _field_error(path, "warmup", card["warmup"],
                           f"{expected} (the feature spec's warm-up {spec.warmup} + seq_len {card['seq_len']} - 1)")
    try:
        TBMConfig.from_dict(card["tbm"])
    except (ValueError, TypeError) as exc:
        raise AgentFileError(f"{path}: metadata field 'tbm' holds invalid Triple Barrier settings: "
                             f"{_one_line(exc)} ({_FIX})") from None
    if "rules" in card:  # agents exported before the rules were one object carry tbm and threshold only
        _check_rules(card, path)
    ds = card["dataset"]
    if _as_datetime(ds["first_bar"]) > _as_datetime(ds["last_bar_used"]):
        raise _field_error(path, "dataset.first_bar", ds["first_bar"],
                           f"on or before dataset.last_bar_used ({ds['last_bar_used']})")


def _check_rules(card: dict, path: str) -> None:
    """The card's trading rules: valid, and the same barriers and threshold as its ``tbm`` and ``threshold``."""
    try:
        rules = BarrierRules.from_dict(card["rules"])
    except (ValueError, TypeError) as exc:
        raise AgentFileError(f"{path}: metadata field 'rules' holds invalid trading rules: {_one_line(exc)} "
                             f"({_FIX})") from None
    if rules.tbm != TBMConfig.from_dict(card["tbm"]) or rules.threshold != card["threshold"]:
        raise AgentFileError(f"{path}: metadata field 'rules' disagrees with 'tbm' and 'threshold'; must hold the "
                             f"same barriers and threshold ({_FIX})")


def _check_per_symbol(card: dict, path: str, n_features: int) -> None:
    """A universe agent normalised per symbol: each member's sha256 and statistics, which the runtime applies."""
    per = card["normalisation"].get("per_symbol")
    if per is None:
        return
    if not isinstance(per, dict) or not per:
        raise _field_error(path, "normalisation.per_symbol", per, "a non-empty dict symbol -> statistics")
    for symbol, entry in per.items():
        where = f"normalisation.per_symbol.{symbol}"
        if not isinstance(entry, dict):
            raise _field_error(path, where, entry, "a dict with sha256, mean and std")
        try:
            _string()(entry.get("sha256"))
        except _Bad as bad:
            raise _field_error(path, f"{where}.sha256", entry.get("sha256"), bad.rule) from None
        for stat, check in (("mean", _items(_number())), ("std", _items(_number(above=0)))):
            values = entry.get(stat)
            try:
                check(values)
            except _Bad as bad:
                raise _field_error(path, f"{where}.{stat}{bad.where}", values if bad.value is _MISSING else bad.value,
                                   bad.rule) from None
            if len(values) != n_features:
                raise _field_error(path, f"{where}.{stat}", f"{len(values)} numbers",
                                   f"one per feature ({n_features})")


def validate(card: dict, *, path: str) -> dict:
    """Check every field a reader of the card uses (types, finite numbers, ranges, agreement between
    fields); raise AgentFileError with one line naming ``path`` and the dotted field. Returns ``card``."""
    _check_fields(card, path)
    _check_consistency(card, path)
    return card


def parse(text: str | None, *, path: str) -> dict:
    """Parse and validate a card read from ``path``; raise AgentFileError naming what is wrong."""
    if text is None:
        raise AgentFileError(
            f"{path}: ONNX file has no '{METADATA_KEY}' metadata; it was not exported by "
            "agents.artifact.export (train one with: python -m agents.train)"
        )
    try:
        card = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise AgentFileError(f"{path}: '{METADATA_KEY}' metadata is not valid JSON ({_one_line(exc)})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise AgentFileError(f"{path}: metadata is not a {FORMAT} card")
    version = card.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise AgentFileError(
            f"{path}: agent format version {version!r} (made by tbm-backtest "
            f"{card.get('package_version', '?')}) is incompatible with this version "
            f"({FORMAT_VERSION}, tbm-backtest {package_version()}); re-export or retrain the agent"
        )
    return validate(card, path=path)


def build_card(cfg, prep: Prepared | PooledPrepared, model: TransformerAgent, metrics: dict,
               command: str) -> dict:
    """The card of a trained model: everything ``OnnxAgent`` needs, plus provenance and metrics. ``cfg``: the run's
    `TrainConfig` (read by attribute: artifact/ never imports training/)."""
    import torch  # here, not at the top: reading agents (OnnxAgent) must not load torch

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "torch_version": torch.__version__,
        "input_name": "x",
        "output_name": "logit",
        "output": "logit of P(upper barrier touched first); probability = sigmoid(logit)",
        "features": prep.spec.to_dict(),
        "feature_names": prep.names,
        # the data columns behind each feature: a feature fed by a column other than OHLCV is visible
        "feature_sources": {k: list(v) for k, v in prep.spec.sources().items()},
        "seq_len": cfg.seq_len,
        "warmup": prep.spec.warmup + cfg.seq_len - 1,
        "normalisation": prep.card_normalisation(),
        "tbm": cfg.tbm.to_dict(),
        "threshold": float(metrics["threshold"]),
        "rules": BarrierRules.from_tbm(cfg.tbm, float(metrics["threshold"])).to_dict(),  # what a backtest trades
        "model": model.config.to_dict(),
        "dataset": prep.card_dataset(cfg),
        "metrics": metrics,
        "train_config": cfg.to_dict(),
        "training_command": command,
    }
