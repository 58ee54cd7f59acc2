"""Backtest an exported agent (or a baseline) out-of-sample, against buy-and-hold: the main command.

    python run_backtest.py --agent models/agent1.onnx

The command lives in :mod:`engine.backtest_cli` (installed as ``tbm-backtest``); this file runs it
from a checkout. ``python run_backtest.py --help`` lists the options.
"""

import sys

from engine.backtest_cli import main

if __name__ == "__main__":
    sys.exit(main())
