"""Child processes that end with their parent, even when it is SIGKILLed.

A scanning worker or a parser sandbox busy in C code never reads its pipe, so
it would not notice its parent's death and would run on for its whole budget,
or for ever. Linux's parent-death signal makes the kernel end it instead.

The chain after a SIGKILL of the milter: its forkserver gets the signal (it
imports :mod:`mailward.forkserver_guard` at start), the forkserver's workers
get it in turn, each parser sandbox with its worker; the resource tracker then
reads end-of-file from every holder of its pipe and exits by itself. Without
this, every worker holds the forkserver's "alive" pipe open, so the forkserver,
the workers and the tracker all outlived the milter.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1           # <linux/prctl.h>


def die_with_parent() -> None:
    """Ask for SIGKILL when the parent dies; exit now if it already has.

    The signal fires when the thread that forked us ends, so call this only in
    children forked by a parent's long-lived main thread (the forkserver, a worker).
    """
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot ask for a parent-death signal (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:      # orphaned before the request took effect
        os._exit(1)
