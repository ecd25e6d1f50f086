"""Resident memory from /proc/<pid>/status, and a child command's peak, shared by the CPU benchmarks.

``reset_peak()`` lowers VmHWM to the current RSS (writing "5" to /proc/self/clear_refs, Linux >= 4.0),
so the ``peak_bytes()`` read afterwards belongs to the work in between and not to what ran before.
"""

from __future__ import annotations

import os
import subprocess
import time


def status_kib(field: str, pid: int | str = "self") -> int:
    """One ``kB`` field of /proc/<pid>/status (``VmRSS``, ``VmHWM``, ``RssAnon``, ...); this process by default."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def reset_peak() -> int:
    """Reset the peak to the current resident set and return that resident set in bytes."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """The process's peak resident set since the last ``reset_peak()`` (or its start)."""
    return status_kib("VmHWM") * 1024


def measured_child(command: list[str], **popen_kwargs) -> dict:
    """Run ``command`` (stdout discarded); its wall time, CPU time and peak RSS (wait4's rusage).

    stderr is read to the end before waiting, so a child that logs a lot (progress bars) cannot block on
    a full pipe; its tail goes into the error when the command fails.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen_kwargs)
    with process.stderr:
        stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{stderr.decode(errors='replace')[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "max_rss_mib": usage.ru_maxrss / 1024}
