"""Progress bars that stay readable in log files.

On a terminal this is a normal tqdm bar. When stderr is not a terminal (every Snakemake rule
redirects it to the job's log) the bar becomes plain lines: the first one, then one whenever
``LOG_INTERVAL_S`` seconds have passed or another ``LOG_PERCENT_STEP`` percent is done since
the last line, and the final one. A postfix update (the training loss of each step) only
changes what the next line shows: it never forces a line of its own. ``tbps --log-level WARNING``
(or ERROR) turns the bars off (``show_progress``).
"""

from __future__ import annotations

import sys
from time import monotonic

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
LOG_PERCENT_STEP = 10.0
_visible = True


def show_progress(visible: bool) -> None:
    """Draw progress bars (the default) or not; the CLI turns them off above log level INFO."""
    global _visible
    _visible = visible


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


class _LogBar(tqdm):
    """tqdm for a log file: every refresh goes through ``display``, which writes a line only when
    one is due (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        self._line_at_n: float | None = None
        self._line_at_t = 0.0
        self._closing = False
        super().__init__(*args, **kwargs)

    def _line_due(self) -> bool:
        if self._line_at_n is None:
            return True
        if self._closing:
            return self.n != self._line_at_n
        if monotonic() - self._line_at_t >= LOG_INTERVAL_S:
            return True
        return bool(self.total) and (self.n - self._line_at_n) * 100.0 >= LOG_PERCENT_STEP * self.total

    def display(self, msg=None, pos=None):
        if msg is None and not self._line_due():
            return True
        self._line_at_n, self._line_at_t = self.n, monotonic()
        return super().display(msg, pos)

    def close(self) -> None:
        self._closing = True
        super().close()


def progress(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr: a bar on a terminal, sparse lines in a log file, nothing
    after ``show_progress(False)``."""
    stream = sys.stderr
    if not _visible:
        kwargs["disable"] = True
    if stream.isatty():
        kwargs.setdefault("file", stream)
        return tqdm(iterable, **kwargs)
    kwargs["file"] = _LineWriter(stream)
    # tqdm checks often; _LogBar.display decides which refreshes become lines.
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("ncols", 100)
    return _LogBar(iterable, **kwargs)
