"""What every command line of the project shares: the argument parser with one-line errors, ``UsageError``
and ``run_command``, which runs a command's body with the common error and broken-pipe handling.

Each command (``engine.backtest_cli``, ``agents.training.cli``, ``agents.artifact.inspect``,
``engine.walkforward.cli``, ``datafeeds.__main__``) is written the same way (``engine.walkforward.cli`` runs as
``python -m engine.walkforward``, through its package's ``__main__``)::

    def build_parser() -> ArgumentParser: ...          # the options; defaults without heavy imports

    def main(argv: list[str] | None = None) -> int:     # [project.scripts] and `python -m` call this
        return run_command(_main, argv)

    def _main(argv: list[str]) -> int:
        args = build_parser().parse_args(argv)          # argparse errors: one line, exit 2
        ...check every option (raise UsageError)...     # before any work; then the heavy imports
        ...work, print...
        return 0

    if __name__ == "__main__":
        sys.exit(main())

Light on purpose (argparse, difflib, re): every command imports it before parsing its arguments.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence

from datafeeds.errors import DataError, escape


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (exit 2) pointing at ``--help``, with a suggestion
    for a misspelt option, instead of the whole usage block."""

    def error(self, message):
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            opts = [s for a in self._actions for s in a.option_strings]
            hints = []
            for word in (w for w in m.group(1).split() if w.startswith("-")):
                close = difflib.get_close_matches(word.split("=")[0], opts, n=1)
                if close:
                    hints.append(f"{word}: did you mean {close[0]!r}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(ValueError):
    """A bad option or input found by a command; ``run_command`` reports it as one line with exit status 2."""


def run_command(body: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """``body(argv)``'s exit status (``argv``: ``sys.argv[1:]`` when None), with what every command shares:

    - a ``UsageError`` or ``DataError`` (the project's input errors) is one line ``error: <message>`` on stderr,
      terminal control characters escaped, and exit status 2;
    - output into a pipe whose reader went away (``| head``) ends quietly with status 1, not a traceback.

    Anything else propagates: a bug stays a traceback, ``SystemExit`` (``--help``, argparse errors) passes through.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return body(argv)
    except (UsageError, DataError) as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output was piped into a command that stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
