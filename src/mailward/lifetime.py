"""Child processes that end with the milter, even when it is SIGKILLed.

Every scanning worker holds the forkserver's "alive" pipe open, so after a
SIGKILL of the milter the forkserver, a busy worker (one in C code never
reads its pipe) and the resource tracker used to run on. Now the chain is:
the forkserver watches the milter's pid (it imports
:mod:`mailward.forkserver_guard` at start) and exits with it; each worker has
asked the kernel for a parent-death signal, so it dies with the forkserver;
the resource tracker then reads end-of-file from every holder of its pipe and
exits by itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import threading

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Ask the kernel for SIGKILL when the parent dies; exit now if it already has.

    The signal fires when the *thread* that forked us ends, so this suits only
    children forked by a long-lived main thread, as the forkserver's workers are.
    """
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot ask for a parent-death signal (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:  # orphaned before the request took effect
        os._exit(1)


def exit_with_parent() -> None:
    """Exit as soon as the parent process ends, whichever of its threads started us.

    A thread waits on a pidfd of the parent; this suits a process whose main
    thread waits in a system call (the forkserver), so the watcher gets the GIL.
    """
    parent = os.getppid()
    try:
        watched = os.pidfd_open(parent)
    except OSError:  # kernel before 5.3: the parent-death signal is the fallback
        die_with_parent()
        return
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        select.select([watched], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="mailward-exit-with-parent", daemon=True).start()
