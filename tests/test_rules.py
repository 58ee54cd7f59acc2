"""The trading rules, costs and run settings (labeling.rules, engine.config): values, checks, round trips, and
proof that their defaults and checks are written once in the code base."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import ENGINES, RunConfig
from labeling.rules import BarrierRules, Costs, TBMConfig, check_max_positions, check_size_frac

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datafeeds", "labeling", "agents", "strategies", "engine")


def test_defaults_and_the_labels_barriers_are_one_set_of_numbers():
    r = BarrierRules()
    assert (r.threshold, r.pt, r.sl, r.horizon, r.atr_period, r.size_frac) == (0.5, 1.5, 1.5, 20, 14, None)
    assert r.tbm == TBMConfig() and r.entry_fraction == 1.0
    assert Costs() == Costs(commission=0.0005, slippage=0.0)
    run = RunConfig()
    assert (run.cash, run.engine, run.benchmark, run.native_barriers) == (100_000.0, "backtrader", True, True)
    assert BarrierRules.from_tbm(TBMConfig(pt=2, horizon=5), 0.6, sl=0.5) == BarrierRules(0.6, 2.0, 0.5, 5, 14)


def test_values_are_normalised_and_round_trip_through_json():
    r = BarrierRules(threshold=np.float64(0.55), pt=2, sl=np.float32(0.5), horizon=np.int64(7), size_frac=0.25)
    assert type(r.pt) is float and type(r.horizon) is int and type(r.threshold) is float
    assert BarrierRules.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert Costs.from_dict(Costs(0.001, 0.0002).to_dict()) == Costs(0.001, 0.0002)
    assert r.replace(pt=3.0).pt == 3.0 and r.pt == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.pt = 1.0
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['treshold'\]"):
        BarrierRules.from_dict({"treshold": 0.5})


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=1.5), r"threshold must be a probability in \[0, 1\], got 1.5"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(threshold=True), "threshold"),
    (dict(pt=0), "pt must be a positive finite number of ATRs, got 0"),
    (dict(sl=float("inf")), "sl must be"),
    (dict(pt="1"), "pt must be"),
    (dict(horizon=0), "horizon must be an integer >= 1, got 0"),
    (dict(horizon=2.5), "horizon must be an integer"),
    (dict(horizon=10**7), "horizon"),
    (dict(atr_period=True), "atr_period"),
    (dict(size_frac=0.0), r"size_frac must be in \(0, 1\] \(no leverage\), got 0.0"),
    (dict(size_frac=1.5), "size_frac"),
])
def test_bad_rules_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BarrierRules(**kwargs)


@pytest.mark.parametrize("cls, kwargs, match", [
    (Costs, dict(commission=-0.001), r"commission must be in \[0, 1\)"),
    (Costs, dict(commission=float("nan")), "commission"),
    (Costs, dict(slippage=1.0), r"slippage must be in \[0, 1\)"),
    (RunConfig, dict(cash=0), "cash must be a positive finite amount, got 0"),
    (RunConfig, dict(cash=float("inf")), "cash"),
    (RunConfig, dict(engine="fsat"), "engine: unknown engine 'fsat'; did you mean 'fast'"),
    (RunConfig, dict(periods_per_year=0), "periods_per_year"),
    (RunConfig, dict(risk_free=1.0), r"risk_free must be an annual rate in \(-1, 1\)"),
])
def test_bad_costs_and_run_settings_are_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_the_small_checks():
    assert check_size_frac(None) is None and check_size_frac(1) == 1.0
    assert check_max_positions(np.int64(3)) == 3
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_positions must be an integer >= 1"):
            check_max_positions(bad)


def test_the_rules_import_without_numpy_numba_or_pandas():
    code = ("import sys, labeling.rules, engine.config; import labeling; labeling.BarrierRules; "
            "print(sorted(m for m in ('numpy', 'numba', 'pandas', 'backtrader') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_labeling_atr_is_the_function_after_its_module_loads():
    code = "import labeling.tbm, labeling; print(callable(labeling.atr))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# ------------------------------------------------------------------ written once (the grep, as a test)

RULE_FIELDS = {"threshold", "pt", "sl", "horizon", "atr_period", "size_frac", "commission", "slippage", "cash"}
HOMES = {"labeling/rules.py", "engine/config.py"}
OTHER_MEANINGS = {("features.py", "threshold")}  # fractional differentiation's weight cut-off, not a trading rule


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def _literal_defaults(tree):
    """(name, line) of every literal number given as the default of a trading-rule name: function keyword
    defaults, annotated class fields and backtrader ``params`` tuples."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            pos = args.posonlyargs + args.args
            pairs = list(zip(pos[len(pos) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg in RULE_FIELDS and _is_number(default):
                    yield arg.arg, node.lineno
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in RULE_FIELDS and node.value is not None and _is_number(node.value):
                yield node.target.id, node.lineno
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2:
            key, value = node.elts
            if isinstance(key, ast.Constant) and key.value in RULE_FIELDS and _is_number(value):
                yield key.value, node.lineno


def _is_number(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def test_trading_rule_defaults_are_written_once():
    found = [(path, name, line) for path, text in _sources() if path not in HOMES
             for name, line in _literal_defaults(ast.parse(text)) if (Path(path).name, name) not in OTHER_MEANINGS]
    assert found == [], "defaults of the trading rules belong in labeling/rules.py or engine/config.py"


@pytest.mark.parametrize("fragment", [
    "(no leverage)", "positive finite number of ATRs", "must be a probability in [0, 1]",
    "a fraction of the traded value per side", "positive finite amount", "max_positions must be an integer",
])
def test_trading_rule_checks_are_written_once(fragment):
    homes = [path for path, text in _sources() if fragment in text]
    assert len(homes) == 1 and homes[0] in HOMES, homes


def test_no_backtest_path_function_takes_more_than_eight_parameters():
    too_many = []
    for path, text in _sources():
        if not path.startswith(("engine/", "strategies/", "labeling/rules.py")):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args]
                # a **params pass-through (run_backtest's strategy parameters) is not a list of settings
                n = len(names) + len(a.kwonlyargs) + (a.vararg is not None)
                n -= bool(names) and names[0] in ("self", "cls")
                if n > 8:
                    too_many.append(f"{path}:{node.lineno} {node.name} ({n})")
    assert too_many == []


def test_engines_are_defined_once():
    homes = [path for path, text in _sources() if "ENGINES = (" in text]
    assert homes == ["engine/config.py"] and ENGINES == ("backtrader", "fast")
