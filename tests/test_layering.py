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
