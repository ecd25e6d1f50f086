"""tbps.progress: sparse lines in a log file (not a terminal), nothing at --log-level WARNING."""

import io
import sys

import pytest

import tbps.progress as progress_module
from tbps.cli import main
from tbps.progress import progress, show_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def shown():
    """Bars on (the default), whatever a test switched."""
    show_progress(True)
    yield
    show_progress(True)


@pytest.fixture
def log_file(capsys):
    """stderr as a rule's `> log 2>&1` gives it to a job: not a terminal (pytest's capture)."""
    assert not sys.stderr.isatty()
    return lambda: capsys.readouterr().err


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module, "monotonic", fake)
    return fake


def train_like_loop(steps: int, clock: Clock, seconds_per_step: float) -> None:
    """What `tbps train` does per step: a new postfix (which asks tqdm to refresh), then update."""
    bar = progress(total=steps, desc="epoch 1/1", mininterval=0)
    for step in range(steps):
        clock.now += seconds_per_step
        bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}")
        bar.update(1)
    bar.close()


def test_a_postfix_per_step_does_not_write_a_line_per_step(log_file, clock):
    # 252 steps in about a minute: the demo's training epoch (before: 301 lines).
    train_like_loop(252, clock, seconds_per_step=0.25)
    lines = log_file().splitlines()
    # The first line, one per 10 % done, the final one; and one every 30 s (63 s here: 2 more).
    assert 10 <= len(lines) <= 14, lines
    assert lines[0].startswith("epoch 1/1:   0%")
    assert "252/252" in lines[-1] and "loss=0.004" in lines[-1]
    assert all("\r" not in line for line in lines)
    # Each line is the bar at that moment, with the latest postfix.
    assert sum("loss=" in line for line in lines) == len(lines) - 1


def test_a_long_run_writes_a_line_every_interval(log_file, clock):
    # 100 steps of 10 s: a line every 30 s (every 3 steps), more often than every 10 %.
    train_like_loop(100, clock, seconds_per_step=10.0)
    lines = log_file().splitlines()
    assert 33 <= len(lines) <= 36, len(lines)
    assert "100/100" in lines[-1]


def test_a_fast_loop_writes_the_first_and_the_final_line(log_file, clock):
    for _ in progress(range(5000), desc="synth", unit="img"):
        pass  # the clock stands still: no interval passes, tqdm refreshes at most every 0.5 s
    lines = log_file().splitlines()
    assert len(lines) <= 12
    assert lines[0].startswith("synth:   0%") and "5000/5000" in lines[-1]


def test_log_level_warning_hides_the_bar(log_file, tmp_path):
    raw = tmp_path / "raw"
    assert main(["--log-level", "WARNING", "synth", "--format", "cuhk-pedes", "--out", str(raw), "--ids", "2"]) == 0
    assert (raw / "reid_raw.json").is_file()
    assert "synth cuhk-pedes" not in log_file()
    assert main(["synth", "--format", "cuhk-pedes", "--out", str(tmp_path / "again"), "--ids", "2"]) == 0
    assert "synth cuhk-pedes" in log_file()  # the default level, INFO, shows it


def test_a_terminal_gets_the_normal_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress(total=3, desc="t", mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in terminal.getvalue()  # redrawn in place, not one line per update
