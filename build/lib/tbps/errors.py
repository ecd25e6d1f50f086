"""Errors a user can act on.

Stages raise :class:`UserInputError` for anything caused by input files or
settings; the CLI prints the message (which names the file, the record and the
fix) without a traceback and exits with status 2.
"""

import re

# How torch re-raises an exception from a DataLoader worker: the same type, built from
# "Caught X in DataLoader worker process N.\nOriginal Traceback ...\n<module>.X: <message>".
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_LAST_MESSAGE = re.compile(r"\n[\w.]*UserInputError: ")


class UserInputError(Exception):
    """Bad input or configuration; the message tells the user what to change."""

    def __init__(self, message: str = "", *args):
        if isinstance(message, str) and _WORKER_WRAPPER.match(message):
            # Keep the message the worker raised, not the worker's traceback text.
            parts = _LAST_MESSAGE.split(message)
            if len(parts) > 1:
                message = parts[-1].rstrip("\n")
        super().__init__(message, *args)


def input_error(path, problem: str, fix: str, record: int | str | None = None) -> UserInputError:
    """Build an error message of the shape ``FILE[, record N]: PROBLEM. Fix: FIX``."""
    where = str(path)
    if record is not None:
        where += f", record {record}"
    return UserInputError(f"{where}: {problem}. Fix: {fix}")
