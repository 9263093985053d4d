"""Sliding-window counters in memory, flushed to the incident store in the background.

Counting a message must cost no database call: a relay's every message used to
INSERT a row and SUM its sender's window. So each host counts in memory, per
(kind, subject) and :data:`~.store.BUCKET`-second bucket, and a flusher hands
the counts to the store every ``incidents.flush_interval`` seconds in one
transaction (one upserted row per kind, subject and bucket), reading back the
window sums of every host for the subjects it flushed. A message's window sum
is those shared sums as of the last flush plus this host's counts since, so
hosts on one PostgreSQL database see each other within one interval.

Memory sums only decide whether to look closer: a limit reached in memory is
settled against the store (:meth:`WindowCounts.settle`) before anyone is
suspended, so a stale sum (a lift, a block that ended, a window that moved on)
never suspends.

A crash loses at most one interval of counts (counters, never mail); a clean
stop or reload flushes. A store that does not answer keeps the counts here
(retried every interval) up to :data:`MAX_SUBJECTS` subjects, the oldest
forgotten first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .records import Counter, Totals
from .store import BUCKET, Count, CountKey, IncidentStore, IncidentStoreError, bucket_of

log = logging.getLogger(__name__)

MAX_SUBJECTS = 100_000  # subjects held in memory (~0.5 KiB each); beyond, the least recently counted goes

_Sums = list[int]  # messages, recipients, spam, malware, auth_failures: added to in place


def _sums(totals: Totals) -> _Sums:
    return [totals.messages, totals.recipients, totals.spam, totals.malware, totals.auth_failures]


def _add(into: _Sums, more: _Sums) -> None:
    for i, value in enumerate(more):
        into[i] += value


@dataclass
class _Held:
    """One subject: every host's window sums at the last flush, and this host's counts not in them."""

    shared: _Sums | None = None  # None: not read back yet (a new subject, or its kind is not summed)
    pending: dict[float, _Sums] = field(default_factory=dict)  # per bucket, not yet handed to the store
    flushing: dict[float, _Sums] = field(default_factory=dict)  # per bucket, in the store's hands right now
    counted_at: float = 0.0


class WindowCounts:
    """This host's counts per (kind, subject) on top of every host's sums as of the last flush.

    ``windows``: seconds each summed kind looks back (kinds without a limit are
    written but never summed). Thread-safe; :meth:`add` takes a lock for microseconds.
    """

    def __init__(
        self,
        store: IncidentStore,
        windows: Mapping[Counter, float],
        clock: Callable[[], float] = time.time,
        max_subjects: int = MAX_SUBJECTS,
    ):
        self._store = store
        self._windows = dict(windows)
        self._clock = clock
        self._max = max_subjects
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: the flusher's, or a settle's
        self._held: OrderedDict[CountKey, _Held] = OrderedDict()
        self.forgotten = 0  # subjects dropped with counts the store never got (memory bound)

    def add(self, kind: Counter, subject: str, added: Totals, since: float | None) -> Totals:
        """Count ``added`` now; the window sums since ``since`` as far as this host knows (None: no sum)."""
        now = self._clock()
        bucket = bucket_of(now)
        key = (kind, subject)
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held()
                if len(self._held) > self._max:
                    self._forget_oldest()
            else:
                self._held.move_to_end(key)
            held.counted_at = now
            counts = held.pending.get(bucket)
            if counts is None:
                held.pending[bucket] = _sums(added)
            else:
                _add(counts, _sums(added))
            if since is None:
                return added
            return Totals(*self._window(held, since))

    def _window(self, held: _Held, since: float) -> _Sums:
        """Shared sums plus this host's counts not yet in them (caller holds the lock)."""
        total = list(held.shared) if held.shared is not None else [0, 0, 0, 0, 0]
        for part in (held.flushing, held.pending):
            for bucket, counts in part.items():
                if bucket > since:  # as the store sums (IncidentStore.add_counts)
                    _add(total, counts)
        return total

    def _forget_oldest(self) -> None:
        """Make room: the least recently counted subject goes (usually flushed long ago: nothing lost)."""
        _, oldest = self._held.popitem(last=False)
        if oldest.pending:  # counts in flight ("flushing") still reach the store
            self.forgotten += 1

    def flush(self, read: tuple[CountKey, ...] = (), timeout: float | None = None) -> dict[CountKey, Totals]:
        """Hand this host's counts to the store; every host's sums for the subjects flushed (and ``read``).

        On a store error the counts stay here for the next flush, and IncidentStoreError is raised.
        """
        wait = self._store.timeout if timeout is None else timeout
        if not self._flushing.acquire(timeout=wait):
            raise IncidentStoreError(f"another flush of the incident counters took more than {wait:g} s")
        try:
            return self._flush(read)
        finally:
            self._flushing.release()

    def _flush(self, read: tuple[CountKey, ...]) -> dict[CountKey, Totals]:
        now = self._clock()
        batch: list[Count] = []
        with self._lock:
            for (kind, subject), held in self._held.items():
                if held.pending:
                    held.flushing, held.pending = held.pending, {}
                    batch.extend((kind, subject, b, Totals(*c)) for b, c in held.flushing.items())
        since = {kind: now - window for kind, window in self._windows.items()}
        try:
            sums = self._store.add_counts(batch, since, read)
        except IncidentStoreError:
            with self._lock:
                for held in self._held.values():
                    if held.flushing:
                        for bucket, counts in held.flushing.items():
                            _add(held.pending.setdefault(bucket, [0, 0, 0, 0, 0]), counts)
                        held.flushing = {}
                self._drop_old(now)
            raise
        with self._lock:
            for key, held in self._held.items():
                held.flushing = {}
                totals = sums.get(key)
                if totals is not None:
                    held.shared = _sums(totals)
            self._drop_old(now)
        return sums

    def _drop_old(self, now: float) -> None:
        """Forget subjects whose last count is outside every window, and flushed subjects of kinds
        never summed (no limit on: nothing to remember between flushes). Caller holds the lock."""
        stale = now - max(self._windows.values(), default=0.0) - BUCKET
        for key in [
            key
            for key, held in self._held.items()
            if not held.flushing and (held.counted_at < stale or (key[0] not in self._windows and not held.pending))
        ]:
            del self._held[key]

    def settle(self, kind: Counter, subject: str) -> Totals:
        """The sums as the store has them, after this host's counts went in: what a suspension rests on."""
        key = (kind, subject)
        sums = self.flush(read=(key,))
        if key not in sums:
            raise IncidentStoreError(f"no window is counted for {kind.value} counters")
        return sums[key]

    def held(self) -> int:
        """How many subjects this host holds counts for."""
        with self._lock:
            return len(self._held)

    @property
    def flushing(self) -> bool:
        """A flush is in the store's hands right now (a stalled store keeps it there)."""
        return self._flushing.locked()


class Flusher:
    """The thread that flushes a :class:`WindowCounts` every ``interval`` seconds, and once more at stop.

    ``checked`` sees the sums read back, so a limit reached by several hosts
    together is acted on within one interval. A store that does not answer is
    retried each interval; its failure is logged once, and its recovery.
    """

    def __init__(
        self,
        counts: WindowCounts,
        interval: float,
        checked: Callable[[dict[CountKey, Totals]], None],
        prune: Callable[[], None],
    ):
        self._counts = counts
        self._interval = interval
        self._checked = checked
        self._prune = prune
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="incident-flush", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread unless it runs (the first message counted starts it)."""
        with self._lock:
            if not self._started and not self._stop.is_set():
                self._started = True
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush_once()
            self._prune()

    def flush_once(self) -> bool:
        """One flush and its check; False when the store did not take the counts."""
        try:
            sums = self._counts.flush()
        except IncidentStoreError as exc:
            if not self._failing:
                log.error("cannot flush the incident counters (kept in memory, retried): %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("incident counters flushed again")
        self._failing = False
        if self._counts.forgotten:
            log.warning("%d subjects' counts were dropped while the store was away", self._counts.forgotten)
            self._counts.forgotten = 0
        try:
            self._checked(sums)
        except Exception:
            log.exception("cannot check the flushed incident counters")
        return True

    def close(self, timeout: float) -> None:
        """Stop the thread and flush what is left (bounded by ``timeout``): a clean stop drops no count."""
        with self._lock:
            self._stop.set()
            started = self._started
        if started:
            self._thread.join(timeout)
        if not self.flush_once():
            log.error("incident counters of the last %g s could not be flushed at stop", self._interval)
