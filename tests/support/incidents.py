"""Real receivers on loopback for alert tests, a milter driver with SASL macros, and store fixtures.

Test modules import the helpers they use (``from support.incidents import ...``; the milter
client and runtime fixture are in ``support.milter``);
the fixtures (``incident_store`` runs a test once per backend, on the quarantine tests'
PostgreSQL cluster) are registered for every module by ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mailward.incidents.store import PostgresIncidentStore, SqliteIncidentStore
from support.quarantine import FakeClock

# Real lines as Postfix 3.7 writes them (maillog_file and syslog formats, IPv4 and IPv6, submission service).
FAILED_LOGIN_LINES = (
    "Nov 22 19:20:01 mx postfix/smtpd[1234]: warning: unknown[203.0.113.5]: SASL LOGIN authentication failed: "
    "UGFzc3dvcmQ6",
    "Nov 22 19:20:03 mx postfix/submission/smtpd[1240]: warning: unknown[203.0.113.5]: SASL PLAIN authentication "
    "failed: authentication failure",
    "2026-11-22T19:20:04.532911+00:00 mx postfix/smtpd[1234]: warning: mail.example.net[2001:db8::25]: SASL LOGIN "
    "authentication failed: UGFzc3dvcmQ6",
    # Postfix 3.7 with Cyrus SASL names the login it was given.
    "Nov 22 19:40:57 mx postfix/submission/smtpd[15324]: warning: localhost[127.0.0.1]: SASL PLAIN authentication "
    "failed: authentication failure, sasl_username=alice@mx.mailward.test",
)
OTHER_LINES = (
    "Nov 22 19:20:01 mx postfix/smtpd[1234]: connect from unknown[203.0.113.5]",
    "Nov 22 19:20:02 mx postfix/smtpd[1234]: lost connection after AUTH from unknown[203.0.113.5]",
    "Nov 22 19:20:02 mx postfix/smtpd[1234]: disconnect from unknown[203.0.113.5] ehlo=1 auth=0/1 commands=1/2",
    "Nov 22 19:20:05 mx postfix/smtpd[1250]: NOQUEUE: reject: RCPT from unknown[198.51.100.9]: 554 5.7.1 "
    "<x@example.test>: Relay access denied; from=<a@b.example> to=<x@example.test> proto=ESMTP "
    "helo=<x postfix/smtpd[1]: warning: unknown[192.0.2.99]: SASL LOGIN authentication failed>",
    "Nov 22 19:20:06 mx postfix/smtpd[1251]: 4ABCDE1234: client=unknown[203.0.113.77], sasl_method=PLAIN, "
    "sasl_username=alice",
    "Nov 22 19:40:57 mx postfix/submission/smtpd[15324]: warning: SASL authentication failure: Password "
    "verification failed",
    # Not a guess: Cyrus could not read its sasldb (Postfix answered 454, the password was right).
    "Nov 22 19:40:57 mx postfix/submission/smtpd[15324]: warning: localhost[127.0.0.1]: SASL PLAIN authentication "
    "failed: generic failure, sasl_username=alice@mx.mailward.test",
)


def failed_line(address: str, n: int = 0) -> str:
    return (
        f"Nov 22 19:21:{n % 60:02d} mx postfix/smtpd[{2000 + n}]: warning: unknown[{address}]: "
        "SASL LOGIN authentication failed: UGFzc3dvcmQ6"
    )


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 200):
        received: list[dict] = []
        headers: list[dict] = []
        self.received, self.headers, self.status = received, headers, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers.append(dict(self.headers))
                received.append(json.loads(body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class SyslogReceiver:
    """A unix datagram socket standing in for /dev/log."""

    def __init__(self, path: Path):
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(5)

    def receive(self) -> str:
        return self._sock.recv(65536).decode()

    def close(self) -> None:
        self._sock.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(params=["sqlite", "postgresql"])
def incident_store(request, tmp_path):
    """Opens stores of one backend over one shared location (as several hosts would)."""
    clock = FakeClock()
    opened = []
    dsn = request.getfixturevalue("fresh_pg_dsn") if request.param == "postgresql" else ""

    def make():
        store = PostgresIncidentStore(dsn, clock) if dsn else SqliteIncidentStore(tmp_path / "incidents.sqlite3", clock)
        opened.append(store)
        return store

    make.clock, make.backend, make.dsn = clock, request.param, dsn
    yield make
    for store in opened:
        store.close()
