"""Processes we fork die with the process that forked them, however it dies (Linux's PR_SET_PDEATHSIG).

Why: a killed command or task (`kill -9`, a preempted VM) must not leave orphans that go on writing into the
folder or bucket prefix its retry resumes: training workers, transfer workers of `data upload|download`, the
checking workers of verify-data. Torch-free, so the cloud adapters and every image can use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when `parent` (the pid that started it) dies; a process pool's
    initializer, or the first call of a spawned worker. Not glibc/Linux: no such call (a normal exit of the
    parent still ends its pools)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)
