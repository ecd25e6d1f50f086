"""This process's resident memory from /proc/self/status, shared by the CPU benchmarks.

``reset_peak()`` lowers VmHWM to the current RSS (writing "5" to /proc/self/clear_refs, Linux >= 4.0),
so the ``peak_bytes()`` read afterwards belongs to the work in between and not to what ran before.
"""

from __future__ import annotations


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
