"""One database layer under every store: backend, connections, transactions, migrations.

The quarantine, the incident store, the label ledger, the model registry and
the web accounts all keep their state in SQL, on a SQLite file of their own or
in the PostgreSQL database several hosts share. What they have in common lives
here, once:

* **Backend** (:class:`SqliteFile`, :class:`PostgresDsn`): how a session is
  opened and made safe (WAL and ``synchronous`` on SQLite; ``synchronous_commit
  = on`` and a ``statement_timeout`` on PostgreSQL, whatever the server's
  default), how a write transaction starts, how its waits are bounded, and the
  column types a schema uses. SQLite files are prepared by
  :func:`mailward.dbfile.prepare_database_file`, never opened outside SQLite.
  psycopg is imported only here, and only when a PostgreSQL backend is made:
  a host on SQLite never loads it.
* **Connections** (:class:`Database`): at most ``pool_size`` sessions shared
  by all threads; one (``pool_size=1``) is a connection used under a lock.
  Every wait (this process's writers, the pool, the database's busy lock or
  statement) ends at the transaction's deadline, on PostgreSQL also when the
  server never answers: the connection is cut shortly after the deadline (a
  stopped server, a network that drops packets). An idle connection the server
  ended (a restart, a failover, ``pg_terminate_backend``) is closed instead of
  used, and one found dead by the transaction's first statement is replaced
  once; a connection that failed is closed. A COMMIT whose answer was lost
  raises an error the store can tell apart (:meth:`Database.unconfirmed`): the
  transaction may have been kept.
* **Statements** are written once with ``?`` placeholders
  (:meth:`Transaction.execute`) and translated for psycopg here.
* **Migrations**: each store's schema is a numbered list of steps; the
  ``schema_versions`` table records how far each store's schema is. A database
  made before the table existed opens as version 0, and its first step (the
  ``CREATE ... IF NOT EXISTS`` of that schema) finds everything in place. A
  database newer than this code is refused: fail closed, never guess.

Database errors become the store's own error class (``error``), so callers see
one exception per store, as before.
"""

from __future__ import annotations

import math
import os
import queue
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .dbfile import prepare_database_file
from .errors import MailwardError
from .textsafe import valid_text

# A driver's connection or cursor (sqlite3 or psycopg): the two share the calls used here.
Connection = Any
Cursor = Any

_MIGRATION_LOCK = 0x4D57_4400  # "MWD\0": PostgreSQL advisory lock serialising every store's migrations
CUT_GRACE = 1.0  # seconds past a deadline before its connection is cut: the server's own timeout answers first


class DatabaseError(MailwardError):
    """A store's database could not be reached, read or written (stores pass their own subclass)."""


class Budget(Protocol):
    """How long one transaction may take; ``check`` raises once nothing may be committed any more."""

    @property
    def seconds(self) -> float: ...

    def remaining(self) -> float: ...

    def check(self, doing: str) -> None: ...


class UnconfirmedCommit(Exception):
    """A COMMIT was sent but its answer never came (connection lost or cut): it may have been kept."""


class Timeout:
    """A plain budget of ``seconds`` from now, for transactions nobody abandons."""

    def __init__(self, seconds: float, error: Callable[[str], Exception] = DatabaseError):
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._error = error

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def check(self, doing: str) -> None:
        if time.monotonic() >= self._end:
            raise self._error(f"could not {doing} within {self.seconds:g} s")


# -- backends -------------------------------------------------------------------------------------


class Backend(ABC):
    """Where a database lives and how its sessions behave."""

    name: str = ""
    serial: str = ""  # an auto-numbered primary key column
    real: str = ""  # a floating-point column
    # One writer at a time anyway: a process's threads queue on a lock (waited on with the
    # transaction's deadline) instead of the database's sleep-and-retry busy handler.
    single_writer: bool = False
    errors: tuple[type[BaseException], ...] = ()  # the driver's exception classes

    @abstractmethod
    def connect(self, seconds: float | None = None) -> Connection:
        """A new session, set up within ``seconds`` if given; the driver's error if the database cannot be reached."""

    def sql(self, statement: str) -> str:
        """``statement`` with ``?`` placeholders in the driver's style."""
        return statement

    def begin(self, conn: Connection) -> None:  # noqa: B027  (PostgreSQL: psycopg opens one itself)
        """Start a write transaction that takes its lock up front."""

    @abstractmethod
    def arm(self, conn: Connection, seconds: float) -> None:
        """Make the database give up waiting (busy lock, statement) after ``seconds``, this transaction."""

    def relax(self, conn: Connection) -> None:  # noqa: B027  (SQLite: set per session)
        """Let this transaction commit without waiting for the disk (a crash may lose it)."""

    def lock_schema(self, conn: Connection, key: int) -> None:  # noqa: B027  (SQLite: BEGIN IMMEDIATE)
        """Serialise schema changes with other hosts until the transaction ends."""

    def broken(self, conn: Connection) -> bool:
        """Whether ``conn`` is unusable after an error (then it is closed, not reused)."""
        return False

    def alive(self, conn: Connection) -> bool:
        """Whether the idle ``conn`` may be used: not ended by the server meanwhile."""
        return True

    def watch(self, conn: Connection, seconds: float | None = None) -> None:  # noqa: B027  (SQLite: local)
        """Cut ``conn`` if it is still waiting ``seconds`` (None: the session's statement timeout) from now.

        Moves the time if ``conn`` is watched already; :meth:`unwatch` ends it.
        """

    def unwatch(self, conn: Connection) -> bool:
        """Stop watching ``conn``; True if it was cut (then it is closed, and its last call's outcome unknown)."""
        return False

    def missing_table(self, exc: BaseException) -> bool:
        """Whether the driver error ``exc`` says a table does not exist."""
        return False

    def conflict(self, exc: BaseException) -> bool:
        """Whether the driver error ``exc`` is a refused constraint (a key that exists, a NULL, a check)."""
        return False

    def cursor(self, conn: Connection, binary: bool) -> Cursor:
        return conn.cursor()


class SqliteFile(Backend):
    """A SQLite file in WAL mode, shared by the processes of one host.

    ``synchronous`` is ``FULL`` where a commit must survive a power cut (the
    quarantine) and ``NORMAL`` where losing the last commits to one is
    acceptable (counters, the ledger, which a power cut leaves consistent).
    """

    name = "sqlite"
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    single_writer = True

    def __init__(self, path: Path, busy_timeout: float, synchronous: str = "FULL") -> None:
        import sqlite3

        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.errors = (sqlite3.Error,)
        self.path = prepare_database_file(Path(path))  # OSError if it cannot be made
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous

    def connect(self, seconds: float | None = None) -> Connection:
        import sqlite3

        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.OperationalError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR") and self._disk_full():
                raise sqlite3.OperationalError("disk full (no space left on device)") from exc
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _disk_full(self) -> bool:
        """Whether the file system lacks room for the 32 KiB of a first ``-shm`` region.

        SQLite reports failing to make that file as a bare "disk I/O error" (errno lost).
        """
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return False
        free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
        return free * st.f_frsize < 32 * 1024

    def _use_wal(self, conn: Connection) -> None:
        """Switch the file to WAL (kept in the file: a no-op once done), retried within ``busy_timeout``.

        Processes opening a new file together (the scanning workers at start) race to make the
        switch, and SQLite refuses it at once to all but one, without its busy handler: it would
        deadlock them otherwise.
        """
        import sqlite3

        deadline, pause = time.monotonic() + self.busy_timeout, 0.005
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def arm(self, conn: Connection, seconds: float) -> None:
        conn.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")

    def missing_table(self, exc: BaseException) -> bool:
        return "no such table" in str(exc)

    def conflict(self, exc: BaseException) -> bool:
        import sqlite3

        return isinstance(exc, sqlite3.IntegrityError)


class PostgresDsn(Backend):
    """A PostgreSQL database (psycopg 3) that several hosts share.

    Every session commits durably whatever the server's default (``off`` would
    lose a committed quarantine on a crash) and ends a statement after
    ``timeout``; connecting waits at most that long too (at least 2 s). The
    server's timeouts hold only while it answers: a connection still waiting
    :data:`CUT_GRACE` after its deadline is cut on this side (its socket shut
    down), so the call raises instead of waiting for a stopped server or a dead
    network. TCP keepalives and ``tcp_user_timeout`` (unless the DSN sets them)
    end idle connections to a vanished server.
    """

    name = "postgresql"
    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    real = "DOUBLE PRECISION"

    def __init__(self, dsn: str, timeout: float) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        self.errors = (psycopg.Error,)
        given = conninfo_to_dict(dsn)
        network = {
            "keepalives": "1",
            "keepalives_idle": "30",
            "keepalives_interval": "5",
            "keepalives_count": "3",
            "tcp_user_timeout": str(max(10, math.ceil(timeout + CUT_GRACE)) * 1000),
        }
        self.dsn = make_conninfo(dsn, **{k: v for k, v in network.items() if k not in given})
        self.timeout = timeout
        self._watchdog = _Watchdog(_cut)

    def connect(self, seconds: float | None = None) -> Connection:
        import psycopg

        limit = self.timeout if seconds is None else min(self.timeout, seconds)
        conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=max(2, math.ceil(limit)))
        try:
            self._watchdog.watch(conn, limit)
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (_ms(self.timeout),))
            conn.commit()
        except BaseException:
            self._watchdog.unwatch(conn)
            conn.close()
            raise
        if self._watchdog.unwatch(conn):
            conn.close()
            raise psycopg.OperationalError(f"no answer setting up the session within {limit:g} s")
        return conn

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def arm(self, conn: Connection, seconds: float) -> None:
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (_ms(seconds),))

    def relax(self, conn: Connection) -> None:
        conn.execute("SET LOCAL synchronous_commit TO OFF")

    def lock_schema(self, conn: Connection, key: int) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    def broken(self, conn: Connection) -> bool:
        return bool(conn.closed or getattr(conn, "broken", False))  # not every psycopg 3.x has .broken

    def alive(self, conn: Connection) -> bool:
        """An idle session has nothing to read: anything there is the server's goodbye (FATAL, EOF)."""
        if self.broken(conn):
            return False
        try:
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN)
            return not poller.poll(0)
        except Exception:
            return False

    def watch(self, conn: Connection, seconds: float | None = None) -> None:
        self._watchdog.watch(conn, self.timeout if seconds is None else seconds)

    def unwatch(self, conn: Connection) -> bool:
        return self._watchdog.unwatch(conn)

    def missing_table(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UndefinedTable)

    def conflict(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.IntegrityError)

    def cursor(self, conn: Connection, binary: bool) -> Cursor:
        return conn.cursor(binary=binary)


def _cut(conn: Connection) -> None:
    """Shut down ``conn``'s socket (a duplicate of it: libpq keeps its own), so a call waiting on it raises."""
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed: nothing waits on it
        pass


class _Watchdog:
    """Cuts connections whose call outlived its time plus :data:`CUT_GRACE`, from a thread of its own.

    The thread runs while something is watched. Cutting and :meth:`unwatch`
    take one lock, so a connection is never cut once its transaction let it go.
    """

    def __init__(self, cut: Callable[[Connection], None]) -> None:
        self._cut = cut
        self._due: dict[int, tuple[float, Connection]] = {}
        self._cut_ones: set[int] = set()
        self._changed = threading.Condition()
        self._running = False

    def watch(self, conn: Connection, seconds: float) -> None:
        with self._changed:
            self._due[id(conn)] = (time.monotonic() + seconds + CUT_GRACE, conn)
            if not self._running:
                threading.Thread(target=self._run, name="database-watchdog", daemon=True).start()
                self._running = True
            self._changed.notify()

    def unwatch(self, conn: Connection) -> bool:
        with self._changed:
            self._due.pop(id(conn), None)
            if id(conn) in self._cut_ones:
                self._cut_ones.discard(id(conn))
                return True
            return False

    def _run(self) -> None:
        with self._changed:
            while self._due:
                now = time.monotonic()
                for key, (at, conn) in list(self._due.items()):
                    if at <= now:
                        del self._due[key]
                        self._cut_ones.add(key)
                        self._cut(conn)
                if self._due:
                    self._changed.wait(min(at for at, _ in self._due.values()) - now)
            self._running = False


def _ms(seconds: float) -> str:
    """A PostgreSQL duration of at least 1 ms (0 would mean no timeout at all)."""
    return f"{max(1, int(seconds * 1000))}ms"


# -- transactions ---------------------------------------------------------------------------------


class Transaction:
    """One open transaction on one connection; statements use ``?`` placeholders.

    Text parameters are stored as PostgreSQL takes them (:func:`storable`), on
    SQLite alike, so both backends keep the same.
    """

    def __init__(self, conn: Connection, backend: Backend, watch_each: bool = False) -> None:
        self.connection = conn  # the driver's, for what this layer does not cover
        self._backend = backend
        self._watch_each = watch_each  # no deadline: each statement gets the session's statement timeout
        self.cut = False  # a statement's connection was cut: the session is not reused

    def execute(self, statement: str, params: Sequence[object] = (), *, binary: bool = False) -> Cursor:
        """Run one statement; ``binary`` fetches ``bytea`` as bytes on PostgreSQL."""
        cursor = self._backend.cursor(self.connection, binary)
        with self._watched():
            cursor.execute(self._backend.sql(statement), tuple(storable(p) for p in params))
        return cursor

    def executemany(self, statement: str, rows: Sequence[Sequence[object]]) -> None:
        cursor = self._backend.cursor(self.connection, False)
        with self._watched():
            cursor.executemany(self._backend.sql(statement), [tuple(storable(p) for p in row) for row in rows])

    @contextmanager
    def _watched(self) -> Iterator[None]:
        if not self._watch_each:  # watched as a whole until its deadline
            yield
            return
        self._backend.watch(self.connection)
        try:
            yield
        finally:
            self.cut = self._backend.unwatch(self.connection) or self.cut

    def relax(self) -> None:
        """This transaction may commit without waiting for the disk (counters: a crash may lose a few)."""
        self._backend.relax(self.connection)


def storable(value: object) -> object:
    """``value`` with text a PostgreSQL text column takes: NUL and lone surrogates (which it refuses) as U+FFFD."""
    if isinstance(value, str):
        return valid_text(value).replace("\x00", "\ufffd")
    return value


@dataclass(frozen=True)
class Migration:
    """One step of a store's schema: statements with ``{serial}`` and ``{real}`` filled in per backend.

    Steps are never edited once released; a change to a schema is a new step.
    Statements of step 1 say ``IF NOT EXISTS``: databases made before versions
    were recorded already have them.
    """

    version: int
    statements: tuple[str, ...]
    rewrite: Callable[[Transaction], None] | None = None  # then rows SQL cannot (a value's canonical form)


class _Pool:
    """At most ``size`` connections, shared by all threads; a thread finding them busy waits its budget.

    The bound matters for PostgreSQL, whose ``max_connections`` all hosts share.
    An idle connection the server ended meanwhile is closed, not handed out.
    """

    def __init__(
        self,
        connect: Callable[[float | None], Connection],
        alive: Callable[[Connection], bool],
        size: int,
        keep_idle: bool,
    ) -> None:
        self._connect = connect
        self._alive = alive
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._keep_idle = keep_idle
        self._closed = False

    def get(self, wait: float) -> Connection | None:
        """An idle or new connection; None if every slot stayed busy for ``wait`` seconds."""
        started = time.monotonic()
        if not self._slots.acquire(timeout=wait):
            return None
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            if self._alive(conn):
                return conn
            _close(conn)
        return self.renew(None, max(0.0, wait - (time.monotonic() - started)))

    def renew(self, conn: Connection | None, wait: float) -> Connection:
        """A new connection in the slot of ``conn`` (closed); the slot is freed if none can be made."""
        if conn is not None:
            _close(conn)
        try:
            return self._connect(wait)
        except BaseException:
            self._slots.release()
            raise

    def put(self, conn: Connection) -> None:
        if self._closed or not self._keep_idle:
            _close(conn)
        else:
            self._idle.put(conn)
        self._slots.release()

    def discard(self, conn: Connection) -> None:
        _close(conn)
        self._slots.release()

    def close(self) -> None:
        """Close idle connections now and busy ones when they come back."""
        self._closed = True
        while True:
            try:
                _close(self._idle.get_nowait())
            except queue.Empty:
                return


def _rolled_back(conn: Connection) -> bool:
    """Roll back after an error; False if the connection could not (then it is closed, not reused)."""
    try:
        conn.rollback()
    except Exception:
        return False
    return True


def _close(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:
        pass


class Database:
    """A store's database: its sessions, transactions and schema version.

    ``label`` names it in errors ("quarantine database", "incident store");
    ``error`` is the store's exception class; ``timeout`` bounds every wait of a
    transaction given no deadline of its own. Safe to use from many threads.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        label: str,
        error: type[MailwardError] = DatabaseError,
        timeout: float,
        pool_size: int = 1,
        keep_idle: bool = True,
    ) -> None:
        self.backend = backend
        self.label = label
        self.timeout = timeout
        self._error = error
        self._pool = _Pool(self._open, backend.alive, pool_size, keep_idle)
        self._write_gate = threading.Lock() if backend.single_writer and pool_size > 1 else None

    def __repr__(self) -> str:
        return f"<Database {self.label} ({self.backend.name})>"

    def error(self, problem: str) -> MailwardError:
        """The store's error, naming the database."""
        return self._error(f"{self.label} ({self.backend.name}): {problem}")

    def connect(self) -> Connection:
        """A session of its own, outside the pool, set up like the others; the caller closes it.

        For reads that stream while the pooled sessions go on writing, and for
        checking how sessions are set up.
        """
        return self._open()

    def _open(self, seconds: float | None = None) -> Connection:
        try:
            return self.backend.connect(seconds)
        except self.backend.errors as exc:
            raise self.error(f"cannot connect: {_first_line(exc)}") from exc

    @contextmanager
    def transaction(self, *, write: bool = False, deadline: Budget | None = None) -> Iterator[Transaction]:
        """One transaction, committed at the end and rolled back on any error.

        ``write`` takes the write lock up front (SQLite ``BEGIN IMMEDIATE``).
        With a ``deadline``, every wait in it ends there (this process's
        writers, the pool, the database's busy lock or statement; a server that
        does not answer at all, :data:`CUT_GRACE` later) and nothing is
        committed once it passed; without one, waits end after ``timeout`` and
        each statement gets the session's timeout. A COMMIT without an answer
        raises an error :meth:`unconfirmed` recognises.
        """
        budget: Budget = deadline or Timeout(self.timeout, self.error)
        gate = self._write_gate if write else None
        if gate is not None and not gate.acquire(timeout=budget.remaining()):
            raise self.error(f"this process's other writers held it for {budget.seconds:g} s")
        try:
            conn = self._session(budget, deadline)
            committing, tx = False, None
            try:
                if write:
                    self.backend.begin(conn)
                tx = Transaction(conn, self.backend, watch_each=deadline is None)
                yield tx
                if deadline is not None:
                    deadline.check("commit")
                else:
                    self.backend.watch(conn)
                committing = True
                conn.commit()
            except BaseException as exc:
                cut = self.backend.unwatch(conn) or (tx is not None and tx.cut)
                driver_error = isinstance(exc, self.backend.errors)
                if cut or not _rolled_back(conn) or (driver_error and self.backend.broken(conn)):
                    self._pool.discard(conn)
                    conn = None
                if not driver_error:
                    raise
                if committing and conn is None:
                    unconfirmed = UnconfirmedCommit(_first_line(exc))
                    unconfirmed.__cause__ = exc
                    raise self.error(f"COMMIT sent but not confirmed, it may have been kept: {_first_line(exc)}") from (
                        unconfirmed
                    )
                if cut:
                    raise self.error(f"no answer within {budget.seconds:g} s (connection cut)") from exc
                raise self.error(str(exc)) from exc
            finally:
                if conn is not None:
                    if self.backend.unwatch(conn):  # cut just as it finished: its result stands, not the session
                        self._pool.discard(conn)
                    else:
                        self._pool.put(conn)
        finally:
            if gate is not None:
                gate.release()

    def _session(self, budget: Budget, deadline: Budget | None) -> Connection:
        """A pooled connection, watched until ``deadline`` and armed with it.

        A connection the server ended (restart, failover) fails the first
        statement sent on it, before anything ran in this transaction: it is
        replaced once, within the same budget.
        """
        conn = self._pool.get(budget.remaining())
        if conn is None:
            raise self.error(f"this process's other threads held its connections for {budget.seconds:g} s")
        if deadline is None:
            return conn
        for retry in (True, False):
            try:
                self.backend.watch(conn, deadline.remaining())
                self.backend.arm(conn, deadline.remaining())
                return conn
            except BaseException as exc:
                cut = self.backend.unwatch(conn)
                dead = isinstance(exc, self.backend.errors) and self.backend.broken(conn) and not cut
                if retry and dead and deadline.remaining() > 0:
                    conn = self._pool.renew(conn, deadline.remaining())
                    continue
                self._pool.discard(conn)
                if not isinstance(exc, self.backend.errors):
                    raise
                if cut:
                    raise self.error(f"no answer within {budget.seconds:g} s (connection cut)") from exc
                raise self.error(str(exc)) from exc
        raise AssertionError("unreachable")

    def unconfirmed(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a COMMIT was sent but never confirmed: the transaction may have been kept."""
        return isinstance(exc.__cause__, UnconfirmedCommit)

    def missing_table(self, exc: BaseException) -> bool:
        """Whether ``exc`` (an error of this database, or its cause) says a table does not exist."""
        cause = exc.__cause__ if isinstance(exc, MailwardError) else exc
        return cause is not None and self.backend.missing_table(cause)

    def conflict(self, exc: BaseException) -> bool:
        """Whether ``exc`` (an error of this database, or its cause) is a refused constraint."""
        cause = exc.__cause__ if isinstance(exc, MailwardError) else exc
        return cause is not None and self.backend.conflict(cause)

    def migrate(self, store: str, migrations: Sequence[Migration], lock: int | None = None) -> int:
        """Bring ``store``'s schema up to its last step, in one transaction; returns that version.

        Hosts starting at once are serialised (PostgreSQL advisory locks: the
        layer's, then ``lock``, the store's own key that earlier versions took);
        a database already at a version newer than this code knows is refused.
        """
        latest = max((m.version for m in migrations), default=0)
        with self.transaction(write=True) as tx:
            self.backend.lock_schema(tx.connection, _MIGRATION_LOCK)
            if lock is not None:
                self.backend.lock_schema(tx.connection, lock)
            tx.execute("CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            row = tx.execute("SELECT version FROM schema_versions WHERE store = ?", (store,)).fetchone()
            current = int(row[0]) if row else 0
            if current > latest:
                raise self.error(
                    f"the {store} schema is at version {current}, newer than this Mailward knows ({latest}); "
                    "upgrade Mailward"
                )
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version > current:
                    for statement in migration.statements:
                        tx.execute(statement.format(serial=self.backend.serial, real=self.backend.real))
                    if migration.rewrite is not None:
                        migration.rewrite(tx)
            if current < latest:
                tx.execute(
                    "INSERT INTO schema_versions (store, version) VALUES (?, ?) "
                    "ON CONFLICT (store) DO UPDATE SET version = excluded.version",
                    (store, latest),
                )
        return latest

    def schema_version(self, store: str) -> int:
        """How far ``store``'s schema is (0: never migrated)."""
        try:
            with self.transaction() as tx:
                row = tx.execute("SELECT version FROM schema_versions WHERE store = ?", (store,)).fetchone()
        except MailwardError as exc:
            if self.missing_table(exc):
                return 0
            raise
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the sessions; safe while others still use the database (they get fresh ones)."""
        self._pool.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
