"""The command lines' argument parser: argparse with one-line errors, shared by every CLI of the project."""

from __future__ import annotations

import argparse
import difflib
import re


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
