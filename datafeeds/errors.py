"""The one exception type for bad input data: `DataError`."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data, reported on one line: file, row, column, problem and how to fix it.

    The parts are also kept as attributes so callers can act on them without parsing text.
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
        super().__init__(_one_line(_format(problem, file, row, column, fix)))


def _format(problem: str, file: str | None, row: str | None, column: str | None, fix: str | None) -> str:
    where = [part for part in (file, row, None if column is None else f"column {column!r}") if part]
    text = f"{', '.join(where)}: {problem}" if where else problem
    return f"{text}; fix: {fix}" if fix else text


def _one_line(text: str) -> str:
    # File names and cell values can carry line breaks; a log line or a test match must not.
    return " ".join(text.splitlines())
