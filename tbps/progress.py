"""Progress bars that stay readable in log files.

On a terminal this is a normal tqdm bar. When stderr is a file (every Snakemake
rule redirects to its log) the bar is printed as a plain line at most every 30 s,
instead of thousands of carriage-return updates on one line.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _LineWriter:
    """A file-like object that turns tqdm's carriage-return refreshes into separate lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr, log-friendly when stderr is not a terminal."""
    stream = sys.stderr
    if not stream.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs["file"] = _LineWriter(stream)
        kwargs.setdefault("ncols", 100)
    else:
        kwargs.setdefault("file", stream)
    return tqdm(iterable, **kwargs)
