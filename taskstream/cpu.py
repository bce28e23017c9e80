"""CPU priority of our own processes (Linux; elsewhere `os.nice` only)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


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
        Path("/proc/self/autogroup").write_text(str(niceness))
