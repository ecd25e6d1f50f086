"""Errors a user can act on.

Stages raise :class:`UserInputError` for anything caused by input files or
settings; the CLI prints the message (which names the file, the record and the
fix) without a traceback and exits with status 2.
"""


class UserInputError(Exception):
    """Bad input or configuration; the message tells the user what to change."""


def input_error(path, problem: str, fix: str, record: int | str | None = None) -> UserInputError:
    """Build an error message of the shape ``FILE[, record N]: PROBLEM. Fix: FIX``."""
    where = str(path)
    if record is not None:
        where += f", record {record}"
    return UserInputError(f"{where}: {problem}. Fix: {fix}")
