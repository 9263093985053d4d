"""Messages, verdicts and store fixtures shared by the quarantine tests.

Test modules import the fixtures they use (``from quarantine_support import store``);
``store`` runs every contract test once per backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailward.envelope import Direction, Envelope
from mailward.evidence import Category, Clue, Evidence, Finding, Severity, SpamAssessment
from mailward.verdict import Action, Verdict, new_incident_id

BACKENDS = ["sqlite", "postgresql"]

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class FakeClock:
    """A clock the test moves by hand (stores take the clock as a constructor argument)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(subject: str = "Hello", sender: str = "alice@example.org", body: bytes = b"Hi there.\r\n") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode() + body


def envelope(sender: str = "alice@example.org", recipients=("bob@example.net",),
             direction: Direction = Direction.INBOUND) -> Envelope:
    return Envelope(mail_from=sender, recipients=tuple(recipients), client_address="192.0.2.7",
                    client_name="mx.example.org", helo="mx.example.org", queue_id="4ABC123",
                    connection_id="c1", direction=direction)


def spam_case(score: float = 0.97) -> tuple[Verdict, Evidence]:
    evidence = Evidence(
        findings=(Finding(Category.SPAM, "gtube", Severity.HIGH, "gtube", "part 1", "GTUBE string"),),
        spam=SpamAssessment(score, (Clue("viagra", 2.5), Clue("meeting", -1.25)), "nb-1"))
    return Verdict(Action.QUARANTINE, ("spam",), new_incident_id(), score), evidence


def malware_case() -> tuple[Verdict, Evidence]:
    evidence = Evidence(findings=(Finding(Category.MALWARE, "EICAR_Test_File", Severity.CRITICAL, "yara",
                                          "invoice.zip > eicar.com", ""),))
    return Verdict(Action.QUARANTINE, ("malware",), new_incident_id()), evidence


@pytest.fixture(scope="session")
def pg_dsn():
    """A throwaway PostgreSQL cluster for the whole session (mandatory when CI=true)."""
    from pg_server import PostgresServer, binaries

    if binaries() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL binaries missing (apt package postgresql) and CI=true")
        pytest.skip("PostgreSQL binaries not installed")
    server = PostgresServer()
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def fresh_pg_dsn(pg_dsn):
    """A new empty schema in the session cluster, so tests never see each other's rows."""
    from pg_server import create_database

    return create_database(pg_dsn)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_factory(request, backend, tmp_path, clock):
    """Opens stores of the parametrised backend over one shared location (as several processes would)."""
    opened = []
    dsn = request.getfixturevalue("fresh_pg_dsn") if backend == "postgresql" else ""

    def make(**kwargs):
        if backend == "postgresql":
            from mailward.quarantine.postgres import PostgresStore

            s = PostgresStore(dsn, clock=kwargs.get("clock", clock))
        else:
            from mailward.quarantine.sqlite import SqliteStore

            s = SqliteStore(Path(tmp_path) / "quarantine", clock=kwargs.get("clock", clock))
        opened.append(s)
        return s

    make.backend = backend
    make.dsn = dsn
    make.directory = Path(tmp_path) / "quarantine"
    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory):
    return store_factory()


class SmtpSink:
    """A tiny SMTP receiver on loopback (aiosmtpd) standing in for the release relay."""

    def __init__(self, refuse: tuple[str, ...] = ()):
        import socket

        from aiosmtpd.controller import Controller

        self.received: list[tuple[str, tuple[str, ...], bytes]] = []
        self.refuse = set(refuse)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content))
        return "250 OK queued"

    def __enter__(self) -> "SmtpSink":
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()


@pytest.fixture
def smtp_sink():
    with SmtpSink() as sink:
        yield sink


def closed_port() -> int:
    """A loopback port nothing listens on (the relay is down)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
