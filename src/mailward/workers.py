"""Scanning processes, so CPU-heavy detection uses every core.

libmilter runs one thread per MTA connection and Python work serialises on the
GIL, so the inspection itself runs in worker processes. The pool is our own
rather than ``concurrent.futures``: a worker stuck on hostile input past the
message deadline is killed and replaced on its own, and a reload swaps in
workers built from the new settings while in-flight scans finish on the old
ones. Workers start with ``forkserver`` because forking a process that already
runs libmilter's threads is unsafe.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from .config import Settings
from .envelope import Envelope
from .errors import MailwardError
from .evidence import Category, Evidence, Finding, Severity

log = logging.getLogger(__name__)

MessageSource = bytes | Path    # small messages travel as bytes, spooled ones as a private file path


class ScanFailed(MailwardError):
    """A worker died or answered with an error; the milter applies on_error."""


def _worker_main(conn: Connection, settings: Settings) -> None:
    """Entry point of a scanning process: build detectors once, then serve scans."""
    from .logs import configure_logging
    from .pipeline import Inspector

    configure_logging(settings.logging)
    try:
        inspector = Inspector.from_settings(settings)
    except Exception as exc:  # reported to the parent with every request instead of dying silently
        log.exception("worker could not load its detectors")
        inspector, failure = None, f"{type(exc).__name__}: {exc}"
    while True:
        try:
            source, envelope = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if inspector is None:
            conn.send(("error", failure))
            continue
        try:
            raw = source.read_bytes() if isinstance(source, Path) else source
            conn.send(("ok", inspector.inspect(raw, envelope)))
        except Exception as exc:
            log.exception("scan failed", extra={"queue_id": envelope.queue_id})
            conn.send(("error", type(exc).__name__))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    generation: int

    def stop(self) -> None:
        try:
            self.conn.close()
        finally:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)


class ScanPool:
    """A fixed number of scanning processes shared by all milter threads."""

    def __init__(self, settings: Settings, size: int, start_method: str = "forkserver"):
        if size < 1:
            raise ValueError("a scan pool needs at least one worker")
        self._ctx = multiprocessing.get_context(start_method)
        self._size = size
        self._settings = settings
        self._generation = 0
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._closed = False
        for _ in range(size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self._settings),
                                    name="mailward-scan", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent, self._generation)

    def reload(self, settings: Settings) -> None:
        """Serve new scans with workers built from ``settings``; busy workers retire when done."""
        with self._lock:
            self._settings = settings
            self._generation += 1
            stale = []
            while True:
                try:
                    stale.append(self._idle.get_nowait())
                except queue.Empty:
                    break
            for worker in stale:
                worker.stop()
                self._idle.put(self._spawn())

    def scan(self, source: MessageSource, envelope: Envelope, deadline: float) -> Evidence:
        """Inspect one message in a worker; a deadline overrun is evidence, a crash raises."""
        started = time.monotonic()
        try:
            worker = self._idle.get(timeout=deadline)
        except queue.Empty:
            return _deadline_evidence("no scanning process became free in time")
        replace = False
        try:
            worker.conn.send((source, envelope))
            remaining = max(0.0, deadline - (time.monotonic() - started))
            if not worker.conn.poll(remaining):
                replace = True
                log.error("scan exceeded the %.0f s deadline; worker %s killed", deadline, worker.process.pid,
                          extra={"queue_id": envelope.queue_id, "connection_id": envelope.connection_id})
                return _deadline_evidence(f"scan exceeded {deadline:.0f} s")
            status, payload = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            replace = True
            raise ScanFailed(f"scanning process {worker.process.pid} died: {type(exc).__name__}") from exc
        finally:
            self._release(worker, replace)
        if status != "ok":
            raise ScanFailed(f"scanning process reported {payload}")
        return payload

    def _release(self, worker: _Worker, broken: bool) -> None:
        with self._lock:
            if self._closed:
                worker.stop()
                return
            if broken or worker.generation != self._generation or not worker.process.is_alive():
                worker.stop()
                worker = self._spawn()
            self._idle.put(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _ in range(self._size):
                try:
                    self._idle.get(timeout=10).stop()
                except queue.Empty:
                    break


def _deadline_evidence(detail: str) -> Evidence:
    return Evidence(findings=(Finding(Category.UNCHECKED, "scan-deadline", Severity.HIGH, "pool", "", detail),))
