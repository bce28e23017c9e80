"""CPU priority of our own processes (Linux; elsewhere `os.nice` only)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")


def lower_cpu_priority(niceness: int) -> None:
    """Nice this process; if it leads its own session, its autogroup too.

    With the kernel's autogroup scheduling (sched_autogroup_enabled, on in
    most desktop and container kernels), CPU is shared fairly between
    sessions first and a process's nice value only counts inside its
    session: the worker starts the API process in a session of its own, so
    the session's nice (/proc/self/autogroup) is what yields to the worker.
    """
    os.nice(niceness)
    if os.getsid(0) != os.getpid():
        return  # run by hand from a shell: do not nice the whole terminal session
    # No autogroup scheduling here (OSError): os.nice is all there is.
    with contextlib.suppress(OSError):
        AUTOGROUP.write_text(str(niceness))


def autogroup_nice() -> int | None:
    """This process's autogroup niceness, or None where autogroups do not apply.

    The kernel prints "/autogroup-<id> nice <n>" only for a task that is in
    an autogroup; a task inside a cgroup of its own (a CI runner, a systemd
    unit, a container) reads an empty file, and kernels built without
    autogroups have no file at all.
    """
    try:
        fields = AUTOGROUP.read_text().split()
    except OSError:
        return None
    if len(fields) != 3 or fields[1] != "nice":
        return None
    return int(fields[2])
