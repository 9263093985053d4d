"""Stop and reload signals, taken by the milter's own threads and never by libmilter's.

libmilter's signal thread waits (``sigwait``) on SIGHUP, SIGTERM and SIGINT and
stops libmilter for good on any of them: libmilter cannot start twice in one
process. Linux gives a signal sent to the process to the main thread when that
thread *wants* it: it does not block it, and it is running or has no signal
pending already. Otherwise the kernel tries the threads in the order they were
started, from the one it chose last, and the first that wants it takes it; that
may be libmilter's signal thread. Hence:

- SIGUSR1 reloads: libmilter never waits on it, so whichever thread takes it,
  Python's handler runs (the reload the service unit sends, as OpenDKIM does).
- Once libmilter runs, the main thread blocks no signal, even for a moment: it
  starts no thread (glibc's ``pthread_create`` blocks every signal in the calling
  thread around ``clone``) and no process (CPython's ``vfork`` path blocks every
  signal until the child runs ``exec``; multiprocessing's resource tracker blocks
  SIGINT and SIGTERM while it starts). It only waits for signals; reloads run in
  a thread of their own.
- Stand-in threads, started just before libmilter's, sleep until the stop and
  want every signal: whichever thread the kernel's search starts from, it reaches
  them before libmilter's signal thread (the reload thread, which blocks signals
  while it starts workers, comes before them). They take a signal when the main
  thread has another one pending and has not yet run (different signals in quick
  succession under load). A thread with any signal pending wants no other until
  it runs, and on a loaded host a burst (a hundred reloads sent in a loop) can
  leave the main thread and every stand-in waiting for a CPU: with three of them,
  4 runs of the burst test in 30 handed a SIGHUP to libmilter, with 16 2 in 45,
  with 64 none in 30. So there are :data:`STAND_INS` of them, a sleeping thread each.
- libmilter's threads block SIGUSR1 as well, so the kernel's search never rests
  on one of them.

A SIGHUP or SIGTERM can then reach libmilter only if the main thread and every
stand-in were woken for other signals and none has run since; the daemon exits
with EX_TEMPFAIL then.

The handlers take no lock: they append the signal's number to a deque, and the C
handler wakes the main thread through a socket. A handler that set an Event would
deadlock when a signal came while the main thread held that Event's lock, or
while it ran the handler for the previous signal of a burst.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
from collections import deque

RELOAD_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGHUP})
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
STAND_INS = 64  # threads that only take signals (see the module docstring)


class Signals:
    """The stop and reload signals of the milter process, turned into its stop and reload events."""

    def __init__(self, stop: threading.Event, reload: threading.Event) -> None:
        self.stop = stop
        self.reload = reload
        self.asked_to_stop = threading.Event()  # a stop signal arrived (not libmilter ending by itself)
        self._received: deque[int] = deque()
        self._wake, self._waker = socket.socketpair()
        for end in (self._wake, self._waker):
            end.setblocking(False)

    def take(self) -> None:
        """Install the handlers (in the main thread, before any other thread of ``serve`` starts)."""

        def received(number: int, _frame: object) -> None:
            self._received.append(number)

        signal.set_wakeup_fd(self._waker.fileno(), warn_on_full_buffer=False)
        for number in RELOAD_SIGNALS | STOP_SIGNALS:
            signal.signal(number, received)

    def start_stand_ins(self) -> None:
        """Start the stand-in threads: the last threads the main thread starts before libmilter's."""
        for _ in range(STAND_INS):
            threading.Thread(target=self.stop.wait, name="signals", daemon=True).start()

    def serve(self, poll: float = 0.2) -> None:
        """Turn signals into the events until the stop: the main thread's only work while libmilter runs.

        ``poll`` bounds how long a stop that libmilter's end asked for waits to be seen.
        """
        while not self.stop.is_set():
            select.select([self._wake], [], [], poll)
            try:
                self._wake.recv(4096)
            except BlockingIOError:
                pass
            while self._received:
                number = self._received.popleft()
                if number in STOP_SIGNALS:
                    self.asked_to_stop.set()
                    self.stop.set()
                else:
                    self.reload.set()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._wake.close()
        self._waker.close()


def keep_signals_from_this_thread() -> None:
    """Block the stop and reload signals in the calling thread (libmilter's), and so in every
    thread it starts; libmilter's signal thread still waits on its three."""
    signal.pthread_sigmask(signal.SIG_BLOCK, RELOAD_SIGNALS | STOP_SIGNALS)
