"""One pattern for every command line (datafeeds.cli): ``build_parser()``, ``main(argv=None) -> int`` through
``run_command`` (input errors in one line with exit status 2, a closed pipe quietly with 1), run as a script."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from datafeeds import DataError
from datafeeds.cli import ArgumentParser, UsageError, run_command

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {  # module -> how it is run from a checkout
    "engine.backtest_cli": ["run_backtest.py"],
    "agents.training.cli": ["-m", "agents.train"],
    "agents.artifact.inspect": ["-m", "agents.inspect"],
    "engine.walkforward.cli": ["-m", "engine.walkforward"],
    "datafeeds.__main__": ["-m", "datafeeds"],
}
SCRIPTS = {"engine.backtest_cli": "engine/backtest_cli.py",  # and run_backtest.py
           "agents.training.cli": "agents/train.py", "agents.artifact.inspect": "agents/inspect.py",
           "engine.walkforward.cli": "engine/walkforward/__main__.py",
           "datafeeds.__main__": "datafeeds/__main__.py"}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_written_the_same_way(name):
    module = importlib.import_module(name)
    assert isinstance(module.build_parser(), ArgumentParser)  # one-line argparse errors
    params = inspect.signature(module.main).parameters
    assert list(params) == ["argv"] and params["argv"].default is None
    assert "return run_command(_main, argv)" in inspect.getsource(module.main)
    for script in (SCRIPTS[name], *(["run_backtest.py"] if name == "engine.backtest_cli" else [])):
        assert (ROOT / script).read_text().rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())'), script


@pytest.mark.parametrize("name", COMMANDS)
def test_a_usage_error_is_one_line_and_exit_2(name):
    done = subprocess.run([sys.executable, *COMMANDS[name], "--no-such-option"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and ": error: " in done.stderr and done.stderr.endswith(" (see --help)\n")


@pytest.mark.parametrize("argv", [["-m", "datafeeds"], ["-m", "agents.inspect", "models/agent1.onnx"],
                                  ["-m", "agents.train", "--list-features"]])
def test_output_into_a_closed_pipe_ends_quietly(argv):
    # `... | head -2`: the reader goes away before the command has written everything (run_backtest.py:
    # tests/test_run_backtest.py)
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1 and err == "", err


def test_run_command_reports_input_errors_in_one_line(capsys):
    def usage(argv):
        raise UsageError(f"--x {argv[0]}: must be positive\x1b[2J")

    assert run_command(usage, ["-1"]) == 2
    assert capsys.readouterr().err == "error: --x -1: must be positive\\x1b[2J\n"  # terminal controls escaped

    def bad_data(argv):
        raise DataError("'1,5' is not a number", file="a.csv", row="line 3", column="close", fix="use a '.'")

    assert run_command(bad_data, []) == 2
    assert capsys.readouterr().err == "error: a.csv, line 3, column 'close': '1,5' is not a number; fix: use a '.'\n"


def test_run_command_passes_the_arguments_and_the_status_and_lets_bugs_through(monkeypatch):
    seen = []
    assert run_command(lambda argv: seen.append(argv) or 3, ("a", "b")) == 3
    monkeypatch.setattr(sys, "argv", ["prog", "--flag"])
    assert run_command(lambda argv: seen.append(argv) or 0) == 0
    assert seen == [["a", "b"], ["--flag"]]  # a list; sys.argv[1:] by default

    def bug(argv):
        raise ValueError("a bug, not an input error")

    with pytest.raises(ValueError, match="a bug"):
        run_command(bug, [])
    with pytest.raises(SystemExit):  # --help and argparse's errors exit as argparse decides
        run_command(lambda argv: ArgumentParser(prog="p").parse_args(argv), ["--help"])
