"""Analysts' accounts and sessions for `mailward web`, in ``<state_dir>/web.sqlite3``.

Passwords are argon2id hashes (argon2-cffi's defaults, rehashed on login when
those change). An account is locked after ``lockout_after`` failed logins in a
row and stays locked until ``mailward web user unlock``: a slow guesser gains
nothing by waiting. Sessions live on the server: the cookie carries a random
token, the database only its SHA-256, so a copy of the database opens no
session; a session unused for ``idle`` seconds is gone. Logins, failures,
lockouts and account changes go to the ``web_audit`` table.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..db import Database, DatabaseError, Migration, SqliteFile, Transaction
from ..errors import MailwardError

DB_NAME = "web.sqlite3"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # what the login form reads: a longer one could never be typed in
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")

SCHEMA = (  # migration 1: the schema before versions were recorded
    """CREATE TABLE IF NOT EXISTS web_accounts (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        failed INTEGER NOT NULL DEFAULT 0,
        locked_at REAL,
        created_at REAL NOT NULL,
        changed_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS web_sessions (
        token_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        seen_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS web_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        account TEXT NOT NULL,
        action TEXT NOT NULL,
        client TEXT NOT NULL,
        detail TEXT NOT NULL)""",
)
MIGRATIONS = (Migration(1, SCHEMA),)


class AccountError(MailwardError):
    """An account command that cannot be done (unknown name, weak password, ...)."""


class Login(str, Enum):
    OK = "ok"
    REFUSED = "refused"  # unknown account or wrong password (the page never says which)
    LOCKED = "locked"  # too many failures: only `web user unlock` opens it again


@dataclass(frozen=True)
class Session:
    token: str
    account: str
    csrf: str  # every form of this session carries it; a POST without it is refused


@dataclass(frozen=True)
class AccountEvent:
    at: float
    account: str
    action: str
    client: str
    detail: str


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AccountError(f"not an account name: {name!r} (lower-case letters, digits, . _ @ -; at most 64)")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    return password


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class AccountStore:
    """Accounts, sessions and their audit in one SQLite file; safe to use from many threads."""

    def __init__(
        self,
        path: Path,
        lockout_after: int = 10,
        idle: float = 300.0,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ):
        self.lockout_after = lockout_after
        self.idle = idle
        self._clock = clock
        self._hasher = hasher or PasswordHasher()
        self._dummy = ""  # a hash to verify unknown names against, so they cost the same time
        # One connection, one transaction at a time: logins are rare.
        self.database = Database(SqliteFile(Path(path), busy_timeout=10.0), label="web accounts", timeout=10.0)
        self.path = Path(path)
        self.database.migrate("web", MIGRATIONS)

    def _tx(self) -> AbstractContextManager[Transaction]:
        return self.database.transaction(write=True)

    def _audit(self, conn: Transaction, account: str, action: str, client: str = "", detail: str = "") -> None:
        conn.execute(
            "INSERT INTO web_audit (at, account, action, client, detail) VALUES (?, ?, ?, ?, ?)",
            (self._clock(), account, action, client, detail),
        )

    # -- accounts (the CLI) ----------------------------------------------------------------------

    def add(self, name: str, password: str, by: str) -> None:
        check_name(name)
        check_password(password)
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM web_accounts WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"account {name} exists (use `mailward web user passwd`)")
        digest = self._hasher.hash(password)
        now = self._clock()
        try:
            with self._tx() as conn:  # the check above saves a slow hash; the key still decides a race
                conn.execute(
                    "INSERT INTO web_accounts (name, hash, created_at, changed_at) VALUES (?, ?, ?, ?)",
                    (name, digest, now, now),
                )
                self._audit(conn, name, "account-add", detail=f"by {by}")
        except DatabaseError as exc:
            if not self.database.conflict(exc):
                raise
            raise AccountError(f"account {name} exists (use `mailward web user passwd`)") from None

    def set_password(self, name: str, password: str, by: str) -> None:
        """A new password also ends the account's sessions (a password change is often a response)."""
        digest = self._hasher.hash(check_password(password))
        with self._tx() as conn:
            if not conn.execute(
                "UPDATE web_accounts SET hash = ?, changed_at = ? WHERE name = ?", (digest, self._clock(), name)
            ).rowcount:
                raise AccountError(f"no account {name}")
            conn.execute("DELETE FROM web_sessions WHERE account = ?", (name,))
            self._audit(conn, name, "account-passwd", detail=f"by {by}")

    def unlock(self, name: str, by: str) -> None:
        with self._tx() as conn:
            if not conn.execute(
                "UPDATE web_accounts SET failed = 0, locked_at = NULL WHERE name = ?", (name,)
            ).rowcount:
                raise AccountError(f"no account {name}")
            self._audit(conn, name, "account-unlock", detail=f"by {by}")

    def is_locked(self, name: str) -> bool:
        with self._tx() as conn:
            row = conn.execute("SELECT locked_at FROM web_accounts WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] is not None

    def events(self, name: str = "", limit: int = 100) -> list[AccountEvent]:
        with self._tx() as conn:
            rows = conn.execute(
                """SELECT at, account, action, client, detail FROM web_audit
                                   WHERE ? = '' OR account = ? ORDER BY seq DESC LIMIT ?""",
                (name, name, limit),
            ).fetchall()
        return [AccountEvent(*row) for row in rows]

    # -- logging in (the web) --------------------------------------------------------------------

    def login(self, name: str, password: str, client: str) -> tuple[Login, Session | None]:
        """Check a password; the ``lockout_after``-th failure in a row locks the account.

        An attempt counts as a failure before its slow hash check and is forgiven only if the
        password proves right, so guesses sent together share one budget: at most
        ``lockout_after`` are checked, and one that proves right after the account locked
        meanwhile is refused like any other (it learns nothing).
        """
        with self._tx() as conn:
            row = conn.execute("SELECT hash, locked_at FROM web_accounts WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if row[1] is not None:
                    self._audit(conn, name, "login-locked", client, "account locked")
                    return Login.LOCKED, None
                attempt = conn.execute(
                    "UPDATE web_accounts SET failed = failed + 1 WHERE name = ? RETURNING failed", (name,)
                ).fetchone()[0]
                if attempt > self.lockout_after:  # the budget is spent by attempts still being checked
                    self._lock(conn, name, client, f"after {attempt - 1} logins without the right password")
                    return Login.LOCKED, None
        if row is None and not self._dummy:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        stored = row[0] if row else self._dummy
        try:
            good = self._hasher.verify(stored, password) and row is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            good = False
        with self._tx() as conn:
            state = conn.execute("SELECT failed, locked_at FROM web_accounts WHERE name = ?", (name,)).fetchone()
            if row is None or state is None:
                self._audit(conn, name[:64], "login-refused", client, "unknown account")
                return Login.REFUSED, None
            failed, locked_at = state
            if locked_at is not None:
                self._audit(conn, name, "login-locked", client, "account locked")
                return Login.LOCKED, None
            if not good:
                self._audit(conn, name, "login-refused", client, f"wrong password ({failed} in a row)")
                if failed >= self.lockout_after:
                    self._lock(conn, name, client, f"after {failed} failed logins")
                    return Login.LOCKED, None
                return Login.REFUSED, None
            if self._hasher.check_needs_rehash(stored):
                conn.execute("UPDATE web_accounts SET hash = ? WHERE name = ?", (self._hasher.hash(password), name))
            conn.execute("UPDATE web_accounts SET failed = 0 WHERE name = ?", (name,))
            session = Session(secrets.token_urlsafe(32), name, secrets.token_urlsafe(32))
            now = self._clock()
            conn.execute(
                """INSERT INTO web_sessions (token_hash, account, csrf, created_at, seen_at)
                            VALUES (?, ?, ?, ?, ?)""",
                (_digest(session.token), name, session.csrf, now, now),
            )
            conn.execute("DELETE FROM web_sessions WHERE seen_at < ?", (now - self.idle,))
            self._audit(conn, name, "login", client)
        return Login.OK, session

    def _lock(self, conn: Transaction, name: str, client: str, why: str) -> None:
        conn.execute("UPDATE web_accounts SET locked_at = ? WHERE name = ?", (self._clock(), name))
        self._audit(conn, name, "account-locked", client, why)

    def session(self, token: str) -> Session | None:
        """The live session of ``token``, its idle clock restarted; None once idle too long or locked."""
        if not token:
            return None
        now = self._clock()
        with self._tx() as conn:
            row = conn.execute(
                """SELECT s.account, s.csrf, s.seen_at, a.locked_at FROM web_sessions s
                                  JOIN web_accounts a ON a.name = s.account WHERE s.token_hash = ?""",
                (_digest(token),),
            ).fetchone()
            if row is None:
                return None
            if now - row[2] > self.idle or row[3] is not None:
                conn.execute("DELETE FROM web_sessions WHERE token_hash = ?", (_digest(token),))
                self._audit(
                    conn,
                    row[0],
                    "session-expired" if row[3] is None else "session-ended",
                    detail=f"idle {now - row[2]:.0f} s",
                )
                return None
            conn.execute("UPDATE web_sessions SET seen_at = ? WHERE token_hash = ?", (now, _digest(token)))
        return Session(token, row[0], row[1])

    def logout(self, session: Session, client: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM web_sessions WHERE token_hash = ?", (_digest(session.token),))
            self._audit(conn, session.account, "logout", client)

    def close(self) -> None:
        self.database.close()
