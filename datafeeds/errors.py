"""The one exception type for bad input data: `DataError`."""

from __future__ import annotations

import difflib
import re

# Characters a terminal acts on or hides: C0/C1 controls (ESC starts colour and cursor sequences), DEL,
# line/paragraph separators and bidirectional overrides (they reorder what is shown). Printed escaped.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class DataError(ValueError):
    """Bad input data, reported on one line: file, row, column, problem and how to fix it.

    The parts are also kept as attributes (unescaped) so callers can act on them without parsing text.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        row: str | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.row = row
        self.column = column
        self.fix = fix
        shown = None if file is None else escape(str(file))
        super().__init__(escape(_one_line(_format(problem, shown, row, column, fix))))


def did_you_mean(word, options) -> str:
    """`` did you mean 'x'?`` for the option closest to ``word`` (difflib), or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" did you mean {close[0]!r}?" if close else ""


def escape(text: str) -> str:
    """``text`` with terminal control characters written as Python escapes (``\\x1b``, ``\\n``, ``\\u202e``)."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


def _format(problem: str, file: str | None, row: str | None, column: str | None, fix: str | None) -> str:
    where = [part for part in (file, row, None if column is None else f"column {column!r}") if part]
    text = f"{', '.join(where)}: {problem}" if where else problem
    return f"{text}; fix: {fix}" if fix else text


def _one_line(text: str) -> str:
    # Cell values and explanations can carry line breaks; a log line or a test match must not.
    return " ".join(text.splitlines())
