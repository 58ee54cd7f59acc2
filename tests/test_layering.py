"""The pipeline flows one way: a lower package never imports a higher one."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["datafeeds", "labeling", "agents", "strategies", "engine"]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_no_upward_imports(package):
    higher = set(LAYERS[LAYERS.index(package) + 1 :])
    offenders = {
        f"{path.relative_to(ROOT)} imports {sorted(_imported_packages(path) & higher)}"
        for path in (ROOT / package).rglob("*.py")
        if _imported_packages(path) & higher
    }
    assert not offenders, f"upward imports: {sorted(offenders)}"


def _python_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter at the repository root; it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_backtesting_a_saved_agent_does_not_load_torch():
    # run_backtest.py needs onnxruntime only; torch costs a second of import and ~1 GB of memory.
    _python_ok("import sys, run_backtest, engine; from agents import AgentFileError, OnnxAgent; "
               "assert 'torch' not in sys.modules, 'torch was imported'; "
               "from agents import FocalLoss; assert 'torch' in sys.modules")


def test_loading_data_does_not_load_backtrader():
    _python_ok("import sys, datafeeds, labeling; datafeeds.load_ohlcv('sp500'); "
               "assert 'backtrader' not in sys.modules, 'backtrader was imported'; "
               "from datafeeds import to_backtrader; assert 'backtrader' in sys.modules")


# what --help must not load: each costs 0.1-1.4 s of import (torch alone ~1.4 s, sklearn ~1.2 s here)
HEAVY = ("torch", "pandas", "numba", "backtrader", "matplotlib", "optuna", "onnx", "onnxruntime", "sklearn",
         "scipy", "talib")
_HELP_PROBE = """
import runpy, sys
target = sys.argv[1]
sys.argv = [target, *sys.argv[2:]]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules), "EXIT", code, file=sys.stderr)
"""


@pytest.mark.parametrize("cli", ["run_backtest.py", "agents.train", "engine.walkforward", "agents.inspect"])
@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]])
def test_help_and_usage_errors_answer_before_heavy_imports(cli, argv):
    # --help and argparse errors must come back at once: parse before importing torch, pandas, backtrader ...
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE.format(heavy=HEAVY), cli, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"HEAVY [] EXIT {0 if argv == ['--help'] else 2}", proc.stderr


def test_constants_spelt_out_for_fast_help_match_their_source():
    import run_backtest
    from engine._wf_config import ENGINES as WF_ENGINES
    from engine.runner import ENGINES
    from strategies import STRATEGIES, SmaCross

    assert run_backtest.STRATEGY_NAMES == tuple(STRATEGIES)
    assert run_backtest.SMA_DEFAULTS == (SmaCross.params.fast, SmaCross.params.slow)
    assert WF_ENGINES == ENGINES
