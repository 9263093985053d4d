"""Screening processes, so CPU-heavy work uses every core and the milter process stays thin.

libmilter runs one thread per MTA connection and Python work serialises on the
GIL, so each message is screened whole in a worker process: scanned, decided,
stored (durable before the worker answers), counted and logged, by a runtime
of the worker's own built from the same settings (``runtime.build_runtime``).
The milter hands over the raw bytes and the envelope and gets back a slim
outcome: what it applies to the message and counts in its metrics. The pool is our own
rather than ``concurrent.futures``: a worker stuck on hostile input past the
message deadline is killed and replaced on its own, and a reload swaps in
workers built from the new settings while in-flight scans finish on the old
ones. Workers start with ``forkserver`` because forking a process that already
runs libmilter's threads is unsafe.

Hostile mail must not starve everyone else: each scan runs under a CPU limit
(``RLIMIT_CPU``: the kernel stops the worker even inside C code that never
returns to Python), and waiting scans are served per client in round-robin,
with no client holding every worker while another client waits.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import pickle
import resource
import signal
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from .config import Settings
from .envelope import Envelope
from .errors import ScanFailed, StoreError
from .evidence import NOTHING_KNOWN, Category, Evidence, Finding, Severity
from .lifetime import die_with_parent
from .source import MessageSource
from .verdict import Outcome, Relayed

if TYPE_CHECKING:
    from .pipeline import Inspector
    from .runtime import Runtime

log = logging.getLogger(__name__)


class Flag(Protocol):
    """A byte in memory shared with one worker (``RawValue("b")``)."""

    value: int


# After the write deadline: the quarantine store's commit grace (0.5 s) and the answer's trip back.
ANSWER_GRACE = 0.75
STOP_GRACE = 3.0  # seconds a stopping worker may take to flush its incident counters and close its stores


def _send(conn: Connection, message: object) -> None:
    """``conn.send`` with the C pickler: multiprocessing's ForkingPickler is built per message in Python."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    """What :func:`_send` sent, from our own process at the other end of the pipe."""
    return pickle.loads(conn.recv_bytes())


class _Announcing:
    """The worker's scanner: scans in process, then marks the scan done in memory the milter reads.

    The milter's wait for a worker has two parts, as the MTA's milter timeout does: the scan
    (``message_deadline``) and the store (``write_timeout``); this mark divides them. A flag in
    shared memory rather than a message: the milter reads it only when the scan's deadline passed,
    so an answer in time costs it one wake-up, not two.
    """

    def __init__(self, scanned: Flag):
        self.scanned = scanned
        self.inspector: Inspector | None = None

    def scan(self, source: MessageSource, envelope: Envelope) -> Evidence:
        if self.inspector is None:
            raise ScanFailed("no detectors loaded")
        evidence = self.inspector.inspect(source.read(), envelope)
        self.scanned.value = 1
        return evidence


def _worker_main(conn: Connection, settings: Settings, scanned: Flag) -> None:
    """Entry point of a screening process: build detectors and open stores once, then screen messages."""
    from .logs import configure_logging
    from .runtime import build_inspector

    die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core file would hold message content
    configure_logging(settings.logging)
    scanner = _Announcing(scanned)
    opening = _Opening(settings, scanner)  # the stores open while the detectors load
    failure = ""
    try:
        inspector = build_inspector(settings, start_sandbox=True)
    except Exception as exc:  # reported to the parent with every request instead of dying silently
        log.exception("worker could not load its detectors")
        inspector, failure = None, f"{type(exc).__name__}: {exc}"
    if inspector is not None:
        try:  # first-use costs (parser sandbox, archive and PDF code) paid here, not by a message
            inspector.inspect(_warm_up_message(), Envelope())
        except Exception:
            log.exception("warm-up scan failed")
    scanner.inspector = inspector
    runtime = opening.runtime()
    failure = failure or opening.failure
    try:
        try:
            _send(conn, ("loaded", failure))  # the pool hands out only workers that said so
        except (OSError, BrokenPipeError):
            return
        _serve(conn, settings, scanner, runtime if not failure else None, failure, opening.relayed)
    finally:
        if runtime is not None:
            runtime.close()  # flushes the incident counters: a graceful stop or a reload drops none


class _Opening:
    """The worker's runtime (stores, incident response, screener), opened on a thread of its own."""

    def __init__(self, settings: Settings, scanner: _Announcing):
        self.failure = ""
        self._runtime: Runtime | None = None
        self.relayed: Callable[[], Relayed] = tuple
        self._thread = threading.Thread(target=self._open, args=(settings, scanner), name="open-stores", daemon=True)
        self._thread.start()

    def _open(self, settings: Settings, scanner: _Announcing) -> None:
        from .runtime import build_worker_runtime

        try:
            self._runtime, self.relayed = build_worker_runtime(settings, scanner)
        except Exception as exc:
            log.exception("worker could not open its stores")
            self.failure = f"{type(exc).__name__}: {exc}"

    def runtime(self) -> Runtime | None:
        self._thread.join()
        return self._runtime


def _serve(
    conn: Connection,
    settings: Settings,
    scanner: _Announcing,
    runtime: Runtime | None,
    failure: str,
    relayed: Callable[[], Relayed],
) -> None:
    """Screen each message the milter sends until it closes the pipe; answer with the slim outcome."""
    from .logs import log_context

    while True:
        try:
            job = _recv(conn)
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if runtime is None or scanner.inspector is None:
            _send(conn, ("error", failure))
            continue
        _limit_cpu(settings.milter.cpu_budget)
        if job[0] == "scan":  # the detectors alone (ScanPool.scan)
            _, source, envelope = job
            with log_context(
                queue_id=envelope.queue_id, connection_id=envelope.connection_id, direction=envelope.direction.value
            ):  # worker-side lines name the message too
                try:
                    _send(conn, ("ok", scanner.inspector.inspect(source.read(), envelope)))
                except Exception as exc:
                    log.exception("scan failed")
                    _send(conn, ("error", type(exc).__name__))
            continue
        _, data, size, envelope, known, incident, started = job
        source = MessageSource(data=data) if isinstance(data, bytes) else MessageSource.spooled(Path(data), size)
        try:
            outcome = runtime.screener.screen(
                source, envelope, known or NOTHING_KNOWN, incident=incident, started=started
            )
        except Exception as exc:
            log.exception("screening failed")
            _send(conn, ("error", type(exc).__name__))
            continue
        _send(conn, ("ok", outcome.slim(), relayed()))


def _limit_cpu(seconds: float) -> None:
    """Let the next scan use ``seconds`` of CPU; past that the kernel's SIGXCPU ends this process.

    The soft limit counts from the CPU this worker has already used; the hard
    limit stays, so the parser sandbox started from here can lift the soft one.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _warm_up_message() -> bytes:
    """A small message with a zip and a one-page PDF: what a new worker scans before it serves."""
    import io
    import zipfile
    from email.message import EmailMessage

    pdf = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes.txt", "warm-up " * 100)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "warm-up@localhost", "warm-up@localhost", "warm-up"
    msg.set_content("warm-up text https://example.invalid/")
    msg.add_attachment(archive.getvalue(), maintype="application", subtype="zip", filename="notes.zip")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="page.pdf")
    return msg.as_bytes()


@dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    generation: int
    scanned: Flag  # set by the worker once the message in hand is scanned (_Announcing)
    # The milter's end of the pipe as a socket (Pipe() is a socketpair): one send and one
    # receive per message, where Connection polls and reads a header and a body apart.
    _sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self._sock = socket.socket(fileno=os.dup(self.conn.fileno()))

    def send(self, message: object) -> None:
        """``message`` in the frame the worker's ``Connection.recv_bytes`` reads, in one write when small."""
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        if len(payload) <= _SMALL_FRAME:
            self._sock.sendall(_FRAME.pack(len(payload)) + payload)
        else:
            self._sock.sendall(_FRAME.pack(len(payload)) if len(payload) < 2**31 else _HUGE.pack(-1, len(payload)))
            self._sock.sendall(payload)

    def receive(self, seconds: float) -> tuple[Any, ...] | None:
        """The worker's answer, or None if none began within ``seconds``. EOFError when the pipe closed.

        The kernel keeps the time (SO_RCVTIMEO): the first read waits and brings the whole of a
        small answer, with no poll before it.
        """
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        try:
            data = self._sock.recv(_READ)
        except BlockingIOError:
            return None
        if not data:
            raise EOFError("the scanning process closed its pipe")
        while len(data) < _FRAME.size:
            data += self._more()
        (size,) = _FRAME.unpack_from(data)
        head = _FRAME.size
        if size == -1:
            while len(data) < _HUGE.size:
                data += self._more()
            (_, size) = _HUGE.unpack_from(data)
            head = _HUGE.size
        chunks, have = [data[head:]], len(data) - head
        while have < size:  # the rest of a large answer, already on its way
            chunks.append(self._more())
            have += len(chunks[-1])
        answer: tuple[Any, ...] = pickle.loads(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        return answer

    def _more(self) -> bytes:
        """The rest of an answer the worker is writing; a worker that stops halfway counts as dead."""
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(REST_OF_ANSWER))
        try:
            data = self._sock.recv(_READ)
        except BlockingIOError:
            raise EOFError("the scanning process stopped halfway through its answer") from None
        if not data:
            raise EOFError("the scanning process closed its pipe mid-answer")
        return data

    def stop(self, grace: float = 0.0) -> None:
        """Close the pipe; a worker that is not broken gets ``grace`` seconds to flush its counters and
        close its stores on that EOF (:data:`STOP_GRACE`), then it is killed."""
        try:
            self.close_pipe()
        finally:
            if grace > 0:
                self.process.join(timeout=grace)
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)

    def close_pipe(self) -> None:
        """Both descriptors of the milter's end: the worker reads EOF only once neither is open."""
        try:
            self._sock.close()
        finally:
            self.conn.close()


_FRAME = struct.Struct("!i")  # multiprocessing.Connection's frame header: the length, big-endian
_HUGE = struct.Struct("!iQ")  # ... and for 2 GiB or more: -1, then the length in 8 bytes
_SMALL_FRAME = 16384  # up to this the header and the payload go in one write (as Connection does)
_READ = 65536  # bytes asked for per read: a whole answer but the rarest
REST_OF_ANSWER = 5.0  # seconds for the rest of an answer once its start arrived
_NOT_SENT: tuple[Any, ...] = ("not sent",)  # _exchange: the worker was dead before it got the job


def _timeval(seconds: float) -> bytes:
    """SO_RCVTIMEO's struct timeval; at least 1 ms, since zero would mean wait for ever."""
    micros = max(1000, math.ceil(seconds * 1_000_000))
    return struct.pack("ll", micros // 1_000_000, micros % 1_000_000)


def _stop_all(workers: list[_Worker], grace: float = STOP_GRACE) -> None:
    """Stop healthy ``workers`` together: each gets the same ``grace`` to flush, not one after the other."""
    for worker in workers:
        worker.close_pipe()
    ends = time.monotonic() + grace
    for worker in workers:
        worker.stop(max(0.0, ends - time.monotonic()) or 0.01)


def _taken_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Ticket:
    """One scan waiting for a worker in its client's lane.

    The waiter blocks on a lock taken at creation, released once by whoever grants it (a worker,
    or the pool closing): cheaper per hand-off than an Event's condition and waiter list.
    """

    client: str
    worker: _Worker | None = None
    _wake: threading.Lock = field(default_factory=_taken_lock)

    def grant(self) -> None:
        """Wake the waiter (with ``worker`` set, or None when the pool closed); once per ticket."""
        self._wake.release()

    def wait(self, timeout: float) -> bool:
        return self._wake.acquire(timeout=timeout)

    @property
    def granted_worker(self) -> _Worker:
        """The worker a granted ticket carries (ScanPool._acquire returns no other)."""
        if self.worker is None:
            raise ScanFailed("the scan pool closed")
        return self.worker


class ScanPool:
    """A fixed number of scanning processes shared fairly by all milter threads.

    Scans wait in one lane per client address. A free worker goes to the next
    lane in round-robin order, so a burst from one client takes turns with
    everyone else, and a client never holds more than ``client_share``
    workers (all but one, by default) while it has others in flight.

    Only loaded workers are handed out: a new worker (first start, replacement,
    reload) is idle only after it reported its detectors loaded, so no scan
    waits behind a model or rules load.
    """

    LOAD_TIMEOUT = 300.0  # seconds a new worker may take to load rules and model
    RESPAWN_DELAY = 5.0  # seconds between attempts to start a replacement worker
    # Imported once in the forkserver, so each new worker (start, replacement, reload) skips
    # the imports and only loads rules and model. Scoring imports no scikit-learn or scipy.
    PRELOAD = (
        "mailward.pipeline",
        "mailward.signatures",
        "mailward.models.spam",
        "mailward.reputation",
        # What _worker_main builds with: the composition root and the model-refusal alert it wires in.
        "mailward.runtime",
        "mailward.incidents.alerts",
        # The stores each worker opens to screen whole messages (quarantine, release marks, incidents).
        "mailward.quarantine",
        "mailward.quarantine.release",
        "mailward.incidents",
        # The in-process archive handlers (pyzipper alone: 0.2 s), which every warm-up scan imports.
        "mailward.unpack.zip",
        "mailward.unpack.tar",
        "mailward.unpack.compressed",
        "mailward.unpack.uuencode",
    )

    def __init__(
        self,
        settings: Settings,
        size: int,
        start_method: str = "forkserver",
        client_share: int | None = None,
        *,
        wait: bool = True,
    ):
        """``wait=False``: return at once and load the first workers in the background (the milter
        builds its runtime meanwhile); :meth:`wait_loaded` then says whether they loaded."""
        if size < 1:
            raise ValueError("a scan pool needs at least one worker")
        self._ctx = cast("ForkServerContext | SpawnContext | ForkContext", multiprocessing.get_context(start_method))
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload([f"{__package__}.forkserver_guard", *self.PRELOAD])
        self._size = size
        self._share = client_share or max(1, size - 1)
        self._settings = settings
        self._generation = 0
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._idle: list[_Worker] = []
        self._lanes: dict[str, deque[_Ticket]] = {}  # waiting scans per client; dict order is the turn
        self._busy: Counter[str] = Counter()  # scans in flight per client
        self._closed = False
        self._starting: set[_Worker] = set()  # spawned, load report not yet read: close() kills them
        self._load_failure: ScanFailed | None = None
        self._loading: threading.Thread | None = None
        if wait:
            self._idle.extend(self._start_loaded(settings, 0))
        else:
            self._loading = threading.Thread(
                target=self._load_first, args=(settings,), name="mailward-scan-load", daemon=True
            )
            self._loading.start()

    def _load_first(self, settings: Settings) -> None:
        try:
            workers = self._start_loaded(settings, 0)
        except ScanFailed as exc:
            self._load_failure = exc
            return
        with self._lock:
            kept = [w for w in workers if self._keep_idle(w)]
        _stop_all([worker for worker in workers if worker not in kept])

    def wait_loaded(self) -> None:
        """Return once the first workers have loaded; ScanFailed when they could not (nothing to scan with)."""
        if self._loading is not None:
            self._loading.join()
        if self._load_failure is not None:
            raise self._load_failure

    def _spawn(self, settings: Settings, generation: int) -> _Worker:
        parent, child = self._ctx.Pipe()
        scanned = cast("Flag", self._ctx.RawValue("b", 0))
        process = self._ctx.Process(
            target=_worker_main, args=(child, settings, scanned), name="mailward-scan", daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent, generation, scanned)
        with self._lock:
            if self._closed:  # close() has already taken the set: its loader reads EOF and stops it
                process.kill()
            else:
                self._starting.add(worker)
        return worker

    def _loaded(self, worker: _Worker) -> str:
        """Wait for a new worker's load report: "" when its detectors loaded, else why not."""
        try:
            if not worker.conn.poll(self.LOAD_TIMEOUT):
                return f"did not load within {self.LOAD_TIMEOUT:.0f} s"
            failure: str
            _status, failure = _recv(worker.conn)
            return failure
        except (EOFError, OSError) as exc:
            return f"died while loading ({type(exc).__name__})"
        finally:
            with self._lock:
                self._starting.discard(worker)

    def _start_loaded(self, settings: Settings, generation: int) -> list[_Worker]:
        """``size`` workers for ``settings``, loaded side by side; ScanFailed if any cannot load."""
        workers: list[_Worker] = []
        try:
            for _ in range(self._size):
                workers.append(self._spawn(settings, generation))
            failures = [failure for failure in map(self._loaded, workers) if failure]
        except Exception as exc:  # no process could be started (forkserver gone or killed mid-start, no memory)
            failures = [f"could not start: {type(exc).__name__}: {exc}"]
        if failures:
            for worker in workers:
                worker.stop()
            raise ScanFailed(f"scanning processes could not load: {failures[0]}")
        return workers

    def reload(self, settings: Settings) -> None:
        """Serve new scans with workers built from ``settings``, once all of them have loaded.

        The old workers serve until then; if the new ones cannot load, ScanFailed
        is raised and the old ones stay. Busy old workers retire when done.
        """
        with self._lock:
            generation = self._generation + 1
        fresh = self._start_loaded(settings, generation)
        with self._lock:
            if self._closed:
                stale = fresh
            else:
                self._settings, self._generation = settings, generation
                stale, self._idle = self._idle, fresh
                self._dispatch()
        _stop_all(stale)

    def idle_pids(self) -> list[int]:
        """Process IDs of the workers waiting for a scan (for memory figures and process checks)."""
        with self._lock:
            return [worker.process.pid for worker in self._idle if worker.process.pid is not None]

    def in_flight(self, client: str) -> int:
        """Scans of ``client`` holding a worker right now (what ``client_share`` bounds); read-only."""
        with self._lock:
            return self._busy.get(client, 0)

    def _replace(self, settings: Settings, generation: int) -> None:
        """Start a worker in place of a broken one; it joins the idle set once loaded.

        Tried until one starts and loads, or the pool closes or reloads: a pool that only shrinks
        ends in deadline verdicts for all mail. A start may fail with any exception (a forkserver
        killed mid-handshake raises EOFError, which ended this thread and, after two such kills,
        the pool), and a replacement may die while loading (its forkserver killed under it): both
        are tried again. One that loads but reports a failure is kept: it answers with errors, so
        ``on_error`` applies and nothing passes unchecked.
        """
        while True:
            try:
                worker = self._spawn(settings, generation)
            except Exception:
                log.exception("could not start a replacement scanning process; retrying")
            else:
                failure = self._loaded(worker)
                worker.process.join(0.5 if failure else 0)
                if not failure or worker.process.exitcode is None:
                    with self._lock:
                        kept = self._keep_idle(worker)
                    if not kept:  # the pool closed or reloaded meanwhile (its load may have failed for that)
                        worker.stop(STOP_GRACE)
                    elif failure:
                        log.error("replacement scanning process could not load: %s", failure)
                    return
                log.error("replacement scanning process %s; starting another", failure)
                worker.stop()
            time.sleep(self.RESPAWN_DELAY)
            with self._lock:
                if self._closed or generation != self._generation:
                    return

    def _keep_idle(self, worker: _Worker) -> bool:
        """Make ``worker`` idle and serve the lanes, unless the pool closed or a reload replaced its
        generation (caller holds the lock); False: the caller stops it."""
        if self._closed or worker.generation != self._generation:
            return False
        self._idle.append(worker)
        self._dispatch()
        return True

    def screen(
        self, source: MessageSource, envelope: Envelope, known: Evidence, incident: str, started: float
    ) -> tuple[Outcome, Relayed] | Evidence:
        """Screen one message whole in a worker (its ``Screener.screen``); see ``screening.Workers``.

        The milter waits as the MTA's milter timeout allows: for a free worker and the scan until
        ``message_deadline`` after ``started`` (``time.perf_counter()``), then for the worker's store
        and incident response until ``write_timeout`` (and the commit grace) after that. A worker past
        either is killed, so it commits nothing more, and replaced. Only the bytes (or the spool
        file's path) and the envelope cross the pipe, and only a slim outcome comes back.
        """
        settings = self._settings
        deadline = settings.milter.message_deadline
        data = str(source.path) if source.path is not None else source.data
        job = ("screen", data, source.size, envelope, None if known is NOTHING_KNOWN else known, incident, started)
        answer_by = started + deadline + settings.quarantine.write_timeout + ANSWER_GRACE
        reply = self._run(envelope.client_address, job, started, deadline, answer_by)
        if isinstance(reply, Evidence):
            return reply
        _status, slim, relayed = reply
        return Outcome.from_slim(slim, envelope), relayed

    def _run(
        self, client: str, job: tuple[object, ...], started: float, deadline: float, answer_by: float | None
    ) -> tuple[Any, ...] | Evidence:
        """Hand ``job`` to a worker in ``client``'s lane and wait for the answer (:meth:`_exchange`).

        A worker found dead when the job is sent (it died while idle) never saw the message: the
        job goes to the next worker, while the dead one is replaced.
        """
        for _ in range(self._size + 1):
            ticket = self._acquire(client, max(0.0, deadline - (time.perf_counter() - started)))
            if ticket is None:
                return _unchecked("scan-deadline", "no scanning process became free in time")
            reply = self._exchange(ticket, job, started, deadline, answer_by)
            if reply is not _NOT_SENT:
                return reply
        raise ScanFailed("every scanning process it was handed to had died")

    def _exchange(
        self, ticket: _Ticket, job: tuple[object, ...], started: float, deadline: float, answer_by: float | None
    ) -> tuple[Any, ...] | Evidence:
        """Send ``job`` to the ticket's worker and wait for its ``ok`` answer: until ``deadline`` seconds
        after ``started`` for the scan, then, if the worker marked it done, until ``answer_by``.

        Unchecked evidence when the scan ran out of time or CPU; StoreError when the answer did not
        come after the scan; ScanFailed when the worker died or failed; :data:`_NOT_SENT` when it
        was dead before it got the job. A worker given up on is killed (before this returns, so it
        commits nothing more) and replaced.
        """
        worker = ticket.granted_worker
        broken = False
        try:
            worker.scanned.value = 0
            try:
                worker.send(job)
            except OSError as exc:  # the pipe's other end is closed: the worker died while idle
                broken = True
                log.warning("scanning process %s had died (%s); the message goes to another", worker.process.pid, exc)
                return _NOT_SENT
            reply = worker.receive(deadline - (time.perf_counter() - started))
            if reply is None:
                broken = True
                if answer_by is None or not worker.scanned.value:
                    log.error("scan exceeded the %.0f s deadline; worker %s killed", deadline, worker.process.pid)
                    return _unchecked("scan-deadline", f"scan exceeded {deadline:.0f} s")
                reply = worker.receive(answer_by - time.perf_counter())
                if reply is None:
                    log.error("worker %s scanned but did not answer in time after; killed", worker.process.pid)
                    raise StoreError(f"no answer within {self._settings.quarantine.write_timeout:g} s after the scan")
                broken = False
        except (EOFError, OSError) as exc:
            broken = True
            return self._lost(worker, exc)
        finally:
            self._release(ticket, broken)
        if reply[0] != "ok":
            raise ScanFailed(f"scanning process reported {reply[1]}")
        return reply

    def _lost(self, worker: _Worker, exc: BaseException) -> Evidence:
        """A worker whose pipe broke mid-message: over its CPU limit (unchecked evidence), or dead (raises)."""
        worker.process.join(timeout=2)
        if worker.process.exitcode == -signal.SIGXCPU:
            cpu = self._settings.milter.cpu_budget
            log.error("scan used more than %.0f s of CPU; worker %s stopped", cpu, worker.process.pid)
            return _unchecked("scan-cpu-budget", f"scan used more than {cpu:.0f} s of CPU")
        raise ScanFailed(f"scanning process {worker.process.pid} died: {type(exc).__name__}") from exc

    def scan(self, source: MessageSource, envelope: Envelope, deadline: float | None = None) -> Evidence:
        """Inspect one message in a worker; a deadline or CPU overrun is evidence, a crash raises.

        ``deadline``: seconds for the whole scan, waiting for a worker included;
        by default ``milter.message_deadline`` of the settings the workers run.
        """
        started = time.perf_counter()
        if deadline is None:
            deadline = self._settings.milter.message_deadline
        reply = self._run(envelope.client_address, ("scan", source, envelope), started, deadline, None)
        if isinstance(reply, Evidence):
            return reply
        evidence: Evidence = reply[1]
        return evidence

    def _acquire(self, client: str, timeout: float) -> _Ticket | None:
        """Wait in ``client``'s lane for a worker; None when none came within ``timeout``."""
        ticket = _Ticket(client)
        with self._lock:
            if self._closed:
                raise ScanFailed("the scan pool is closed")
            self._lanes.setdefault(client, deque()).append(ticket)
            self._dispatch()
            if ticket.worker is not None:  # an idle worker was there: no wait, no wake-up
                return ticket
        if ticket.wait(timeout):
            if ticket.worker is None:
                raise ScanFailed("the scan pool closed")
            return ticket
        with self._lock:
            if ticket.worker is None:
                lane = self._lanes.get(client, deque())
                if ticket in lane:
                    lane.remove(ticket)
                if not lane:
                    self._lanes.pop(client, None)
                return None
        self._release(ticket, broken=False)  # granted just as the wait timed out: give it back
        return None

    def _dispatch(self) -> None:
        """Hand idle workers to waiting lanes in turn (caller holds the lock)."""
        while self._idle and not self._closed:
            for client, lane in self._lanes.items():  # noqa: B007  (the lane found is used below)
                if self._busy[client] < self._share:
                    break
            else:
                return  # every waiting client already holds its share
            ticket = lane.popleft()
            del self._lanes[client]  # to the back of the turn order
            if lane:
                self._lanes[client] = lane
            self._busy[client] += 1
            ticket.worker = self._idle.pop()
            ticket.grant()

    def _release(self, ticket: _Ticket, broken: bool) -> None:
        worker = ticket.granted_worker
        with self._lock:
            self._busy[ticket.client] -= 1
            if not self._busy[ticket.client]:
                del self._busy[ticket.client]
            if self._closed:
                self._returned.notify_all()
            healthy = not broken  # one that died since is found out when the next job is sent to it
            if not healthy and not self._closed and worker.generation == self._generation:
                threading.Thread(
                    target=self._replace,
                    args=(self._settings, self._generation),
                    name="mailward-scan-replace",
                    daemon=True,
                ).start()
            kept = healthy and self._keep_idle(worker)
        if kept:
            return
        if healthy:  # retired by a reload: it flushes and closes on a thread of its own, not on the reply's
            threading.Thread(target=worker.stop, args=(STOP_GRACE,), name="mailward-scan-retire", daemon=True).start()
        else:
            worker.stop()

    def close(self) -> None:
        """Stop every worker; scans in flight get up to 10 s to finish, workers still loading none."""
        with self._lock:
            self._closed = True
            for ticket in (t for lane in self._lanes.values() for t in lane):
                ticket.grant()  # wakes waiters; they find no worker and give up
            self._lanes.clear()
            self._returned.wait_for(lambda: not self._busy, timeout=10)
            idle, self._idle = self._idle, []
            loading = list(self._starting)
        for worker in loading:  # nothing to flush yet; their loader threads read the EOF and stop them
            worker.process.kill()
        _stop_all(idle)
        for worker in loading:
            worker.process.join(timeout=5)


def _unchecked(check: str, detail: str) -> Evidence:
    return Evidence(findings=(Finding(Category.UNCHECKED, check, Severity.HIGH, "pool", "", detail),))
