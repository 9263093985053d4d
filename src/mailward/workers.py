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
    failure = ""
    try:
        inspector = Inspector.from_settings(settings)
    except Exception as exc:  # reported to the parent with every request instead of dying silently
        log.exception("worker could not load its detectors")
        inspector, failure = None, f"{type(exc).__name__}: {exc}"
    if inspector is not None:
        try:        # first-use costs (parser sandbox, archive and PDF code) paid here, not by a message
            inspector.inspect(_warm_up_message(), Envelope())
        except Exception:
            log.exception("warm-up scan failed")
    try:
        conn.send(("loaded", failure))        # the pool hands out only workers that said so
    except (OSError, BrokenPipeError):
        return
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


def _warm_up_message() -> bytes:
    """A small message with a zip and a one-page PDF: what a new worker scans before it serves."""
    import io
    import zipfile
    from email.message import EmailMessage

    pdf = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
           b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes.txt", "warm-up " * 100)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "warm-up@localhost", "warm-up@localhost", "warm-up"
    msg.set_content("warm-up text https://example.invalid/")
    msg.add_attachment(archive.getvalue(), maintype="application", subtype="zip", filename="notes.zip")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="page.pdf")
    return msg.as_bytes()


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
    """A fixed number of scanning processes shared by all milter threads.

    Only loaded workers are handed out: a new worker (first start, replacement,
    reload) is idle only after it reported its detectors loaded, so no scan
    waits behind a model or rules load.
    """

    LOAD_TIMEOUT = 300.0      # seconds a new worker may take to load rules and model
    RESPAWN_DELAY = 5.0       # seconds between attempts to start a replacement worker
    # Imported once in the forkserver, so each new worker (start, replacement, reload) skips
    # seconds of imports (scikit-learn alone: 1-5 s) and only loads rules and model.
    PRELOAD = ("mailward.pipeline", "mailward.signatures", "mailward.models.spam", "mailward.reputation",
               "sklearn.naive_bayes")

    def __init__(self, settings: Settings, size: int, start_method: str = "forkserver"):
        if size < 1:
            raise ValueError("a scan pool needs at least one worker")
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(list(self.PRELOAD))
        self._size = size
        self._settings = settings
        self._generation = 0
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._closed = False
        for worker in self._start_loaded(settings, 0):
            self._idle.put(worker)

    def _spawn(self, settings: Settings, generation: int) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, settings),
                                    name="mailward-scan", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent, generation)

    def _loaded(self, worker: _Worker) -> str:
        """Wait for a new worker's load report: "" when its detectors loaded, else why not."""
        try:
            if not worker.conn.poll(self.LOAD_TIMEOUT):
                return f"did not load within {self.LOAD_TIMEOUT:.0f} s"
            _status, failure = worker.conn.recv()
            return failure
        except (EOFError, OSError) as exc:
            return f"died while loading ({type(exc).__name__})"

    def _start_loaded(self, settings: Settings, generation: int) -> list[_Worker]:
        """``size`` workers for ``settings``, loaded side by side; ScanFailed if any cannot load."""
        workers: list[_Worker] = []
        try:
            for _ in range(self._size):
                workers.append(self._spawn(settings, generation))
            failures = [failure for failure in map(self._loaded, workers) if failure]
        except OSError as exc:          # no process could be started (forkserver gone, no memory)
            failures = [f"could not start: {exc}"]
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
                for worker in fresh:
                    worker.stop()
                return
            self._settings, self._generation = settings, generation
            stale = []
            while True:
                try:
                    stale.append(self._idle.get_nowait())
                except queue.Empty:
                    break
            for worker in fresh:
                self._idle.put(worker)
        for worker in stale:
            worker.stop()

    def _replace(self, settings: Settings, generation: int) -> None:
        """Start a worker in place of a broken one; it joins the idle set once loaded."""
        while True:
            try:
                worker = self._spawn(settings, generation)
                break
            except OSError:             # retried: a pool that only shrinks would end in deadline verdicts
                log.exception("could not start a replacement scanning process; retrying")
                time.sleep(self.RESPAWN_DELAY)
                with self._lock:
                    if self._closed or generation != self._generation:
                        return
        failure = self._loaded(worker)
        if failure:     # it answers every scan with an error: on_error applies, nothing passes unchecked
            log.error("replacement scanning process could not load: %s", failure)
        with self._lock:
            if self._closed or generation != self._generation:
                worker.stop()
                return
            self._idle.put(worker)

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
            if self._closed or worker.generation != self._generation:
                retire = True       # closed, or a reload already started its successor
            elif broken or not worker.process.is_alive():
                retire = True
                threading.Thread(target=self._replace, args=(self._settings, self._generation),
                                 name="mailward-scan-replace", daemon=True).start()
            else:
                retire = False
                self._idle.put(worker)
        if retire:
            worker.stop()

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
